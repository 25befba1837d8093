// Chinese first, English on request; the choice is kept per browser.

const KEY = 'gridhub.lang';

const zh = {
  'app.console': '网格化协调指挥中心',
  'app.field': '网格员',
  'lang.switch': 'EN',
  'signin.title': '登录',
  'signin.prompt': '请粘贴本终端的登录凭证（由指挥中心签发）。',
  'signin.credential': '登录凭证',
  'signin.submit': '登录',
  'signin.out': '退出',
  'signin.bad': '凭证无效：',
  'conn.connecting': '正在连接…',
  'conn.open': '在线',
  'conn.waiting': '连接中断，正在重连…',
  'conn.stopped': '已断开',
  'conn.replaced': '此账号已在另一处登录，本页已断开。',
  'conn.expired': '登录凭证已过期，请重新登录。',
  'conn.no_credential': '请先登录。',
  'conn.reconnect': '重新连接',
  'tier.city': '市',
  'tier.county': '县（市、区）',
  'tier.township': '乡镇（街道）',
  'tier.village': '村（社区）',
  'tier.worker': '网格员',
  'status.online': '在线',
  'status.busy': '忙碌',
  'status.away': '离开',
  'status.in_call': '通话中',
  'status.in_session': '会商中',
  'status.offline': '离线',
  'nav.title': '组织层级',
  'nav.back': '返回上级',
  'nav.terminals': '终端',
  'nav.online': '在线',
  'nav.children': '下级',
  'nav.rate': '在线率',
  'map.title': '态势地图',
  'err.out_of_scope': '超出您的管辖范围',
  'err.not_found': '未找到',
  'err.illegal_transition': '当前状态不允许此操作',
  'err.not_connected': '未连接到指挥中心',
  'err.timeout': '指挥中心无响应',
  'err.generic': '操作失败',
  'field.share_location': '共享我的位置',
  'field.location_on': '位置已共享',
  'field.location_denied': '未获得定位权限：请在浏览器设置中允许定位，或不共享位置。',
  'field.location_unavailable': '暂时无法定位',
  'field.orders': '工单',
  'field.notices': '通知',
  'field.no_orders': '暂无工单',
  'field.no_notices': '暂无通知',
  'field.acknowledge': '接单',
  'field.report': '上报结果',
  'field.report_send': '提交结果',
  'field.report_placeholder': '处理情况（必填）',
  'field.cancel': '取消',
  'field.return': '退回',
  'field.return_placeholder': '退回原因（必填）',
  'field.return_send': '确认退回',
  'field.due': '期限',
  'field.late': '已超期',
  'field.draft_kept': '草稿已保存，连接恢复后可提交。',
  'field.synced': '已同步',
  'prio.routine': '一般',
  'prio.urgent': '紧急',
  'prio.emergency': '特急',
  'state.intake': '受理',
  'state.dispatched': '待接单',
  'state.in_progress': '处理中',
  'state.supervised': '督办中',
  'state.result_reported': '已上报',
  'state.rated': '已评价',
  'state.published': '已公示',
  'state.archived': '已归档',
  'state.withdrawn': '已改派',
};

const en = {
  'app.console': 'Grid Command Center',
  'app.field': 'Grid worker',
  'lang.switch': '中文',
  'signin.title': 'Sign in',
  'signin.prompt': "Paste this terminal's credential (issued by the command center).",
  'signin.credential': 'Credential',
  'signin.submit': 'Sign in',
  'signin.out': 'Sign out',
  'signin.bad': 'Credential refused: ',
  'conn.connecting': 'Connecting…',
  'conn.open': 'On line',
  'conn.waiting': 'Connection lost, reconnecting…',
  'conn.stopped': 'Disconnected',
  'conn.replaced': 'This terminal signed in elsewhere; this page is disconnected.',
  'conn.expired': 'Your credential has expired; please sign in again.',
  'conn.no_credential': 'Please sign in.',
  'conn.reconnect': 'Reconnect',
  'tier.city': 'City',
  'tier.county': 'County',
  'tier.township': 'Township',
  'tier.village': 'Village',
  'tier.worker': 'Grid worker',
  'status.online': 'On line',
  'status.busy': 'Busy',
  'status.away': 'Away',
  'status.in_call': 'In call',
  'status.in_session': 'In session',
  'status.offline': 'Off line',
  'nav.title': 'Command tiers',
  'nav.back': 'Up',
  'nav.terminals': 'terminals',
  'nav.online': 'on line',
  'nav.children': 'below',
  'nav.rate': 'on line',
  'map.title': 'Situation map',
  'err.out_of_scope': 'Outside your scope',
  'err.not_found': 'Not found',
  'err.illegal_transition': 'Not possible in the current state',
  'err.not_connected': 'Not connected to the hub',
  'err.timeout': 'The hub did not answer',
  'err.generic': 'Failed',
  'field.share_location': 'Share my location',
  'field.location_on': 'Location shared',
  'field.location_denied': 'Location permission denied: allow it in the browser settings, or do not share.',
  'field.location_unavailable': 'Location unavailable for now',
  'field.orders': 'Orders',
  'field.notices': 'Notices',
  'field.no_orders': 'No orders',
  'field.no_notices': 'No notices',
  'field.acknowledge': 'Accept',
  'field.report': 'Report result',
  'field.report_send': 'Send result',
  'field.report_placeholder': 'What was done (required)',
  'field.cancel': 'Cancel',
  'field.return': 'Return',
  'field.return_placeholder': 'Why it is returned (required)',
  'field.return_send': 'Return it',
  'field.due': 'Due',
  'field.late': 'Late',
  'field.draft_kept': 'Draft kept; send it when the connection is back.',
  'field.synced': 'Synced',
  'prio.routine': 'Routine',
  'prio.urgent': 'Urgent',
  'prio.emergency': 'Emergency',
  'state.intake': 'Intake',
  'state.dispatched': 'To accept',
  'state.in_progress': 'In progress',
  'state.supervised': 'Supervised',
  'state.result_reported': 'Reported',
  'state.rated': 'Rated',
  'state.published': 'Published',
  'state.archived': 'Archived',
  'state.withdrawn': 'Reassigned',
};

const tables = { zh, en };

export let lang = localStorage.getItem(KEY) === 'en' ? 'en' : 'zh';

export function t(key) {
  return tables[lang][key] ?? zh[key] ?? key;
}

/// A node's display name in the current language.
export function nodeName(n) {
  return lang === 'en' && n.name_en ? n.name_en : n.name;
}

/// An error from the hub in the user's language, with the hub's own message for detail.
export function errorText(e) {
  const key = `err.${e.code}`;
  const head = tables[lang][key] ?? t('err.generic');
  return e.message ? `${head}：${e.message}`.replace('：', lang === 'en' ? ': ' : '：') : head;
}

export function setLang(l) {
  lang = l;
  localStorage.setItem(KEY, l);
  document.documentElement.lang = l === 'en' ? 'en' : 'zh-CN';
  applyStatic();
  window.dispatchEvent(new CustomEvent('langchange'));
}

/// Fills every element marked data-t with its text.
export function applyStatic(root = document) {
  for (const el of root.querySelectorAll('[data-t]')) el.textContent = t(el.dataset.t);
  for (const el of root.querySelectorAll('[data-t-placeholder]')) {
    el.placeholder = t(el.dataset.tPlaceholder);
  }
}
