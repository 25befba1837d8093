// What both pages share around the connection: sign-in, the connection indicator and notices,
// the language switch.

import { t, applyStatic, setLang, lang } from './i18n.js';
import { claims } from './credential.js';

/// The sign-in dialog both pages share.
function signinDialog() {
  const d = document.createElement('dialog');
  d.id = 'signin';
  d.className = 'signin';
  d.innerHTML = `<form method="dialog" id="signin-form">
    <h2 data-t="signin.title"></h2>
    <p data-t="signin.prompt"></p>
    <label><span data-t="signin.credential"></span>
      <textarea id="signin-credential" rows="4" required spellcheck="false" autocomplete="off"></textarea></label>
    <p class="error" id="signin-error" hidden></p>
    <button type="submit" data-t="signin.submit"></button>
  </form>`;
  document.body.append(d);
}

export function setupPage({ hub, cred }) {
  signinDialog();
  applyStatic();
  document.documentElement.lang = lang === 'en' ? 'en' : 'zh-CN';
  document.getElementById('lang').onclick = () => setLang(lang === 'en' ? 'zh' : 'en');
  document.getElementById('signout').onclick = () => {
    hub.stop('signed_out');
    cred.clear();
    location.reload();
  };

  const conn = document.getElementById('conn');
  const connText = document.getElementById('conn-text');
  const notice = document.getElementById('notice');
  const noticeText = document.getElementById('notice-text');
  const noticeAction = document.getElementById('notice-action');
  noticeAction.onclick = () => {
    notice.hidden = true;
    hub.start();
  };
  const dialog = document.getElementById('signin');
  const field = document.getElementById('signin-credential');
  const err = document.getElementById('signin-error');
  const signin = (message) => {
    err.hidden = !message;
    err.textContent = message || '';
    if (!dialog.open) dialog.showModal();
  };
  document.getElementById('signin-form').addEventListener('submit', (ev) => {
    const c = field.value.trim();
    if (!claims(c)) {
      ev.preventDefault();
      err.hidden = false;
      err.textContent = `${t('signin.bad')}malformed_credential`;
      return;
    }
    cred.set(c);
    field.value = '';
    hub.start();
  });

  const show = () => {
    const { state, reason } = hub;
    conn.dataset.state = state;
    connText.textContent = t(`conn.${state === 'idle' ? 'connecting' : state}`);
    notice.hidden = true;
    if (state === 'waiting') {
      notice.hidden = false;
      noticeText.textContent = t('conn.waiting');
      noticeAction.hidden = true;
    } else if (state === 'stopped' && reason === 'replaced') {
      notice.hidden = false;
      noticeText.textContent = t('conn.replaced');
      noticeAction.hidden = false;
    } else if (state === 'stopped' && reason === 'protocol') {
      // Not the credential's fault: say what happened, offer to try again.
      notice.hidden = false;
      noticeText.textContent = t('conn.protocol');
      noticeAction.hidden = false;
    } else if (state === 'stopped' && reason !== 'signed_out') {
      const expired = reason === 'expired' || reason === 'expired_credential';
      signin(expired ? t('conn.expired') : reason === 'no_credential' ? '' : `${t('signin.bad')}${reason}`);
    }
  };
  hub.addEventListener('state', show);
  window.addEventListener('langchange', show);

  const fail = (message) => {
    notice.hidden = false;
    noticeText.textContent = message;
    noticeAction.hidden = true;
  };
  return {
    fail,
    begin() {
      if (cred.get()) hub.start();
      else signin('');
    },
  };
}
