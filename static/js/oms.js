/* Open OMS browser kernel: API calls with the session's CSRF token, error display, number
 * formatting, the versioned order store and the live websocket feed. No framework: the pages are
 * server-rendered and this file adds behaviour to them. */
(function () {
  "use strict";

  const API = "/api/v1/";

  function cookie(name) {
    const m = document.cookie.match("(?:^|; )" + name + "=([^;]*)");
    return m ? decodeURIComponent(m[1]) : "";
  }

  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  /** An API error with the envelope {"code","detail","errors"} and the HTTP status. */
  class ApiError extends Error {
    constructor(status, body) {
      const detail = (body && (body.detail || body.code)) || "HTTP " + status;
      super(detail);
      this.status = status;
      this.code = (body && body.code) || "http_" + status;
      this.detail = detail;
      this.errors = (body && body.errors) || {};
      this.body = body;
    }
  }

  /** Call the API; writes carry the CSRF token and a fresh Idempotency-Key. */
  async function api(path, { method = "GET", body, form, params } = {}) {
    let url = path.startsWith("/") ? path : API + path;
    if (params) {
      const q = new URLSearchParams();
      Object.entries(params).forEach(([k, v]) => {
        if (v !== undefined && v !== null && v !== "") q.set(k, v);
      });
      const qs = q.toString();
      if (qs) url += (url.includes("?") ? "&" : "?") + qs;
    }
    const headers = { Accept: "application/json" };
    const init = { method, headers, credentials: "same-origin" };
    if (method !== "GET") {
      headers["X-CSRFToken"] = cookie("csrftoken");
      headers["Idempotency-Key"] = newKey();
      if (form) {
        init.body = form;
      } else {
        headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body || {});
      }
    }
    const resp = await fetch(url, init);
    if (resp.status === 401 || (resp.status === 403 && !resp.headers.get("content-type"))) {
      window.location.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname);
    }
    let data = null;
    const text = await resp.text();
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = { detail: text.slice(0, 200) }; }
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  /** Every page of a paginated list ({"count","next","results"}), up to `limit` rows. */
  async function apiAll(path, params, limit = 5000) {
    let data = await api(path, { params: Object.assign({ page_size: 500 }, params || {}) });
    if (Array.isArray(data)) return data;
    const rows = data.results.slice();
    while (data.next && rows.length < limit) {
      const next = new URL(data.next, location.origin);
      data = await api(next.pathname + next.search);
      rows.push(...data.results);
    }
    return rows;
  }

  /** Field errors of an envelope as "field: message" lines. */
  function errorLines(err) {
    const lines = [];
    const walk = (prefix, value) => {
      if (value === null || value === undefined) return;
      if (Array.isArray(value)) {
        value.forEach((v) => (typeof v === "object" ? walk(prefix, v) : lines.push([prefix, String(v)])));
      } else if (typeof value === "object") {
        if ("row" in value && "detail" in value) {
          lines.push(["row " + value.row + (value.field ? " · " + value.field : ""), value.detail]);
          return;
        }
        Object.entries(value).forEach(([k, v]) => walk(prefix ? prefix + "." + k : k, v));
      } else {
        lines.push([prefix, String(value)]);
      }
    };
    walk("", err.errors);
    return lines;
  }

  /** Show a message in the page's flash bar: kind is "ok", "warn" or "error". */
  function flash(text, kind = "ok", lines = []) {
    const bar = document.getElementById("flash");
    if (!bar) return;
    bar.hidden = false;
    bar.dataset.kind = kind;
    bar.replaceChildren();
    const head = document.createElement("span");
    head.className = "flash-text";
    head.textContent = text;
    bar.appendChild(head);
    if (lines.length) {
      const ul = document.createElement("ul");
      lines.forEach(([field, msg]) => {
        const li = document.createElement("li");
        li.textContent = field ? field + ": " + msg : msg;
        ul.appendChild(li);
      });
      bar.appendChild(ul);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "flash-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.onclick = () => { bar.hidden = true; };
    bar.appendChild(close);
  }

  function flashError(err, prefix) {
    const lines = err instanceof ApiError ? errorLines(err) : [];
    const text = (prefix ? prefix + ": " : "") + (err.detail || err.message || String(err));
    flash(text, "error", lines);
  }

  // --- formatting (display only; the API's decimal strings are the truth) -----------------------
  const qtyFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 8 });
  const pxFmt = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 6 });

  function fmtQty(v) {
    if (v === null || v === undefined || v === "") return "";
    const n = Number(v);
    return Number.isFinite(n) ? qtyFmt.format(n) : String(v);
  }

  function fmtPx(v) {
    if (v === null || v === undefined || v === "") return "";
    const n = Number(v);
    if (!Number.isFinite(n)) return String(v);
    return n === 0 ? "" : pxFmt.format(n);
  }

  function fmtTime(v) {
    if (!v) return "";
    const d = new Date(v);
    if (isNaN(d)) return String(v);
    return d.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  const STATUS_LABELS = {};
  function label(status) {
    return STATUS_LABELS[status] || String(status || "").replace(/_/g, " ");
  }

  // --- the versioned store ---------------------------------------------------------------------
  /** Orders by id, never replacing a row by an older version of it. */
  class OrderStore {
    constructor() { this.rows = new Map(); }
    version(id) { const r = this.rows.get(id); return r ? r.version : 0; }
    /** Keep the row if it is newer than what is held; returns true when it was applied. */
    upsert(row) {
      if (!row || row.id === undefined || row.id === null) return false;
      const held = this.rows.get(row.id);
      if (held && Number(held.version) >= Number(row.version)) return false;
      this.rows.set(row.id, row);
      return true;
    }
    get(id) { return this.rows.get(id); }
    all() { return Array.from(this.rows.values()); }
  }

  // --- the live feed ---------------------------------------------------------------------------
  /**
   * The /ws/blotter/ connection. `onSnapshot()` is called after every (re)connect and on a seq gap
   * (events may have been lost, so the page refetches through the API); `onEvent(msg)` for each
   * event in order. Reconnects with backoff; a refused connection (4401) sends to the login page.
   */
  class LiveFeed {
    constructor({ onEvent, onSnapshot }) {
      this.onEvent = onEvent;
      this.onSnapshot = onSnapshot;
      this.seq = 0;
      this.delay = 250;
      this.stopped = false;
      this.received = 0;
      this.gaps = 0;
    }
    start() { this.stopped = false; this._open(); }
    stop() { this.stopped = true; if (this.ws) this.ws.close(); }
    _status(state, text) {
      const el = document.getElementById("live-status");
      if (el) {
        el.dataset.state = state;
        const t = el.querySelector(".live-text");
        if (t) t.textContent = text;
      }
      document.body.dataset.live = state;
    }
    _open() {
      const proto = location.protocol === "https:" ? "wss:" : "ws:";
      const ws = new WebSocket(proto + "//" + location.host + "/ws/blotter/");
      this.ws = ws;
      this._status("connecting", "connecting");
      ws.onmessage = (e) => this._message(JSON.parse(e.data));
      ws.onclose = (e) => {
        clearInterval(this.pinger);
        if (e.code === 4401) { window.location.href = "/accounts/login/?next=" + encodeURIComponent(location.pathname); return; }
        if (this.stopped) { this._status("off", "offline"); return; }
        this._status("down", "reconnecting");
        setTimeout(() => this._open(), this.delay);
        this.delay = Math.min(this.delay * 2, 5000);
      };
      ws.onopen = () => {
        this.delay = 250;
        this.pinger = setInterval(() => {
          if (ws.readyState === 1) ws.send(JSON.stringify({ type: "ping" }));
        }, 20000);
      };
    }
    _message(msg) {
      if (msg.type === "hello") {
        this.seq = 0;
        this.connects = (this.connects || 0) + 1;
        document.body.dataset.connects = String(this.connects);
        this._status("live", "live");
        this.onSnapshot("connect");
        return;
      }
      if (msg.type === "pong") return;
      this.received += 1;
      const gap = msg.seq !== this.seq + 1;
      this.seq = msg.seq;
      this.onEvent(msg);
      if (gap) { this.gaps += 1; this.onSnapshot("gap"); }
      document.body.dataset.seq = String(this.seq);
    }
  }

  function jsonScript(id, fallback) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : fallback;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
    });
    children.flat().forEach((c) => node.append(c instanceof Node ? c : document.createTextNode(String(c))));
    return node;
  }

  window.OMS = {
    api, apiAll, ApiError, errorLines, flash, flashError, fmtQty, fmtPx, fmtTime, label,
    STATUS_LABELS, OrderStore, LiveFeed, jsonScript, el, newKey,
  };
})();
