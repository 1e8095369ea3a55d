// payd checkout page: plain JavaScript, no build step, no third-party code.
//
// It talks to the API of the server that served it (API.md): packages and payment
// methods to choose from, orders, the QR code as SVG, entitlements, and the live
// channel (a WebSocket opened with a single-use ticket). While the socket is down it
// polls the order instead, so a page never waits forever. Everything shown comes
// from the server; text is always inserted as text, never as HTML.
'use strict';

(function () {
  const TOKEN_KEY = 'payd.token';
  const POLL_MS = 3000;
  const METHOD_NAMES = {
    wechat_native: 'WeChat Pay',
    alipay_qr: 'Alipay (QR)',
    alipay_page: 'Alipay (web)',
    stripe_checkout: 'Card (Stripe)',
    mock: 'Mock',
  };
  const STATUS_NAMES = {
    pending: 'Awaiting payment',
    paid: 'Paid',
    partially_refunded: 'Partly refunded',
    refunded: 'Refunded',
    cancelled: 'Cancelled',
    expired: 'Expired',
    failed: 'Failed',
  };
  const SYMBOLS = { CNY: '¥', USD: '$', EUR: '€', GBP: '£', JPY: '¥', HKD: 'HK$' };

  // Markers for the browser tests: which page load this is, and what the live
  // channel delivered.
  window.__payd = { loadId: Math.random().toString(36).slice(2), wsMessages: 0, wsStatus: null };

  const $ = (id) => document.getElementById(id);
  const st = {
    token: null,
    user: null,
    exp: 0,
    packages: [],
    methods: [],
    mockMode: false,
    pkg: null,
    method: null,
    order: null,
    ordersPage: 1,
    ws: null,
    wsOpen: false,
    wsRetry: 0,
    wsTimer: null,
    pollTimer: null,
    tick: null,
  };

  // ---- helpers -------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  // Integer minor units → "¥9.90"; no floating point on the amount itself.
  function money(amount, currency) {
    let digits = 2;
    try {
      digits = new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits;
    } catch (_) { /* unknown code: keep 2 */ }
    const neg = amount < 0;
    let s = String(Math.abs(amount));
    let whole = s;
    let frac = '';
    if (digits > 0) {
      s = s.padStart(digits + 1, '0');
      whole = s.slice(0, -digits);
      frac = '.' + s.slice(-digits);
    }
    whole = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
    const sym = SYMBOLS[currency];
    const text = sym ? sym + whole + frac : whole + frac + ' ' + currency;
    return (neg ? '−' : '') + text;
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : '';
  }

  function countdown(ms) {
    if (ms <= 0) return '0:00';
    const total = Math.ceil(ms / 1000);
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const sec = String(total % 60).padStart(2, '0');
    return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
  }

  function grants(p) {
    const out = [];
    if (p.kind === 'membership') {
      const tier = p.membership_type ? p.membership_type[0].toUpperCase() + p.membership_type.slice(1) : 'Member';
      out.push(`${tier} membership` + (p.validity_days ? ` for ${p.validity_days} days` : ''));
      if (p.queries_count) out.push(`${p.queries_count} queries`);
    } else {
      if (p.points) out.push(`${p.points} ${p.points === 1 ? 'point' : 'points'}`);
      if (p.bonus_points) out.push(`${p.bonus_points} bonus ${p.bonus_points === 1 ? 'point' : 'points'}`);
    }
    return out;
  }

  function showError(text) {
    $('error-text').textContent = text;
    $('error').hidden = false;
  }
  function clearError() {
    $('error').hidden = true;
  }

  class Problem extends Error {
    constructor(status, code, detail) {
      super(detail);
      this.status = status;
      this.code = code;
    }
  }

  // Every call goes through here: JSON in and out, problem+json's `detail` as the
  // message, and a 401 signs the buyer out.
  async function api(method, path, body, headers) {
    const h = Object.assign({ Accept: 'application/json' }, headers || {});
    if (st.token) h.Authorization = 'Bearer ' + st.token;
    if (body !== undefined) h['Content-Type'] = 'application/json';
    let resp;
    try {
      resp = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (_) {
      throw new Problem(0, 'network', 'The server cannot be reached. Check your connection and try again.');
    }
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!resp.ok) {
      const detail = (data && data.detail) || `The server answered ${resp.status}.`;
      const problem = new Problem(resp.status, data && data.code, detail);
      if (resp.status === 401 && st.token) {
        signOut('Your sign-in is no longer valid: ' + detail);
      }
      throw problem;
    }
    return data;
  }

  // Runs an action; its failure becomes a readable message on the page.
  function guarded(fn) {
    const run = reported(fn);
    return async (...args) => {
      clearError();
      await run(...args);
    };
  }

  function reported(fn) {
    return async (...args) => {
      try {
        await fn(...args);
      } catch (e) {
        if (e instanceof Problem) {
          if (e.status !== 401) showError(e.message);
        } else {
          showError('Something went wrong: ' + (e && e.message ? e.message : e));
        }
      }
    };
  }

  // ---- sign-in -------------------------------------------------------------------

  function decodeToken(token) {
    const parts = token.split('.');
    if (parts.length !== 3) return null;
    try {
      const json = atob(parts[1].replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(parts[1].length / 4) * 4, '='));
      const claims = JSON.parse(json);
      return typeof claims.sub === 'string' ? claims : null;
    } catch (_) {
      return null;
    }
  }

  function signIn(token, quiet) {
    const claims = decodeToken(token);
    if (quiet && (!claims || (claims.exp && claims.exp * 1000 <= Date.now()))) return false;
    if (!claims) {
      showError('That does not look like an access token (a JWT with a "sub" claim).');
      return false;
    }
    if (claims.exp && claims.exp * 1000 <= Date.now()) {
      showError('That token has expired. Ask your application for a new one.');
      return false;
    }
    st.token = token;
    st.user = claims.sub;
    st.exp = claims.exp || 0;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('who').textContent = `Signed in as ${st.user}` + (st.exp ? ` until ${new Date(st.exp * 1000).toLocaleTimeString()}` : '');
    $('nav').hidden = false;
    connectLive();
    return true;
  }

  function signOut(message) {
    st.token = null;
    st.user = null;
    st.order = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $('who').textContent = '';
    $('nav').hidden = true;
    closeLive();
    stopPolling();
    if (message) {
      showError(message);
      st.keepError = true;
    }
    if (location.hash !== '#/signin') location.hash = '#/signin';
    else route();
  }

  // ---- live channel --------------------------------------------------------------

  function setLive(mode) {
    const node = $('live');
    node.dataset.live = mode;
    node.textContent = mode === 'ws' ? 'live' : mode === 'poll' ? 'checking every few seconds' : 'offline';
  }

  async function connectLive() {
    if (!st.token || st.ws) return;
    clearTimeout(st.wsTimer);
    let ticket;
    try {
      ticket = await api('POST', '/api/v1/ws/ticket');
    } catch (_) {
      return retryLive();
    }
    if (!st.token || st.ws) return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/api/v1/ws?ticket=${encodeURIComponent(ticket.ticket)}`);
    st.ws = ws;
    ws.onopen = () => {
      st.wsOpen = true;
      st.wsRetry = 0;
      setLive('ws');
      stopPolling();
      subscribe();
    };
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch (_) { return; }
      window.__payd.wsMessages += 1;
      onLive(msg);
    };
    ws.onclose = (e) => {
      if (st.ws === ws) st.ws = null;
      st.wsOpen = false;
      setLive(st.order && st.order.status === 'pending' ? 'poll' : 'off');
      startPolling();
      if (e.code === 4001) {
        signOut('Your sign-in has expired. Sign in again to keep following your order.');
        return;
      }
      retryLive();
    };
  }

  function retryLive() {
    if (!st.token) return;
    const delay = Math.min(30000, 1000 * 2 ** st.wsRetry);
    st.wsRetry += 1;
    clearTimeout(st.wsTimer);
    st.wsTimer = setTimeout(connectLive, delay);
  }

  function closeLive() {
    clearTimeout(st.wsTimer);
    if (st.ws) {
      const ws = st.ws;
      st.ws = null;
      ws.onclose = null;
      ws.close();
    }
    st.wsOpen = false;
    setLive('off');
  }

  // After every (re)connect: ask for the current state, so a push missed while the
  // socket was down cannot leave the page behind.
  function subscribe() {
    if (st.wsOpen && st.order && st.ws) {
      st.ws.send(JSON.stringify({ type: 'subscribe', order_no: st.order.order_no }));
    }
  }

  function onLive(msg) {
    if (msg.type === 'order_status' || msg.type === 'payment_success') {
      if (location.hash === '#/orders') loadOrders(true);
    }
    if (!st.order || msg.order_no !== st.order.order_no) return;
    if (msg.type === 'order_status') {
      window.__payd.wsStatus = msg.status;
      applyStatus(msg.status, 'ws');
    } else if (msg.type === 'payment_success') {
      window.__payd.wsStatus = 'paid';
      applyStatus('paid', 'ws');
    }
  }

  function startPolling() {
    if (st.pollTimer || st.wsOpen || !st.order || st.order.status !== 'pending') return;
    setLive('poll');
    st.pollTimer = setInterval(async () => {
      if (!st.order || st.wsOpen) return stopPolling();
      try {
        const o = await api('GET', `/api/v1/orders/${encodeURIComponent(st.order.order_no)}`);
        if (st.order && o.order_no === st.order.order_no && o.status !== st.order.status) {
          st.order = o;
          applyStatus(o.status, 'poll');
        }
      } catch (_) { /* keep trying; errors show on user actions */ }
    }, POLL_MS);
  }

  function stopPolling() {
    clearInterval(st.pollTimer);
    st.pollTimer = null;
  }

  // ---- shop ----------------------------------------------------------------------

  async function loadShop() {
    const [packages, methods] = await Promise.all([
      api('GET', '/api/v1/packages'),
      api('GET', '/api/v1/payment-methods'),
    ]);
    st.packages = packages.items;
    st.methods = methods.items;
    st.mockMode = !!methods.mock_mode;
    renderPackages();
    renderMethods();
  }

  function renderPackages() {
    const box = $('packages');
    box.replaceChildren();
    for (const p of st.packages) {
      const card = el('button', {
        type: 'button', class: 'card', role: 'radio', 'data-package': p.id,
        'aria-checked': String(st.pkg === p.id),
        onclick: () => { st.pkg = p.id; renderPackages(); renderMethods(); },
      },
      el('span', { class: 'name', text: p.name }),
      el('span', { class: 'desc', text: p.description || '' }),
      el('span', { class: 'what', text: grants(p).join(' · ') }),
      el('span', { class: 'amount', text: money(p.amount, p.currency) }));
      box.append(card);
    }
    if (!st.packages.length) box.append(el('p', { class: 'muted', text: 'Nothing is on sale right now.' }));
  }

  function renderMethods() {
    const box = $('methods');
    box.replaceChildren();
    const pkg = st.packages.find((p) => p.id === st.pkg);
    const usable = st.methods.filter((m) => !pkg || m.currencies.includes(pkg.currency));
    if (!usable.some((m) => m.method === st.method)) st.method = usable.length ? usable[0].method : null;
    for (const m of usable) {
      box.append(el('button', {
        type: 'button', class: 'method', role: 'radio', 'data-method': m.method,
        'aria-checked': String(st.method === m.method),
        onclick: () => { st.method = m.method; renderMethods(); },
      }, METHOD_NAMES[m.method] || m.method,
      el('span', { class: 'flow', text: m.flow === 'qr' ? 'scan a QR code' : 'pay on its page' })));
    }
    $('methods-empty').hidden = usable.length > 0 || !pkg;
    const buy = $('buy');
    buy.disabled = !pkg || !st.method;
    buy.textContent = pkg ? `Buy ${pkg.name} for ${money(pkg.amount, pkg.currency)}` : 'Choose a package';
  }

  const buy = guarded(async () => {
    if (!st.pkg || !st.method) return;
    const key = (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2));
    $('buy').disabled = true;
    try {
      const order = await api('POST', '/api/v1/orders', { package_id: st.pkg, payment_method: st.method },
        { 'Idempotency-Key': key });
      st.order = order;
      location.hash = '#/order/' + order.order_no;
    } finally {
      $('buy').disabled = false;
    }
  });

  // ---- one order -----------------------------------------------------------------

  async function loadOrder(no) {
    stopPolling();
    if (!st.order || st.order.order_no !== no) {
      st.order = null;
      st.order = await api('GET', `/api/v1/orders/${encodeURIComponent(no)}`);
    }
    renderOrder('load');
    subscribe();
    startPolling();
  }

  function renderOrder(source) {
    const o = st.order;
    if (!o) return;
    $('order-package').textContent = o.package.name;
    $('order-no').textContent = o.order_no;
    $('order-amount').textContent = money(o.amount, o.currency);
    $('pending-note').hidden = true;
    setStatusBadge(o.status, source);
    const pending = o.status === 'pending';
    $('pending').hidden = !pending;
    $('result').hidden = pending;
    if (pending) {
      const qr = !!o.qr_code_url;
      $('pay-qr').hidden = !qr;
      $('pay-redirect').hidden = qr;
      $('mock-actions').hidden = !st.mockMode;
      if (qr) {
        $('qr-method').textContent = o.payment_method === 'wechat_native' ? 'WeChat' :
          o.payment_method === 'alipay_qr' ? 'Alipay' : 'your phone';
        $('qr-link').href = o.qr_code_url;
        loadQr();
      } else {
        $('pay-link').href = o.payment_url || '#';
      }
      startTicking();
    } else {
      stopTicking();
      renderResult(o);
    }
  }

  function setStatusBadge(status, source) {
    const badge = $('order-status');
    if (badge.dataset.status !== status) {
      badge.dataset.source = source;
    }
    badge.dataset.status = status;
    badge.textContent = STATUS_NAMES[status] || status;
  }

  // A status heard from the live channel or from polling.
  function applyStatus(status, source) {
    if (!st.order) return;
    const changed = st.order.status !== status;
    st.order.status = status;
    if (!changed) return;
    setStatusBadge(status, source);
    if (status === 'pending') return;
    stopPolling();
    stopTicking();
    $('pending').hidden = true;
    renderResult(st.order);
    // The rest of the record (paid_at, failure reason) without touching the status
    // source the page showed.
    api('GET', `/api/v1/orders/${encodeURIComponent(st.order.order_no)}`).then((o) => {
      if (st.order && o.order_no === st.order.order_no) {
        st.order = o;
        renderResult(o);
      }
    }).catch(() => {});
  }

  function renderResult(o) {
    const box = $('result');
    box.hidden = false;
    const list = $('result-granted');
    list.replaceChildren();
    $('result-entitlements').hidden = true;
    if (o.status === 'paid' || o.status === 'partially_refunded' || o.status === 'refunded') {
      box.dataset.outcome = o.status === 'paid' ? 'paid' : 'bad';
      $('result-title').textContent = o.status === 'paid' ? 'Payment received — thank you!' : STATUS_NAMES[o.status];
      $('result-text').textContent = `${o.package.name}, ${money(o.amount, o.currency)}` +
        (o.paid_at ? `, paid ${when(o.paid_at)}.` : '.') + (o.status === 'paid' ? ' You now have:' : '');
      if (o.status === 'paid') {
        for (const g of grants(o.package)) list.append(el('li', { text: g }));
        $('result-entitlements').hidden = false;
      }
    } else {
      box.dataset.outcome = 'bad';
      const titles = { cancelled: 'Order cancelled', expired: 'Order expired', failed: 'Payment failed' };
      const texts = {
        cancelled: 'Nothing was charged. You can start a new order at any time.',
        expired: 'The time to pay ran out before a payment arrived. Nothing was charged.',
        failed: 'The payment did not go through' + (o.failure_reason ? ` (${o.failure_reason.replace(/_/g, ' ')})` : '') + '.',
      };
      $('result-title').textContent = titles[o.status] || STATUS_NAMES[o.status] || o.status;
      $('result-text').textContent = texts[o.status] || '';
    }
  }

  let qrShownFor = null;
  async function loadQr() {
    const o = st.order;
    const version = o.order_no + '|' + o.qr_code_expire_at;
    if (qrShownFor === version) return;
    qrShownFor = version;
    $('qr').classList.remove('stale');
    $('qr-expired').hidden = true;
    const resp = await fetch(`/api/v1/orders/${encodeURIComponent(o.order_no)}/qr.svg?v=${encodeURIComponent(o.qr_code_expire_at || '')}`,
      { headers: { Authorization: 'Bearer ' + st.token } });
    if (!resp.ok) {
      qrShownFor = null;
      let detail = 'The QR code could not be loaded.';
      try { detail = (await resp.json()).detail || detail; } catch (_) { /* keep */ }
      if (st.order && st.order.status === 'pending') showError(detail);
      return;
    }
    const doc = new DOMParser().parseFromString(await resp.text(), 'image/svg+xml');
    const svg = doc.documentElement;
    if (svg.nodeName.toLowerCase() !== 'svg') return;
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', 'QR code');
    svg.removeAttribute('width');
    svg.removeAttribute('height');
    $('qr').replaceChildren(document.importNode(svg, true));
  }

  function startTicking() {
    stopTicking();
    const tick = () => {
      const o = st.order;
      if (!o || o.status !== 'pending') return stopTicking();
      const now = Date.now();
      $('order-countdown').textContent = countdown(Date.parse(o.expire_at) - now);
      if (o.qr_code_expire_at) {
        const left = Date.parse(o.qr_code_expire_at) - now;
        $('qr-countdown').textContent = countdown(left);
        const expired = left <= 0;
        $('qr').classList.toggle('stale', expired);
        $('qr-expired').hidden = !expired;
      }
    };
    tick();
    st.tick = setInterval(tick, 500);
  }

  function stopTicking() {
    clearInterval(st.tick);
    st.tick = null;
  }

  const refreshQr = guarded(async () => {
    const o = await api('POST', `/api/v1/orders/${encodeURIComponent(st.order.order_no)}/qr`);
    if (st.order && o.order_no === st.order.order_no) {
      st.order = o;
      renderOrder('action');
    }
  });

  const cancel = guarded(async () => {
    const o = await api('POST', `/api/v1/orders/${encodeURIComponent(st.order.order_no)}/cancel`);
    if (st.order && o.order_no === st.order.order_no) {
      applyStatus(o.status, 'action');
    }
  });

  // Mock mode only: play the provider. The page does not take the answer as the
  // news — like a real payment made on a phone, it hears of it from the server.
  function simulate(kind) {
    return guarded(async () => {
      const no = st.order.order_no;
      await api('POST', `/api/v1/mock/orders/${encodeURIComponent(no)}/${kind}`);
      if (st.order && st.order.order_no === no && st.order.status === 'pending') {
        $('pending-note').textContent = kind === 'pay' ? 'Payment sent; waiting for the confirmation…' : 'Failure sent; waiting for the update…';
        $('pending-note').hidden = false;
      }
    });
  }

  // ---- lists ---------------------------------------------------------------------

  async function loadOrders(fresh) {
    if (fresh) st.ordersPage = 1;
    const page = await api('GET', `/api/v1/orders?page=${st.ordersPage}&page_size=20`);
    const list = $('orders-list');
    if (fresh) list.replaceChildren();
    for (const o of page.items) {
      list.append(el('li', { 'data-order': o.order_no },
        el('a', { href: '#/order/' + o.order_no },
          el('span', {},
            el('span', { class: 'what', text: o.package.name }),
            el('span', { class: 'when', text: when(o.created_at) + ' · ' + (METHOD_NAMES[o.payment_method] || o.payment_method) })),
          el('span', { class: 'right' },
            el('span', { class: 'what', text: money(o.amount, o.currency) }),
            el('span', { class: 'badge', 'data-status': o.status, text: STATUS_NAMES[o.status] || o.status })))));
    }
    $('orders-empty').hidden = page.total > 0;
    $('orders-more').hidden = page.page * page.page_size >= page.total;
  }

  async function loadEntitlements() {
    const e = await api('GET', '/api/v1/me/entitlements');
    const box = $('entitlements');
    box.replaceChildren();
    if (e.membership) {
      box.append(el('div', { class: 'tile', id: 'ent-membership' },
        el('span', { class: 'muted small', text: 'Membership' }),
        el('span', { class: 'big', text: e.membership.type[0].toUpperCase() + e.membership.type.slice(1) }),
        el('span', { text: `until ${when(e.membership.expires_at)}` }),
        el('div', { text: `${e.membership.queries_remaining} queries left` })));
    } else {
      box.append(el('div', { class: 'tile', id: 'ent-membership' },
        el('span', { class: 'muted small', text: 'Membership' }),
        el('span', { class: 'big', text: 'None' })));
    }
    box.append(el('div', { class: 'tile', id: 'ent-points' },
      el('span', { class: 'muted small', text: 'Points' }),
      el('span', { class: 'big', text: String(e.points) }),
      el('span', { class: 'small muted', text: `${e.paid_points ?? e.points} bought · ${e.bonus_points ?? 0} bonus` })));
  }

  // ---- routing -------------------------------------------------------------------

  const VIEWS = ['signin', 'shop', 'order', 'orders', 'entitlements'];

  function show(view) {
    if (document.body.dataset.view !== view) window.scrollTo(0, 0);
    for (const v of VIEWS) $('view-' + v).hidden = v !== view;
    for (const [id, v] of [['nav-shop', 'shop'], ['nav-orders', 'orders'], ['nav-entitlements', 'entitlements']]) {
      $(id).classList.toggle('current', v === view);
    }
    document.body.dataset.view = view;
  }

  // Errors stay on screen across the navigation that follows them (a sign-out
  // names its reason); any other navigation starts clean.
  function navigated() {
    if (st.keepError) st.keepError = false;
    else clearError();
    route();
  }

  const route = reported(async () => {
    const hash = location.hash || '#/';
    if (!st.token) {
      show('signin');
      const methods = await api('GET', '/api/v1/payment-methods').catch(() => null);
      $('demo').hidden = !(methods && methods.mock_mode);
      return;
    }
    if (!hash.startsWith('#/order/')) {
      stopPolling();
      stopTicking();
    }
    if (hash === '#/signin' || hash === '#/' || hash === '') {
      if (hash === '#/signin') { location.hash = '#/'; return; }
      show('shop');
      await loadShop();
    } else if (hash.startsWith('#/order/')) {
      show('order');
      if (!st.methods.length) await loadShop();
      await loadOrder(decodeURIComponent(hash.slice('#/order/'.length)));
    } else if (hash === '#/orders') {
      show('orders');
      await loadOrders(true);
    } else if (hash === '#/entitlements') {
      show('entitlements');
      await loadEntitlements();
    } else {
      location.hash = '#/';
    }
  });

  function goHome() {
    if (location.hash === '#/') route();
    else location.hash = '#/';
  }

  // ---- start ---------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('error-close').addEventListener('click', clearError);
    $('signin-form').addEventListener('submit', (e) => {
      e.preventDefault();
      clearError();
      if (signIn($('token-input').value.trim())) {
        $('token-input').value = '';
        goHome();
      }
    });
    $('demo-signin').addEventListener('click', guarded(async () => {
      const demo = await api('POST', '/api/v1/mock/demo-token');
      if (signIn(demo.token)) goHome();
    }));
    $('sign-out').addEventListener('click', () => signOut());
    $('buy').addEventListener('click', buy);
    $('refresh-qr').addEventListener('click', refreshQr);
    $('cancel').addEventListener('click', cancel);
    $('simulate-pay').addEventListener('click', simulate('pay'));
    $('simulate-fail').addEventListener('click', simulate('fail'));
    $('orders-more').addEventListener('click', guarded(async () => {
      st.ordersPage += 1;
      await loadOrders(false);
    }));
    window.addEventListener('hashchange', navigated);
    setLive('off');
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved && !signIn(saved, true)) sessionStorage.removeItem(TOKEN_KEY);
    route();
  });
})();
