// The terminal's credential, kept in this browser only.
//
// A credential arrives pasted into the sign-in form or in the page's fragment
// (`/field#credential=…`, as a provisioning link or QR code would carry it): the fragment never
// reaches a server or a log, and the page removes it from the address bar at once.

export function store(kind) {
  const key = `gridhub.credential.${kind}`;
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('credential')?.trim();
  if (fromHash) {
    history.replaceState(null, '', location.pathname + location.search);
    const held = localStorage.getItem(key);
    // A link must not quietly turn this device into another terminal: ask first.
    if (!held || held === fromHash || confirmReplace(held, fromHash)) localStorage.setItem(key, fromHash);
  }
  return {
    get: () => localStorage.getItem(key),
    set: (c) => localStorage.setItem(key, c.trim()),
    clear: () => localStorage.removeItem(key),
  };
}

/// Who a credential makes this device: its node, and its seat when not the main one.
function who(jwt) {
  const c = claims(jwt);
  if (!c) return '?';
  return c.seat && c.seat !== 'main' ? `${c.sub} · ${c.seat}` : c.sub;
}

function confirmReplace(held, next) {
  const a = who(held);
  const b = who(next);
  if (a === b) return true;
  const zh = !localStorage.getItem('gridhub.lang') || localStorage.getItem('gridhub.lang') === 'zh';
  return window.confirm(
    zh ? `此设备已登录为 ${a}。改为以 ${b} 登录吗？` : `This device is signed in as ${a}. Sign in as ${b} instead?`,
  );
}

/// What the credential says about itself (unverified: only the hub can verify it), or null when
/// it is not a JWT at all.
export function claims(jwt) {
  const part = (jwt || '').split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
}
