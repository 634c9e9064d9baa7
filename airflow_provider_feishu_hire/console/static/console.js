// The payouts console: reads the JSON API beside it (same origin, Airflow's login cookie) and draws tables and
// an inline SVG chart. No network beyond this server; every value is written with textContent, never as HTML.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let offset = 0;
  const LIMIT = 50;
  let lastDays = null;

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }
  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }
  async function api(path, options) {
    const answer = await fetch("api/" + path, Object.assign({ credentials: "same-origin" }, options || {}));
    if (answer.status === 401) { window.top.location.href = "/"; throw new Error("not logged in"); }
    const body = await answer.json().catch(() => ({}));
    if (!answer.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
      throw new Error(answer.status + ": " + detail);
    }
    return body;
  }
  function post(path, body) {
    return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }
  // UTC times as the ledger keeps them (ISO 8601), shown shorter: "2026-12-03 16:26:27.606Z".
  function when(iso) {
    return iso ? String(iso).replace("T", " ").replace(/\+00:00$/, "Z") : "";
  }
  // A long message in a list: its first line, whole in the tooltip (and in the order's attempts).
  function note(text) {
    return text ? el("span", text, { title: text }) : "";
  }
  function cash(map) {
    return Object.entries(map || {}).map(([c, a]) => a + " " + c).join(", ");
  }
  function table(columns, rows) {
    const t = el("table");
    const head = el("tr");
    columns.forEach((c) => head.appendChild(el("th", c[0])));
    t.appendChild(el("thead")).appendChild(head);
    const body = el("tbody");
    rows.forEach((row) => {
      const tr = el("tr");
      columns.forEach((c) => {
        const value = c[1](row);
        const td = el("td", null, c[2] ? { class: c[2] } : {});
        if (value instanceof Node) td.appendChild(value); else td.textContent = value === null || value === undefined ? "" : String(value);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    t.appendChild(body);
    return t;
  }
  function orderLink(row) {
    const a = el("a", row.external_order_id, { href: "#" });
    a.addEventListener("click", (e) => { e.preventDefault(); showOrder(row.external_order_id); });
    return a;
  }
  function taskLink(row) {
    return el("a", row.task_id + (row.map_index >= 0 ? " [" + row.map_index + "]" : ""), { href: row.task_url, target: "_top" });
  }
  const WITHDRAWAL_COLUMNS = [
    ["Order", orderLink], ["Account", (r) => r.referral_account_id],
    ["Status", (r) => el("span", r.status, { class: "status-" + r.status })],
    ["Points", (r) => r.point_bonus, "money"], ["Cash", (r) => cash(r.cash_bonus), "money"],
    ["trans_time", (r) => when(r.trans_time_iso), "when"], ["DAG", (r) => r.dag_id], ["Run", (r) => r.run_id], ["Task", taskLink],
    ["Attempts", (r) => r.attempts], ["Batch", (r) => r.payroll_batch_id], ["App", (r) => r.app_id],
    ["Requested", (r) => when(r.requested_at), "when"], ["Note", (r) => note(r.error_msg), "note"],
  ];

  async function loadMe() {
    const me = await api("me");
    $("me").textContent = "Signed in as " + me.name;
  }
  async function loadWithdrawals() {
    const params = new URLSearchParams();
    new FormData($("filters")).forEach((v, k) => { if (v) params.set(k, v); });
    params.set("limit", LIMIT); params.set("offset", offset);
    const found = await api("withdrawals?" + params);
    const box = $("withdrawals");
    box.replaceChildren(table(WITHDRAWAL_COLUMNS, found.withdrawals));
    const t = found.totals;
    $("withdrawal-totals").textContent = t ? "Run " + params.get("run_id") + ": " + t.withdrawals + " withdrawals (" +
      Object.entries(t.statuses).map(([s, n]) => n + " " + s).join(", ") + "); paid " + t.paid_point_bonus + " points" +
      (Object.keys(t.paid_cash_bonus).length ? ", " + cash(t.paid_cash_bonus) : "") : "";
    $("prev").disabled = offset === 0;
    $("next").disabled = !found.more;
  }
  async function loadAttention() {
    const found = await api("needs-attention");
    const box = $("attention");
    box.replaceChildren();
    const names = { review: "In review", stuck_sending: "Stuck sending", needs_approval: "Needs approval", rejected: "Refused" };
    let any = false;
    for (const [key, title] of Object.entries(names)) {
      const part = found[key];
      if (!part.rows.length) continue;
      any = true;
      box.appendChild(el("h3", title + " (" + part.rows.length + (part.more ? "+" : "") + ")"));
      box.appendChild(el("p", found.what_to_do[key]));
      box.appendChild(table(WITHDRAWAL_COLUMNS, part.rows));
    }
    const pending = found.pending_settlements.rows;
    if (pending.length) {
      any = true;
      box.appendChild(el("h3", "Settlements waiting for a second person (" + pending.length + ")"));
      box.appendChild(table([
        ["Settlement", (s) => s.id], ["Order", (s) => orderLink(s)], ["Account", (s) => s.referral_account_id],
        ["Outcome", (s) => (s.paid ? "paid" : "not paid")], ["Points", (s) => s.point_bonus, "money"],
        ["Cash", (s) => cash(s.cash_bonus), "money"], ["Evidence", (s) => s.evidence], ["Proposed by", (s) => s.proposed_by],
        ["", (s) => confirmButton(s)],
      ], pending));
    }
    if (!any) box.appendChild(el("p", "Nothing needs attention."));
  }
  function confirmButton(settlement) {
    const button = el("button", "Confirm");
    button.addEventListener("click", async () => {
      try {
        await post("settlements/" + settlement.id + "/confirm", {});
        showError("");
        await refresh();
      } catch (e) { showError(e.message); }
    });
    return button;
  }
  async function showOrder(orderId) {
    try {
      const row = await api("withdrawals/" + encodeURIComponent(orderId));
      $("order").hidden = false;
      $("order-id").textContent = row.external_order_id;
      const body = $("order-body");
      body.replaceChildren(table(WITHDRAWAL_COLUMNS, [row]));
      if (row.raw_answer) { body.appendChild(el("h3", "Feishu's raw answer, as kept")); body.appendChild(el("pre", row.raw_answer)); }
      body.appendChild(el("h3", "Attempts"));
      body.appendChild(table([
        ["Try", (a) => a.try_number], ["Task", (a) => a.task_id], ["Run", (a) => a.run_id], ["Started", (a) => when(a.started_at), "when"],
        ["Finished", (a) => when(a.finished_at), "when"], ["Outcome", (a) => a.outcome], ["Error", (a) => [a.error_code, a.error_msg].filter(Boolean).join(" ")],
        ["log_id", (a) => a.log_id],
      ], row.attempt_list));
      body.appendChild(el("h3", "Settlements"));
      body.appendChild(table([
        ["Id", (s) => s.id], ["Outcome", (s) => (s.paid ? "paid" : "not paid")], ["Points", (s) => s.point_bonus, "money"],
        ["Cash", (s) => cash(s.cash_bonus), "money"], ["Evidence", (s) => s.evidence], ["Proposed by", (s) => s.proposed_by],
        ["Confirmed by", (s) => s.confirmed_by || ""], ["", (s) => (s.confirmed_by ? "" : confirmButton(s))],
      ], row.settlements));
      const form = $("propose");
      form.hidden = !(row.may_edit && (row.status === "review" || row.status === "sending"));
      form.dataset.order = row.external_order_id;
      $("order").scrollIntoView();
    } catch (e) { showError(e.message); }
  }
  async function propose(event) {
    event.preventDefault();
    const form = $("propose");
    const data = new FormData(form);
    const paid = data.get("paid") === "true";
    const body = { paid: paid, evidence: String(data.get("evidence") || "") };
    if (paid) {
      body.trans_time = parseInt(String(data.get("trans_time")), 10);
      body.point_bonus = parseInt(String(data.get("point_bonus") || "0"), 10);
      body.cash_bonus = {};
      String(data.get("cash") || "").split(",").map((s) => s.trim()).filter(Boolean).forEach((pair) => {
        const [currency, amount] = pair.split("=").map((s) => s.trim());
        body.cash_bonus[(currency || "").toUpperCase()] = amount || "";  // a decimal string, never a float
      });
    }
    try {
      await post("withdrawals/" + encodeURIComponent(form.dataset.order) + "/settlements", body);
      showError("");
      form.reset();
      await refresh();
      await showOrder(form.dataset.order);
    } catch (e) { showError(e.message); }
  }
  async function loadBatches() {
    const found = await api("payroll-batches?limit=50");
    $("batches").replaceChildren(table([
      ["Batch", (b) => { const a = el("a", b.id, { href: "#" }); a.addEventListener("click", (e) => { e.preventDefault(); showBatch(b.id); }); return a; }],
      ["Created", (b) => when(b.created_at), "when"], ["Scope", (b) => b.scope + " " + b.scope_key], ["Accounts", (b) => b.accounts, "money"],
      ["Withdrawals", (b) => b.withdrawals, "money"], ["Points", (b) => b.point_bonus, "money"], ["Cash", (b) => cash(b.cash_bonus), "money"],
      ["Made by", (b) => el("a", b.dag_id + " / " + b.run_id + " / " + b.task_id + " try " + b.try_number, { href: b.export_url, target: "_top" })],
      ["Asset event", eventLinks],
      ["CSV", (b) => el("a", "download", { href: "api/payroll-batches/" + b.id + "/csv", download: "payroll_batch" + b.id + ".csv" })],
    ], found.payroll_batches));
  }
  // The Airflow asset events that announced a batch; none while its export has not succeeded.
  function eventLinks(batch) {
    const box = el("span");
    if (!batch.asset_events.length) { box.textContent = "not announced yet"; return box; }
    batch.asset_events.forEach((e, i) => {
      if (i) box.appendChild(document.createTextNode(", "));
      box.appendChild(el("a", e.asset_name + " event " + e.id, { href: e.task_events_url, target: "_top", title: e.timestamp }));
      box.appendChild(document.createTextNode(" ("));
      box.appendChild(el("a", "asset", { href: e.asset_url, target: "_top" }));
      box.appendChild(document.createTextNode(")"));
    });
    return box;
  }
  async function showBatch(id) {
    try {
      const batch = await api("payroll-batches/" + id);
      const box = $("batch-members");
      const head = el("p");
      head.append("Announced by: ", eventLinks(batch), " · ", el("a", "download the CSV", { href: "api/payroll-batches/" + batch.id + "/csv", download: "payroll_batch" + batch.id + ".csv" }));
      box.replaceChildren(el("h3", "Batch " + batch.id + ": " + batch.withdrawals + " withdrawals, " + batch.point_bonus + " points" + (Object.keys(batch.cash_bonus).length ? ", " + cash(batch.cash_bonus) : "")), head, table(WITHDRAWAL_COLUMNS, batch.members));
      box.scrollIntoView();
    } catch (e) { showError(e.message); }
  }
  async function loadReconciliations() {
    const only = $("only-mismatched").checked ? "&only_mismatched=true" : "";
    const found = await api("reconciliations?limit=50" + only);
    $("reconciliations").replaceChildren(table([
      ["Id", (r) => r.id], ["When", (r) => when(r.reconciled_at), "when"], ["App", (r) => r.app_id], ["Window (UTC)", (r) => when(r.start) + " – " + when(r.end)],
      ["Accounts", (r) => r.accounts, "money"], ["Points", (r) => r.point_bonus, "money"],
      ["Result", (r) => (r.agrees ? "agrees" : r.mismatch_count + (r.mismatch_count === 1 ? " mismatch" : " mismatches"))],
      ["Mismatches", (r) => r.mismatches.map((m) => "account " + m.referral_account_id + ": ledger " + m.ledger_point_bonus + ", Feishu " + m.feishu_point_bonus).join("; ")],
      ["Run", (r) => r.dag_id + " / " + r.run_id],
    ], found.reconciliations));
  }
  async function loadChart() {
    const params = new URLSearchParams();
    new FormData($("chart-form")).forEach((v, k) => { if (v && k !== "unit") params.set(k, v); });
    const found = await api("paid-per-day?" + params);
    lastDays = found;
    const unit = $("chart-unit");
    const units = ["points"].concat(Object.keys(found.totals.cash_bonus));
    const chosen = units.includes(unit.value) ? unit.value : "points";
    unit.replaceChildren(...units.map((u) => el("option", u, u === chosen ? { value: u, selected: "" } : { value: u })));
    drawChart(found, chosen);
    const t = found.totals;
    $("chart-totals").textContent = found.from + " to " + found.to + ": " + t.withdrawals + " withdrawals, " + t.point_bonus + " points" + (Object.keys(t.cash_bonus).length ? ", " + cash(t.cash_bonus) : "");
  }
  function drawChart(found, unit) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    const W = 900, H = 220, PAD = 40;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H); svg.setAttribute("width", "100%"); svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "Amounts paid per day in " + unit);
    // Heights only: the exact decimal strings are in each bar's title and in the totals.
    const value = (d) => (unit === "points" ? d.point_bonus : Number(d.cash_bonus[unit] || 0));
    const label = (d) => (unit === "points" ? d.point_bonus + " points" : (d.cash_bonus[unit] || "0.00") + " " + unit);
    const max = Math.max(1, ...found.days.map(value));
    const start = Date.parse(found.from + "T00:00:00Z"), end = Date.parse(found.to + "T00:00:00Z");
    const n = Math.round((end - start) / 86400000) + 1;
    const bw = (W - 2 * PAD) / n;
    const axis = document.createElementNS(NS, "line");
    Object.entries({ x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD, stroke: "#718096" }).forEach(([k, v]) => axis.setAttribute(k, v));
    svg.appendChild(axis);
    found.days.forEach((d) => {
      const i = Math.round((Date.parse(d.day + "T00:00:00Z") - start) / 86400000);
      const h = ((H - 2 * PAD) * value(d)) / max;
      const bar = document.createElementNS(NS, "rect");
      Object.entries({ x: PAD + i * bw + 1, y: H - PAD - h, width: Math.max(1, bw - 2), height: h, fill: "#3182ce" }).forEach(([k, v]) => bar.setAttribute(k, v));
      const title = document.createElementNS(NS, "title");
      title.textContent = d.day + ": " + label(d) + ", " + d.withdrawals + " withdrawals";
      bar.appendChild(title);
      svg.appendChild(bar);
    });
    [[found.from, PAD], [found.to, W - PAD - 60]].forEach(([text, x]) => {
      const t = document.createElementNS(NS, "text"); t.setAttribute("x", x); t.setAttribute("y", H - PAD + 14); t.textContent = text; svg.appendChild(t);
    });
    const top = document.createElementNS(NS, "text"); top.setAttribute("x", 2); top.setAttribute("y", PAD - 4);
    top.textContent = "max " + (unit === "points" ? max + " points" : found.days.map((d) => d.cash_bonus[unit]).filter(Boolean).sort((a, b) => Number(b) - Number(a))[0] + " " + unit);
    svg.appendChild(top);
    $("chart").replaceChildren(svg);
  }
  async function refresh() {
    try {
      await Promise.all([loadAttention(), loadWithdrawals(), loadBatches(), loadReconciliations(), loadChart()]);
      showError("");
    } catch (e) { showError(e.message); }
  }
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); offset = 0; loadWithdrawals().catch((x) => showError(x.message)); });
  $("prev").addEventListener("click", () => { offset = Math.max(0, offset - LIMIT); loadWithdrawals().catch((x) => showError(x.message)); });
  $("next").addEventListener("click", () => { offset += LIMIT; loadWithdrawals().catch((x) => showError(x.message)); });
  $("chart-form").addEventListener("submit", (e) => { e.preventDefault(); loadChart().catch((x) => showError(x.message)); });
  $("chart-unit").addEventListener("change", () => { if (lastDays) drawChart(lastDays, $("chart-unit").value); });
  $("only-mismatched").addEventListener("change", () => loadReconciliations().catch((x) => showError(x.message)));
  $("propose").addEventListener("submit", propose);
  loadMe().then(refresh).catch((e) => showError(e.message));
})();
