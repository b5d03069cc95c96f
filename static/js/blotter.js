/* The live order grid (Tabulator), its fills panel and its actions. Used by the trader blotter
 * and by the PM's own-orders view; which actions show depends on the page's config. */
(function () {
  "use strict";
  const { api, apiAll, flash, flashError, fmtQty, fmtPx, fmtTime, label, OrderStore, LiveFeed, el } = window.OMS;

  const OPEN = new Set(["new", "pending_compliance", "awaiting_override", "approved", "pending_new",
    "working", "partially_filled", "pending_cancel", "pending_replace", "replaced", "suspended", "done_for_day"]);
  const SIDE_SHORT = { buy: "BUY", sell: "SELL", sell_short: "SHORT", buy_to_cover: "COVER" };
  const SIDE_CLASS = { buy: "side-buy", buy_to_cover: "side-buy", sell: "side-sell", sell_short: "side-sell" };

  function statusCell(cell) {
    const v = cell.getValue();
    return '<span class="st st-' + v + '">' + label(v) + "</span>";
  }
  function sideCell(cell) {
    const v = cell.getValue() || "";
    return '<span class="' + (SIDE_CLASS[v] || "") + '">' + (SIDE_SHORT[v] || v.toUpperCase()) + "</span>";
  }
  function complianceCell(cell) {
    const v = cell.getValue();
    return v ? '<span class="cmp cmp-' + v + '">' + v + "</span>" : "";
  }
  function fillCell(cell) {
    const r = cell.getRow().getData();
    const q = Number(r.quantity) || 0;
    const pct = q ? Math.min(100, (100 * Number(r.cum_qty || 0)) / q) : 0;
    return '<span class="fillbar"><span style="width:' + pct.toFixed(1) + '%"></span></span>' +
      '<span class="num">' + fmtQty(r.cum_qty) + "</span>";
  }

  function columns(cfg) {
    const numSort = (a, b) => Number(a || 0) - Number(b || 0);
    const statusValues = {};
    cfg.statuses.forEach((s) => { statusValues[s.value] = s.label; window.OMS.STATUS_LABELS[s.value] = s.label; });
    const sideValues = {};
    cfg.sides.forEach((s) => { sideValues[s.value] = s.label; });
    const cols = [
      { formatter: "rowSelection", titleFormatter: "rowSelection", hozAlign: "center", headerSort: false, width: 28, frozen: true, field: "_sel", title: "", cssClass: "sel" },
      { title: "ID", field: "id", sorter: "number", minWidth: 64, headerFilter: "input", frozen: true },
      { title: "Account", field: "account", headerFilter: "input", minWidth: 92 },
      { title: "Symbol", field: "instrument", headerFilter: "input", minWidth: 78, cssClass: "sym" },
      { title: "Side", field: "side", formatter: sideCell, headerFilter: "list", headerFilterParams: { values: sideValues, clearable: true }, minWidth: 78 },
      { title: "Qty", field: "quantity", hozAlign: "right", sorter: numSort, formatter: (c) => fmtQty(c.getValue()), minWidth: 80 },
      { title: "Type", field: "order_type", minWidth: 70, headerFilter: "input", formatter: (c) => (c.getValue() || "").replace("_", " ") },
      { title: "Limit", field: "limit_price", hozAlign: "right", sorter: numSort, formatter: (c) => fmtPx(c.getValue()), minWidth: 78 },
      { title: "Stop", field: "stop_price", hozAlign: "right", sorter: numSort, formatter: (c) => fmtPx(c.getValue()), minWidth: 70, visible: false },
      { title: "TIF", field: "time_in_force", minWidth: 52, formatter: (c) => (c.getValue() || "").toUpperCase() },
      { title: "Status", field: "status", formatter: statusCell, headerFilter: "list", headerFilterParams: { values: statusValues, clearable: true }, minWidth: 150 },
      { title: "Cum qty", field: "cum_qty", hozAlign: "right", sorter: numSort, formatter: fillCell, minWidth: 110 },
      { title: "Leaves", field: "leaves_qty", hozAlign: "right", sorter: numSort, formatter: (c) => fmtQty(c.getValue()), minWidth: 76 },
      { title: "Avg px", field: "avg_px", hozAlign: "right", sorter: numSort, formatter: (c) => fmtPx(c.getValue()), minWidth: 84, cssClass: "avgpx" },
      { title: "Cmpl", field: "compliance_outcome", formatter: complianceCell, headerFilter: "input", minWidth: 62 },
      { title: "Block", field: "block", minWidth: 58, formatter: (c) => (c.getValue() ? "B" + c.getValue() : "") },
      { title: "Ver", field: "version", sorter: "number", hozAlign: "right", minWidth: 46, visible: false },
      { title: "Entered by", field: "created_by", headerFilter: "input", minWidth: 90 },
      { title: "Created", field: "created_at", formatter: (c) => fmtTime(c.getValue()), minWidth: 96, visible: false },
      { title: "Last update", field: "updated_at", formatter: (c) => fmtTime(c.getValue()), minWidth: 104 },
    ];
    const hidden = new Set(cfg.hidden || []);
    return cols.map((c) => Object.assign({ headerTooltip: c.title }, c, hidden.has(c.field) ? { visible: false } : {}));
  }

  /** Normalise an order from the API or an event into the grid's row shape. */
  function row(o) {
    if (!o) return o;
    const r = Object.assign({}, o);
    ["account", "instrument", "created_by", "block"].forEach((k) => {
      const v = r[k];
      if (v && typeof v === "object") r[k] = v.code || v.symbol || v.username || v.id;
    });
    if (r.compliance && typeof r.compliance === "object" && !r.compliance_outcome) r.compliance_outcome = r.compliance.outcome;
    r.version = Number(r.version || 0);
    return r;
  }

  /** Mount a live order grid into `root` (an element holding #grid, #fills, toolbar and dialogs). */
  function mount(cfg) {
    const store = new OrderStore();
    const pending = [];
    let built = false;
    let selectedId = null;
    const snapshotParams = cfg.snapshotParams || {};

    const table = new Tabulator(cfg.grid, {
      index: "id",
      height: cfg.height || "100%",
      layout: "fitColumns",
      reactiveData: false,
      selectableRows: true,
      placeholder: "No orders",
      columnHeaderVertAlign: "bottom",
      initialSort: [{ column: "updated_at", dir: "desc" }],
      columns: columns(cfg),
      rowFormatter: (r) => {
        const d = r.getData();
        r.getElement().dataset.orderId = d.id;
        r.getElement().dataset.status = d.status;
        r.getElement().dataset.version = d.version;
      },
      persistence: { columns: ["visible"] },
      persistenceID: cfg.persistenceID || "oms-blotter",
    });
    table.on("tableBuilt", () => {
      built = true;
      applyPending();
      buildColumnChooser();
    });

    const liveIds = new Set();
    function applyPending() {
      if (!built || !pending.length) return;
      const rows = pending.splice(0);
      const flashIds = new Set(liveIds);
      liveIds.clear();
      table.updateOrAddData(rows).then(() => {
        rows.forEach((r) => {
          const gr = table.getRow(r.id);
          if (gr && flashIds.has(r.id)) {
            gr.reformat();
            const e = gr.getElement();
            e.classList.remove("row-flash");
            void e.offsetWidth;
            e.classList.add("row-flash");
          }
        });
        updateCounts();
        if (selectedId !== null && rows.some((r) => r.id === selectedId)) renderSelectedHeader();
      });
    }

    function apply(r) {
      if (cfg.accept && !cfg.accept(r)) return;
      if (store.upsert(r)) { pending.push(r); }
    }

    let flushTimer = null;
    function schedule() {
      // Several events in one burst become one grid update (one repaint).
      if (flushTimer) return;
      flushTimer = requestAnimationFrame(() => { flushTimer = null; applyPending(); });
    }

    let snapshotRunning = null;
    async function snapshot() {
      if (snapshotRunning) return snapshotRunning;
      snapshotRunning = (async () => {
        try {
          const rows = await apiAll("orders/", snapshotParams);
          rows.forEach((o) => apply(row(o)));
          schedule();
          document.body.dataset.snapshot = String(Date.now());
          if (cfg.onSnapshot) cfg.onSnapshot();
          if (selectedId !== null) loadFills(selectedId);
        } catch (err) {
          flashError(err, "Could not load orders");
        } finally {
          snapshotRunning = null;
        }
      })();
      return snapshotRunning;
    }

    async function refetchOne(id) {
      try { apply(row(await api("orders/" + id + "/"))); schedule(); } catch (err) { /* gone or not visible */ }
    }

    function onEvent(msg) {
      const known = store.version(msg.order_id);
      const data = msg.type === "execution.created" ? (msg.data && msg.data.order) : msg.data;
      // A per-order version jump means this connection missed an event about the order.
      if (known && msg.version > known + 1) refetchOne(msg.order_id);
      if (data && typeof data === "object" && "status" in data) { apply(row(data)); liveIds.add(msg.order_id); }
      if (msg.type === "execution.created" && msg.order_id === selectedId) {
        const o = msg.data.order || {};
        addFill(Object.assign({ cum_qty: o.cum_qty, avg_px: o.avg_px }, msg.data.execution));
      }
      schedule();
      if (cfg.onEvent) cfg.onEvent(msg);
    }

    const feed = new LiveFeed({ onEvent, onSnapshot: snapshot });

    // --- fills panel ----------------------------------------------------------------------------
    const fillsBody = cfg.fills ? document.querySelector(cfg.fills + " tbody") : null;
    const fillsTitle = cfg.fills ? document.querySelector(cfg.fills + " .fills-title") : null;
    const fillKeys = new Set();

    function renderSelectedHeader() {
      const o = store.get(selectedId);
      if (!fillsTitle) return;
      fillsTitle.textContent = o
        ? "Fills · O" + o.id + " · " + o.account + " " + (o.side || "").toUpperCase() + " " + fmtQty(o.quantity) + " " + o.instrument +
          " · cum " + fmtQty(o.cum_qty) + " @ " + (fmtPx(o.avg_px) || "–") + " · " + label(o.status)
        : "Fills · select an order";
    }

    function addFill(x) {
      if (!x || !fillsBody) return;
      const key = x.id || x.exec_id;
      if (fillKeys.has(key)) return;
      fillKeys.add(key);
      const empty = fillsBody.querySelector(".empty");
      if (empty) empty.remove();
      const tr = el("tr", { "data-exec-id": x.exec_id || "" },
        el("td", { text: fmtTime(x.transact_time || x.received_at || new Date().toISOString()) }),
        el("td", { text: x.exec_id || "" }),
        el("td", { text: x.broker || "" }),
        el("td", { text: (x.exec_type || "fill").replace(/_/g, " ") }),
        el("td", { class: "num", text: Number(x.last_qty) ? fmtQty(x.last_qty) : "" }),
        el("td", { class: "num", text: fmtPx(x.last_px) }),
        el("td", { class: "num", text: fmtQty(x.cum_qty) }),
        el("td", { class: "num", text: fmtPx(x.avg_px) }));
      tr.classList.add("row-flash");
      fillsBody.prepend(tr);
    }

    async function loadFills(id) {
      if (!fillsBody) return;
      renderSelectedHeader();
      fillsBody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 8, text: "Loading…" })));
      fillKeys.clear();
      try {
        const fills = await apiAll("executions/", { order: id });
        if (id !== selectedId) return;
        fillsBody.replaceChildren();
        if (!fills.length) fillsBody.append(el("tr", { class: "empty" }, el("td", { colspan: 8, text: "No fills yet" })));
        fills.sort((a, b) => String(a.transact_time || a.received_at).localeCompare(String(b.transact_time || b.received_at)))
          .forEach(addFill);
        fillsBody.querySelectorAll(".row-flash").forEach((e) => e.classList.remove("row-flash"));
      } catch (err) {
        fillsBody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 8, text: "Fills unavailable: " + err.message })));
      }
    }

    table.on("rowClick", (e, r) => {
      selectedId = r.getData().id;
      loadFills(selectedId);
    });
    table.on("rowSelectionChanged", (data) => {
      const n = document.querySelector("[data-selected-count]");
      if (n) n.textContent = data.length ? data.length + " selected" : "";
      document.querySelectorAll("[data-needs-selection]").forEach((b) => { b.disabled = !data.length; });
      document.querySelectorAll("[data-needs-one]").forEach((b) => { b.disabled = data.length !== 1; });
    });

    function selected() { return table.getSelectedData(); }

    function updateCounts() {
      const all = store.all();
      const open = all.filter((o) => OPEN.has(o.status)).length;
      const c = document.querySelector("[data-counts]");
      if (c) c.textContent = all.length + " orders · " + open + " open";
    }

    // --- toolbar: search, column chooser --------------------------------------------------------
    const search = document.querySelector(cfg.search);
    if (search) {
      search.addEventListener("input", () => {
        const q = search.value.trim().toLowerCase();
        if (!q) { table.clearFilter(); return; }
        table.setFilter((d) => [d.id, d.account, d.instrument, d.status, d.side, d.created_by].some((v) => String(v || "").toLowerCase().includes(q)));
      });
    }
    document.querySelectorAll("[data-quick-filter]").forEach((b) => {
      b.addEventListener("click", () => {
        document.querySelectorAll("[data-quick-filter]").forEach((x) => x.setAttribute("aria-pressed", x === b ? "true" : "false"));
        const mode = b.dataset.quickFilter;
        table.clearFilter();
        if (mode === "open") table.setFilter((d) => OPEN.has(d.status));
        else if (mode === "done") table.setFilter((d) => !OPEN.has(d.status));
        else if (mode === "attention") table.setFilter((d) => ["awaiting_override", "blocked", "rejected"].includes(d.status));
      });
    });

    function buildColumnChooser() {
      const menu = document.querySelector(cfg.columnMenu);
      if (!menu) return;
      menu.replaceChildren();
      table.getColumns().forEach((col) => {
        const def = col.getDefinition();
        if (!def.title) return;
        const box = el("input", { type: "checkbox", "data-column": def.field });
        box.checked = col.isVisible();
        box.addEventListener("change", () => { box.checked ? col.show() : col.hide(); });
        menu.append(el("label", {}, box, " " + def.title));
      });
    }

    // --- actions --------------------------------------------------------------------------------
    async function each(orders, fn, verb) {
      let ok = 0;
      const failures = [];
      for (const o of orders) {
        try { adopt(await fn(o)); ok += 1; } catch (err) { failures.push(["O" + o.id, err.detail || err.message]); }
      }
      if (failures.length) flash(verb + ": " + ok + " done, " + failures.length + " failed", "error", failures);
      else flash(verb + ": " + ok + " order" + (ok === 1 ? "" : "s") + " done", "ok");
    }

    /** Apply an order returned by a write at once; its websocket event may come a moment later. */
    function adopt(res) {
      if (res && typeof res === "object" && res.id !== undefined && "status" in res && "version" in res && "account" in res) {
        apply(row(res));
        schedule();
      }
    }

    const actions = {
      async block() {
        const orders = selected();
        if (orders.length < 1) return;
        try {
          const b = await api("blocks/", { method: "POST", body: { orders: orders.map((o) => o.id) } });
          flash("Block B" + b.id + " created from " + orders.length + " orders", "ok");
          table.deselectRow();
        } catch (err) { flashError(err, "Block refused"); }
      },
      async route(broker) {
        const orders = selected();
        const blocks = new Set();
        const body = { broker: broker || null };
        await each(orders, async (o) => {
          if (o.block) {
            if (blocks.has(o.block)) return;
            blocks.add(o.block);
            return api("blocks/" + o.block + "/route/", { method: "POST", body });
          }
          return api("orders/" + o.id + "/route/", { method: "POST", body });
        }, "Route " + (broker || "best execution"));
      },
      async cancel() {
        await each(selected(), (o) => api("orders/" + o.id + "/cancel/", { method: "POST", body: { version: o.version } }), "Cancel");
      },
      async amend(values) {
        const o = selected()[0];
        if (!o) return;
        const body = { version: o.version };
        if (values.quantity) body.quantity = values.quantity;
        if (values.limit_price) body.limit_price = values.limit_price;
        try {
          adopt(await api("orders/" + o.id + "/amend/", { method: "POST", body }));
          flash("Amend of O" + o.id + " accepted", "ok");
          return true;
        } catch (err) { flashError(err, "Amend refused"); return false; }
      },
      async override(reason) {
        await each(selected(), (o) => api("orders/" + o.id + "/override/", { method: "POST", body: { reason } }), "Override");
      },
      async kill(scope, target, reason) {
        try {
          const res = await api("kill-switch/", { method: "POST", body: { scope, target: scope === "firm" ? "" : target, reason: reason || "" } });
          const parts = [];
          if (res && res.canceled !== undefined) parts.push(res.canceled + " staged orders canceled");
          if (res && res.cancel_requests !== undefined) parts.push(res.cancel_requests + " cancel requests sent to brokers");
          flash("Kill switch engaged (" + scope + (target && scope !== "firm" ? " " + target : "") + ")" + (parts.length ? ": " + parts.join(", ") : ""), "warn");
          if (cfg.onKill) cfg.onKill();
          return true;
        } catch (err) { flashError(err, "Kill switch refused"); return false; }
      },
    };

    feed.start();
    return { table, store, feed, actions, snapshot, selected };
  }

  /** Wire the blotter page's toolbar buttons and dialogs to a mounted grid. */
  function wireToolbar(grid) {
    const $ = (s) => document.querySelector(s);
    const on = (sel, ev, fn) => { const n = $(sel); if (n) n.addEventListener(ev, fn); };

    on("#act-block", "click", () => grid.actions.block());
    on("#act-route", "click", () => grid.actions.route($("#route-broker").value));
    on("#act-cancel", "click", () => {
      const n = grid.selected().length;
      if (n && confirm("Cancel " + n + " order" + (n === 1 ? "" : "s") + "?")) grid.actions.cancel();
    });
    on("#act-amend", "click", () => {
      const o = grid.selected()[0];
      if (!o) return;
      $("#amend-title").textContent = "Amend O" + o.id + " · " + o.instrument + " " + (o.side || "").toUpperCase();
      $("#amend-quantity").value = Number(o.quantity);
      $("#amend-limit").value = o.limit_price ? Number(o.limit_price) : "";
      $("#dlg-amend").showModal();
    });
    on("#dlg-amend form", "submit", async (e) => {
      if (e.submitter && e.submitter.value === "cancel") return;
      e.preventDefault();
      const ok = await grid.actions.amend({ quantity: $("#amend-quantity").value, limit_price: $("#amend-limit").value });
      if (ok) $("#dlg-amend").close();
    });
    on("#act-override", "click", () => {
      const o = grid.selected()[0];
      if (!o) return;
      $("#override-title").textContent = "Override compliance warning · O" + o.id + " · " + o.account + " " + o.instrument;
      $("#override-reason").value = "";
      $("#dlg-override").showModal();
    });
    on("#dlg-override form", "submit", async (e) => {
      if (e.submitter && e.submitter.value === "cancel") return;
      e.preventDefault();
      const reason = $("#override-reason").value.trim();
      if (!reason) return;
      $("#dlg-override").close();
      await grid.actions.override(reason);
    });
    on("#act-kill", "click", () => { $("#dlg-kill").showModal(); });
    on("#kill-scope", "change", () => {
      const scope = $("#kill-scope").value;
      document.querySelectorAll("[data-kill-target]").forEach((s) => { s.hidden = s.dataset.killTarget !== scope; });
    });
    on("#dlg-kill form", "submit", async (e) => {
      if (e.submitter && e.submitter.value === "cancel") return;
      e.preventDefault();
      const scope = $("#kill-scope").value;
      const sel = document.querySelector('[data-kill-target="' + scope + '"] select');
      const ok = await grid.actions.kill(scope, sel ? sel.value : null, $("#kill-reason").value.trim());
      if (ok) $("#dlg-kill").close();
    });
    on("#columns-toggle", "click", () => { const m = $("#column-menu"); m.hidden = !m.hidden; });
    document.addEventListener("click", (e) => {
      const m = $("#column-menu");
      if (m && !m.hidden && !e.target.closest("#column-menu") && !e.target.closest("#columns-toggle")) m.hidden = true;
    });
  }

  /** The banner of active kill switches, with a Lift button (a second person must lift it). */
  function killBanner(canLift) {
    const box = document.getElementById("kill-banner");
    if (!box) return () => {};
    async function refresh() {
      let rows = [];
      try { rows = await apiAll("kill-switch/", { active: "true" }); } catch (err) { return; }
      box.hidden = !rows.length;
      box.replaceChildren(...rows.map((k) => el("span", { class: "kill-item" },
        el("strong", { text: "KILL SWITCH " + k.scope.toUpperCase() + (k.target ? " " + k.target : "") }),
        " engaged by " + k.engaged_by + " at " + fmtTime(k.engaged_at) + (k.reason ? " · " + k.reason : "") + " ",
        canLift ? el("button", { type: "button", class: "btn-quiet", onclick: async () => {
          try { await api("kill-switch/" + k.id + "/lift/", { method: "POST" }); flash("Kill switch lifted", "ok"); }
          catch (err) { flashError(err, "Lift refused"); }
          refresh();
        } }, "Lift") : "")));
    }
    refresh();
    return refresh;
  }

  window.OMSBlotter = { mount, wireToolbar, row, killBanner };
})();
