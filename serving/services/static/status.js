// The zoo's live status page: polls GET /zoo/feed and renders one card per service, grouped by GPU.
// Plain DOM (textContent everywhere: nothing from the feed is parsed as HTML); no framework, no network
// beyond this gateway. Admin actions send the token typed in the header as "Authorization: Bearer ...".
"use strict";
(function () {
  const POLL_MS = 1500;
  const THERMAL = ["OFF", "COLD", "WARM", "HOT", "AUTOMATIC"];
  const $ = (sel) => document.querySelector(sel);
  const seen = new Map();          // "service|boot|seq" -> event (the scrolling list keeps older events)
  let feed = null;
  let busy = 0;                    // actions in flight (buttons stay disabled)

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "style") e.setAttribute("style", v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return e;
  }

  const token = () => ($("#token").value || sessionStorage.getItem("zoo-token") || "").trim();
  const canAdmin = () => feed && (!feed.admin_required || token() !== "");
  const mb = (x) => (x === null || x === undefined ? "-" : `${Math.round(x * 10) / 10}`);

  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return `${Math.round(s)}s ago`;
    if (s < 3600) return `${Math.round(s / 60)}m ago`;
    return `${Math.round(s / 3600)}h ago`;
  }

  function toast(msg, isError) {
    const t = $("#toast");
    t.textContent = msg;
    t.className = "show" + (isError ? " error" : "");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.className = ""; }, isError ? 8000 : 3000);
  }

  async function call(method, url, body, what) {
    busy += 1;
    render();
    try {
      const headers = { "Content-Type": "application/json" };
      if (token()) headers.Authorization = `Bearer ${token()}`;
      const r = await fetch(url, { method, headers, body: JSON.stringify(body) });
      let data = {};
      try { data = await r.json(); } catch (e) { data = { message: `HTTP ${r.status}` }; }
      if (!r.ok) {
        const retry = r.headers.get("Retry-After");
        toast(`${what}: ${r.status} ${data.error_type || ""} ${data.message || data.detail || ""}` +
              (retry ? ` (retry after ${retry}s)` : ""), true);
      } else {
        toast(`${what}: done`);
      }
    } catch (e) {
      toast(`${what}: ${e}`, true);
    } finally {
      busy -= 1;
      poll();
    }
  }

  const action = (svc, act, model, extra) =>
    call("POST", `/zoo/services/${encodeURIComponent(svc)}/models/${act}`, Object.assign({ model }, extra || {}),
         `${act} ${model} on ${svc}`);
  const setThermal = (model, state) =>
    call("PUT", `/thermal/models/${encodeURIComponent(model)}?wait=true`, { target_state: state },
         `thermal ${model} -> ${state}`);

  function bar(kind, name, budget, parts, label) {
    const b = el("div", { class: `bar ${kind}`, "data-service": name, "data-kind": kind,
                          "data-budget-mb": budget, "data-used-mb": parts.reduce((a, p) => a + p.mb, 0),
                          role: "img", "aria-label": label });
    for (const p of parts) {
      const w = budget > 0 ? Math.min(100, (100 * p.mb) / budget) : 0;
      b.appendChild(el("div", { class: `seg ${p.tier}`, "data-model": p.model, "data-tier": p.tier,
                                style: `width:${w}%`, title: `${p.model}: ${mb(p.mb)} MB ${p.tier}` }, p.model));
    }
    return b;
  }

  function modelRows(name, svc, st) {
    const pending = new Set((st && st.pending_loads) || []);
    const models = svc.models && svc.models.length ? svc.models : ((st && st.registered_models) || []);
    const admin = canAdmin() && svc.reachable && busy === 0;
    const rows = models.map((m) => {
      const loading = pending.has(m.name);
      const tier = loading ? "loading" : m.tier;
      const sel = el("select", { "data-action": "thermal", "data-model": m.name, disabled: !admin || !feed.thermal_api,
                                 title: feed.thermal_api ? "thermal state" : "thermal API is off on this gateway",
                                 onchange: (e) => setThermal(m.name, e.target.value) },
        THERMAL.map((s) => el("option", { value: s, selected: s === (m.thermal_state || "") }, s)),
        m.thermal_state ? null : el("option", { value: "", selected: true, disabled: true }, "-"));
      return el("tr", { "data-model": m.name, "data-tier": tier },
        el("td", { class: "name" }, m.name),
        el("td", {}, m.priority || ""),
        el("td", { class: `tier ${tier}` }, tier + (m.failures ? ` ×${m.failures}` : "")),
        el("td", { title: `declared ${mb(m.declared_vram_mb)} MB` },
          m.measured_vram_mb !== null && m.measured_vram_mb !== undefined ? `${mb(m.measured_vram_mb)}` : `~${mb(m.vram_mb)}`),
        el("td", {}, String(m.leases || 0)),
        el("td", { title: m.last_used || "" }, ago(m.last_used)),
        el("td", {}, sel),
        el("td", {},
          el("button", { "data-action": "preload", "data-model": m.name, disabled: !admin || m.tier === "HOT" || loading,
                         onclick: () => action(name, "preload", m.name) }, "preload"), " ",
          el("button", { "data-action": "unload", "data-model": m.name, disabled: !admin || m.tier === "COLD",
                         onclick: () => action(name, "unload", m.name) }, "unload")));
    });
    return el("table", {},
      el("thead", {}, el("tr", {}, ["model", "prio", "tier", "MB", "leases", "last use", "thermal", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows));
  }

  function card(name, svc) {
    const st = svc.status;
    const h = svc.health || {};
    const state = h.state || (svc.reachable ? "?" : "unreachable");
    const dev = h.device && typeof h.device === "object" ? h.device.name : (h.device || (st && st.device) || "");
    const models = svc.models && svc.models.length ? svc.models : ((st && st.registered_models) || []);
    const pending = new Set((st && st.pending_loads) || []);
    const hot = models.filter((m) => m.tier === "HOT" || pending.has(m.name))
      .map((m) => ({ model: m.name, mb: m.vram_mb || 0, tier: pending.has(m.name) ? "loading" : "HOT" }));
    const warm = models.filter((m) => (m.host_mb || 0) > 0).map((m) => ({ model: m.name, mb: m.host_mb, tier: "WARM" }));
    const leases = models.reduce((a, m) => a + (m.leases || 0), 0);
    return el("div", { class: "card" + (svc.reachable ? "" : " down"), "data-service": name },
      el("h3", {}, name, el("span", { class: `state ${state}` }, state),
        svc.circuit && svc.circuit.state !== "closed"  // the gateway's breaker: calls to it fail fast
          ? el("span", { class: `circuit ${svc.circuit.state}`, title: svc.circuit.last_error || "" },
               `circuit ${svc.circuit.state.replace("_", "-")}`) : null,
        el("span", { class: "muted" }, `${svc.kind} · ${dev} · :${svc.port}`)),
      svc.error ? el("div", { class: "muted" }, svc.error) : null,
      st ? [
        el("div", { class: "barlabel" }, el("span", {}, "VRAM"),
           el("span", { class: "vram-text" }, `${mb(st.vram_used_mb)} / ${mb(st.vram_budget_mb)} MB (${mb(st.vram_utilization_percent)}%)`)),
        bar("vram", name, st.vram_budget_mb, hot, `VRAM of ${name}`),
        st.host_cache_budget_mb > 0 ? [
          el("div", { class: "barlabel" }, el("span", {}, "host warm tier"),
             el("span", {}, `${mb(st.host_cache_used_mb)} / ${mb(st.host_cache_budget_mb)} MB`)),
          bar("host", name, st.host_cache_budget_mb, warm, `host RAM warm tier of ${name}`)] : null,
        el("div", { class: "stats" },
          el("span", {}, `leases ${leases}`), el("span", {}, `queued ${st.inference_queued || 0}`),
          el("span", {}, `loading ${(st.pending_loads || []).length}`), el("span", {}, `policy ${st.policy}`),
          st.healthy === false ? el("span", { class: "state OFFLINE" }, "manager unhealthy") : null),
        modelRows(name, svc, st)] : null);
  }

  function renderEvents() {
    const list = $("#events");
    const items = [...seen.values()].sort((a, b) => b.t - a.t || b.seq - a.seq).slice(0, 300);
    list.replaceChildren(...items.map((e) => el("li", { class: `ev-${e.type}`, "data-type": e.type },
      el("span", { class: "muted" }, new Date(e.t * 1000).toLocaleTimeString()), " ",
      el("span", { class: "type" }, e.type), " ", el("b", {}, e.model || ""), ` @ ${e.service} `,
      el("span", { class: "muted" }, e.detail))));
    if (!items.length) list.replaceChildren(el("li", { class: "muted" }, "no loads, evictions or failures yet"));
  }

  function render() {
    if (!feed) return;
    const focused = document.activeElement;
    if (focused && focused.tagName === "SELECT" && $("#gpus").contains(focused)) return;  // keep an open menu
    const groups = new Map();
    for (const [name, svc] of Object.entries(feed.services)) {
      const key = svc.gpu === null || svc.gpu === undefined ? "CPU / unassigned" : `GPU ${svc.gpu}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(card(name, svc));
    }
    $("#gpus").replaceChildren(...[...groups.entries()].map(([k, cards]) =>
      el("div", { class: "gpu", "data-gpu": k }, el("h2", {}, k), el("div", { class: "cards" }, cards))));
    const svcs = Object.values(feed.services);
    const up = svcs.filter((s) => s.reachable).length;
    const used = svcs.reduce((a, s) => a + ((s.status && s.status.vram_used_mb) || 0), 0);
    const budget = svcs.reduce((a, s) => a + ((s.status && s.status.vram_budget_mb) || 0), 0);
    $("#summary").textContent = `${up}/${svcs.length} services up · VRAM ${mb(used)} / ${mb(budget)} MB`;
    $("#updated").textContent = `updated ${new Date(feed.generated_at * 1000).toLocaleTimeString()}`;
    $("#admin-state").textContent = !feed.admin_required ? "no token needed" : (token() ? "token set" : "read-only");
    renderEvents();
  }

  async function poll() {
    try {
      const r = await fetch("/zoo/feed", { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      feed = await r.json();
      for (const e of feed.events) seen.set(`${e.service}|${e.boot}|${e.seq}`, e);
      document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
      render();
    } catch (e) {
      $("#summary").textContent = `gateway unreachable: ${e.message}`;
    }
  }

  $("#token").value = sessionStorage.getItem("zoo-token") || "";
  $("#token").addEventListener("input", (e) => { sessionStorage.setItem("zoo-token", e.target.value.trim()); render(); });
  $("#admin").addEventListener("submit", (e) => e.preventDefault());
  poll();
  setInterval(poll, POLL_MS);
})();
