/* The PM's page: order ticket with the API's validation messages, basket upload with per-row
 * errors, the live grid of the PM's own orders, and positions and cash of the selected account. */
(function () {
  "use strict";
  const { api, apiAll, flash, fmtQty, fmtPx, errorLines, el, ApiError } = window.OMS;
  const $ = (s) => document.querySelector(s);

  // --- live grid of own orders ------------------------------------------------------------------
  const grid = OMSBlotter.mount({
    grid: "#grid", search: "#grid-search",
    statuses: OMS.jsonScript("statuses", []), sides: OMS.jsonScript("sides", []),
    persistenceID: "oms-pm-orders", hidden: ["created_by", "block", "time_in_force", "leaves_qty"],
    onEvent: (msg) => {
      const acct = msg.data && (msg.data.account || (msg.data.order && msg.data.order.account));
      if (msg.type === "execution.created" && acct === $("#book-account").value) scheduleBook();
    },
  });
  window.pmGrid = grid;
  OMSBlotter.wireToolbar(grid);

  // --- order ticket -----------------------------------------------------------------------------
  const ticket = $("#ticket");
  const result = $("#ticket-result");

  function syncTicket() {
    const type = $("#t-type").value;
    $("#t-limit").disabled = !(type === "limit" || type === "stop_limit");
    $("#t-stop").disabled = !(type === "stop" || type === "stop_limit");
    $("#t-expire").disabled = $("#t-tif").value !== "gtd";
  }
  $("#t-type").addEventListener("change", syncTicket);
  $("#t-tif").addEventListener("change", syncTicket);
  syncTicket();

  let lookup = null;
  $("#t-instrument").addEventListener("input", () => {
    clearTimeout(lookup);
    const q = $("#t-instrument").value.trim().toUpperCase();
    if (!q) return;
    lookup = setTimeout(async () => {
      try {
        const data = await api("instruments/", { params: { symbol: q, page_size: 20 } });
        const rows = Array.isArray(data) ? data : data.results || [];
        $("#instrument-list").replaceChildren(...rows.map((i) => el("option", { value: i.symbol }, i.name || "")));
      } catch (e) { /* suggestions are optional */ }
    }, 150);
  });

  function clearErrors() {
    ticket.querySelectorAll("[data-error-for]").forEach((n) => { n.textContent = ""; });
    ticket.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
  }

  function showResult(box, kind, title, lines) {
    box.hidden = false;
    box.dataset.kind = kind;
    box.replaceChildren(el("strong", { text: title }));
    if (lines && lines.length) box.append(el("ul", {}, lines.map((l) => el("li", { text: l }))));
  }

  ticket.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors();
    const body = {};
    new FormData(ticket).forEach((v, k) => { if (String(v).trim() !== "") body[k] = String(v).trim(); });
    ticket.querySelectorAll("input:disabled, select:disabled").forEach((n) => { delete body[n.name]; });
    if (body.instrument) body.instrument = body.instrument.toUpperCase();
    $("#t-submit").disabled = true;
    try {
      const o = await api("orders/", { method: "POST", body });
      const c = o.compliance || {};
      const outcome = c.outcome || o.compliance_outcome || "pass";
      const lines = (c.results || []).filter((r) => r.outcome !== "pass").map((r) => r.rule + ": " + r.message);
      const kind = outcome === "pass" ? "ok" : outcome;
      showResult(result, kind, "Order O" + o.id + " " + OMS.label(o.status) + " · compliance " + outcome, lines);
      grid.snapshot();
      $("#t-quantity").value = "";
    } catch (err) {
      if (!(err instanceof ApiError)) { showResult(result, "error", String(err)); return; }
      const unplaced = [];
      Object.entries(err.errors || {}).forEach(([field, msgs]) => {
        const text = Array.isArray(msgs) ? msgs.join(" ") : typeof msgs === "object" ? JSON.stringify(msgs) : String(msgs);
        const slot = ticket.querySelector('[data-error-for="' + field + '"]');
        const input = ticket.querySelector('[name="' + field + '"]');
        if (slot) { slot.textContent = text; if (input) input.setAttribute("aria-invalid", "true"); }
        else unplaced.push(field + ": " + text);
      });
      showResult(result, "error", err.detail || "Order refused", unplaced);
    } finally {
      $("#t-submit").disabled = false;
    }
  });

  // --- basket upload ----------------------------------------------------------------------------
  const basketResult = $("#basket-result");
  $("#basket").addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = $("#basket-file").files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file);
    $("#basket-submit").disabled = true;
    try {
      const res = await api("baskets/", { method: "POST", form });
      const s = res.summary || {};
      showResult(basketResult, s.blocked || s.warned ? "warn" : "ok",
        "Basket " + res.id + ": " + (s.created ?? (res.orders || []).length) + " orders created",
        ["passed " + (s.passed ?? 0) + ", warned " + (s.warned ?? 0) + ", blocked " + (s.blocked ?? 0)]);
      grid.snapshot();
    } catch (err) {
      basketResult.hidden = false;
      basketResult.dataset.kind = "error";
      const rows = err instanceof ApiError && Array.isArray(err.errors) ? err.errors
        : err instanceof ApiError && err.body && Array.isArray(err.body.errors) ? err.body.errors : [];
      const head = err.detail || "Basket refused";
      basketResult.replaceChildren(el("strong", { text: /nothing/i.test(head) ? head : head + " · nothing was created" }));
      if (rows.length) {
        basketResult.append(el("table", { class: "dense basket-errors", "data-testid": "basket-errors" },
          el("thead", {}, el("tr", {}, el("th", { text: "Row" }), el("th", { text: "Field" }), el("th", { text: "Problem" }))),
          el("tbody", {}, rows.map((r) => el("tr", {}, el("td", { text: r.row }), el("td", { text: r.field || "" }), el("td", { text: r.detail }))))));
      } else {
        const lines = err instanceof ApiError ? errorLines(err).map(([f, m]) => (f ? f + ": " : "") + m) : [];
        if (lines.length) basketResult.append(el("ul", {}, lines.map((l) => el("li", { text: l }))));
      }
    } finally {
      $("#basket-submit").disabled = false;
    }
  });

  // --- positions and cash -----------------------------------------------------------------------
  let bookTimer = null;
  function scheduleBook() { clearTimeout(bookTimer); bookTimer = setTimeout(loadBook, 200); }

  async function loadBook() {
    const account = $("#book-account").value;
    if (!account) return;
    const pos = $("#positions tbody");
    const cash = $("#cash tbody");
    try {
      const [positions, balances] = await Promise.all([
        apiAll("positions/", { account }), apiAll("cash/", { account }),
      ]);
      pos.replaceChildren(...(positions.length ? positions.map((p) => el("tr", {},
        el("td", { text: typeof p.instrument === "object" ? p.instrument.symbol : p.instrument }),
        el("td", { class: "num", text: fmtQty(p.quantity) }),
        el("td", { class: "num", text: fmtPx(p.avg_cost) }),
        el("td", { class: "num", text: fmtPx(p.realised_pnl) || "0.00" }))) : [el("tr", { class: "empty" }, el("td", { colspan: 4, text: "No positions" }))]));
      cash.replaceChildren(...(balances.length ? balances.map((c) => el("tr", {},
        el("td", { text: c.currency }),
        el("td", { class: "num", text: fmtPx(c.settled) || "0.00" }),
        el("td", { class: "num", text: fmtPx(c.pending) || "0.00" }))) : [el("tr", { class: "empty" }, el("td", { colspan: 3, text: "No cash balances" }))]));
    } catch (err) {
      pos.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 4, text: "Book unavailable: " + err.message })));
      cash.replaceChildren();
    }
  }
  $("#book-account").addEventListener("change", loadBook);
  loadBook();

  if (!document.querySelector("#t-account option")) {
    flash("You manage no accounts yet: ask an administrator to assign you one.", "warn");
  }
})();
