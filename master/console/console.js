// decnet console: the live parts and the actions. Plain JavaScript, no
// dependencies; every page works without it (server-rendered), this makes
// it follow the event stream (GET /v1/events) and send the actions through
// the same /v1 routes as the CLI, with the session's CSRF token.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function toast(msg, bad) {
    const t = $("#toast");
    if (!t) return;
    t.textContent = msg;
    t.className = bad ? "toast err" : "toast";
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 8000);
  }

  // A change through the API: JSON in and out, the CSRF token, an
  // idempotency key (a retried click never starts a second job).
  async function api(method, path, body) {
    const headers = { "X-CSRF-Token": csrf, "Idempotency-Key": crypto.randomUUID() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await r.json(); } catch (_) { /* no body */ }
    if (!r.ok) throw new Error((data && (data.detail || data.error)) || ("HTTP " + r.status));
    return data;
  }

  // Relative times ("12 s ago"), kept fresh.
  function ago(ts) {
    if (!ts || ts <= 0) return "never";
    const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function refreshTimes() {
    for (const c of $$(".ago")) c.textContent = ago(Number(c.dataset.ts));
  }

  // The event stream: EventSource reconnects by itself and resumes with
  // Last-Event-ID; a "gap" means events were missed: reload what is shown.
  // It starts after the newest event when the page was read, so a change
  // made while the page loaded is replayed, not lost.
  function follow(query, onEvent) {
    const live = $("#live");
    if (live) live.hidden = false;
    const after = document.body.dataset.eventsAfter;
    if (after) query += "&after=" + encodeURIComponent(after);
    const es = new EventSource("/v1/events?" + query);
    es.onopen = () => { if (live) { live.textContent = "live"; live.className = "live on"; } };
    es.onerror = () => { if (live) { live.textContent = "reconnecting"; live.className = "live"; } };
    es.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.error(e); } };
    es.addEventListener("gap", () => location.reload());
    return es;
  }

  // ---- fleet ----
  function fleetPage() {
    const tbody = $("#fleet tbody");
    const rows = () => $$("tr", tbody);
    const filter = $("#filter");
    const shown = $("#shown");
    function applyFilter() {
      const q = filter.value.trim().toLowerCase();
      let n = 0;
      for (const r of rows()) {
        const hit = !q || r.textContent.toLowerCase().includes(q);
        r.hidden = !hit;
        if (hit) n++;
      }
      shown.textContent = q ? n + " shown" : "";
    }
    filter.addEventListener("input", applyFilter);
    let sortKey = null, asc = true;
    for (const b of $$("th button[data-sort]")) {
      b.addEventListener("click", () => {
        const key = b.dataset.sort;
        asc = sortKey === key ? !asc : true;
        sortKey = key;
        const numeric = !!b.dataset.numeric;
        const val = (r) => key === "name" ? r.dataset.host : r.dataset[key] || "";
        const sorted = rows().sort((a, c) => {
          const x = val(a), y = val(c);
          const d = numeric ? Number(x) - Number(y) : x.localeCompare(y);
          return asc ? d : -d;
        });
        const frag = document.createDocumentFragment();
        sorted.forEach((r) => frag.appendChild(r));
        tbody.appendChild(frag);
        for (const o of $$("th")) o.removeAttribute("aria-sort");
        b.parentElement.setAttribute("aria-sort", asc ? "ascending" : "descending");
      });
    }
    const statusOf = { "host.silent": "unreachable", "host.back": "active", "host.suspect": "suspect",
      "host.burned": "burned", "host.decommissioned": "decommissioned" };
    follow("topic=host", (e) => {
      const r = e.host && tbody.querySelector('tr[data-host="' + CSS.escape(e.host) + '"]');
      if (!r) {
        if (e.kind === "host.enrolled") toast(e.host + " enrolled: reload to list it");
        return;
      }
      const st = statusOf[e.kind];
      if (st) {
        r.dataset.status = st;
        const b = r.cells[1].firstElementChild;
        b.textContent = st;
        b.className = "badge s-" + st;
        if (st === "active") { r.dataset.seen = String(Math.floor(e.at_ms / 1000)); r.cells[2].dataset.ts = r.dataset.seen; }
      }
      if (e.kind === "host.deckies" && Array.isArray(e.data.deckies)) {
        const running = e.data.deckies.filter((d) => d.state === "running").length;
        r.dataset.deckies = String(running);
        r.cells[5].textContent = running + "/" + e.data.deckies.length;
      }
      r.classList.remove("flash"); void r.offsetWidth; r.classList.add("flash");
      refreshTimes();
    });
    refreshTimes();
    setInterval(refreshTimes, 5000);
  }

  // ---- host ----
  function renderDeckies(list) {
    const tbody = $("#deckies tbody");
    const deploys = document.body.dataset.deploys === "true";
    tbody.textContent = "";
    for (const d of list) {
      const tr = el("tr", { "data-decky": d.name });
      tr.appendChild(el("td", {}, d.name));
      const st = el("td");
      st.appendChild(el("span", { class: "badge d-" + (d.state || "unknown") }, d.state || "unknown"));
      tr.appendChild(st);
      tr.appendChild(el("td", {}, String(d.restarts || 0)));
      tr.appendChild(el("td", {}, d.address || ""));
      tr.appendChild(el("td", {}, d.error || ""));
      if (deploys) {
        const td = el("td");
        const b = el("button", { class: "danger", "data-action": "teardown", "data-decky": d.name }, "Tear down");
        td.appendChild(b);
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
    const none = $("#no-deckies");
    if (none) none.hidden = list.length > 0;
  }

  // How many decky lists the stream brought: a reload that one overtook
  // keeps the stream's (newer) list.
  let deckyEvents = 0;

  async function reloadHost(name) {
    const seen = deckyEvents;
    try {
      const h = await fetch("/v1/hosts/" + encodeURIComponent(name), { credentials: "same-origin" }).then((r) => r.json());
      if (h.state_json && seen === deckyEvents) {
        const v = JSON.parse(h.state_json);
        renderDeckies(Array.isArray(v) ? v : (v.deckies || []));
      }
      setStatus(h.status);
    } catch (e) { console.error(e); }
  }

  function setStatus(st) {
    const s = $("#status");
    if (s && st) { s.textContent = st; s.className = "badge s-" + st; }
  }

  // The host's release slots, as its updater reports them.
  async function loadReleases(name) {
    const box = $("#releases");
    if (!box) return;
    let v;
    try {
      v = await fetch("/v1/hosts/" + encodeURIComponent(name) + "/releases", { credentials: "same-origin" }).then((r) => r.json());
    } catch (e) { box.textContent = "releases unavailable: " + e.message; return; }
    box.textContent = "";
    if (!Array.isArray(v.releases) || v.error) {
      box.appendChild(el("p", { class: "muted" }, "releases unavailable: " + (v.error || v.detail || "no updater")));
      return;
    }
    const t = el("table", { class: "grid", id: "release-slots" });
    const head = el("tr");
    for (const h of ["", "Slot", "Release", "SHA-256", "Installed"]) head.appendChild(el("th", { scope: "col" }, h));
    t.appendChild(el("thead")).appendChild(head);
    const body = t.appendChild(el("tbody"));
    v.releases.forEach((r, i) => {
      const tr = el("tr", { "data-sha256": r.sha256 || "" });
      for (const c of [i === 0 ? "active" : "previous", r.slot, r.sha, (r.sha256 || "").slice(0, 16),
        r.installed_at ? fmt(r.installed_at * 1000) : ""]) tr.appendChild(el("td", {}, c == null ? "" : String(c)));
      body.appendChild(tr);
    });
    box.appendChild(t);
  }

  // Releases pushed by recent rollouts (their jobs hold the signed
  // manifests; the master keeps their tarballs a day): one may be pushed
  // to this host again, through the same POST /v1/update as the CLI.
  async function offerUpdates(name) {
    const form = $("#update");
    if (!form) return;
    const select = $("#release");
    let jobs = [];
    try { jobs = await fetch("/v1/jobs", { credentials: "same-origin" }).then((r) => r.json()); } catch (_) { return; }
    const seen = new Set();
    const requests = [];
    for (const j of jobs.filter((j) => j.kind === "update").slice(0, 10)) {
      try {
        const full = await fetch("/v1/jobs/" + encodeURIComponent(j.id), { credentials: "same-origin" }).then((r) => r.json());
        const req = JSON.parse(full.request);
        if (!req.sha256 || !req.manifests_json || seen.has(req.sha256)) continue;
        seen.add(req.sha256);
        requests.push(req);
        const label = (req.version || req.label || "release") + " · " + req.sha256.slice(0, 12) + " · " + fmt(j.created_at * 1000);
        select.appendChild(el("option", { value: String(requests.length - 1) }, label));
      } catch (_) { /* a job without a readable request */ }
    }
    if (!requests.length) return;
    form.hidden = false;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const was = requests[Number(select.value)];
      const plan = was.plan || {};
      const req = {
        sha256: was.sha256, label: was.label || "", version: was.version || "",
        manifests_json: was.manifests_json, hosts: [name], all: false, max_parallel: 1, canary: 0,
        include_self: !!plan.include_self, continue_on_error: false,
        // Pushing an earlier rollout's release again is meant, older or not.
        allow_downgrade: true,
      };
      if (!confirm("Push release " + req.sha256.slice(0, 12) + " to " + name + "? Its agent restarts; a release that fails its probe is reverted.")) return;
      try {
        const job = await api("POST", "/v1/update", req);
        toast("update started: job " + job.id);
      } catch (e) { toast("update refused: " + e.message, true); }
    });
  }

  function hostPage() {
    const name = $("#host").dataset.host;
    loadReleases(name);
    offerUpdates(name);
    const tail = $("#tail");
    const statusOf = { "host.silent": "unreachable", "host.back": "active", "host.suspect": "suspect",
      "host.burned": "burned", "host.decommissioned": "decommissioned" };
    follow("topic=host,log,job&host=" + encodeURIComponent(name), (e) => {
      if (e.topic === "log") {
        const li = el("li");
        li.appendChild(el("span", { class: "cn" }, e.data.peer_cn || e.host));
        li.appendChild(document.createTextNode(" "));
        if (e.data.claimed_hostname) {
          li.appendChild(el("span", { class: "decky" }, e.data.claimed_hostname));
          li.appendChild(document.createTextNode(" "));
        }
        if (e.data.app_name) li.appendChild(document.createTextNode(e.data.app_name + ": "));
        li.appendChild(document.createTextNode(e.data.msg || ""));
        tail.insertBefore(li, tail.firstChild);
        while (tail.children.length > 500) tail.removeChild(tail.lastChild);
        return;
      }
      if (e.kind === "host.deckies" && Array.isArray(e.data.deckies)) {
        deckyEvents += 1;
        renderDeckies(e.data.deckies);
      }
      if (statusOf[e.kind]) setStatus(statusOf[e.kind]);
      if (e.kind === "decky.forbidden") {
        const who = (e.data.deckies || []).map((d) => d.decky).join(", ");
        toast(e.data.new + " forbidden connection attempt(s) from " + who, true);
      }
      if (e.kind === "job.host") {
        toast("job " + e.data.job + ": " + e.data.state + " — " + e.data.detail, e.data.state !== "ok");
        reloadHost(name);
        loadReleases(name);
      }
    });
    document.addEventListener("click", async (ev) => {
      const b = ev.target.closest("button[data-action]");
      if (!b) return;
      if (b.dataset.action === "teardown") {
        const decky = b.dataset.decky;
        if (!confirm("Tear down decky " + decky + " on " + name + "? Its evidence is kept when the agent keeps evidence.")) return;
        b.disabled = true;
        try {
          const r = await api("POST", "/v1/hosts/" + encodeURIComponent(name) + "/teardown", { decky });
          toast("torn down: " + (r.deckies.join(", ") || "nothing"));
          reloadHost(name);
        } catch (e) { toast("teardown refused: " + e.message, true); b.disabled = false; }
      } else if (b.dataset.action === "rollback") {
        if (!confirm("Roll " + name + " back to its previous release? Its agent restarts.")) return;
        b.disabled = true;
        try {
          const r = await api("POST", "/v1/hosts/" + encodeURIComponent(name) + "/rollback");
          toast("rolled back: " + JSON.stringify(r));
        } catch (e) { toast("rollback refused: " + e.message, true); }
        b.disabled = false;
      }
    });
    const form = $("#deploy");
    if (form) {
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const text = $("#config").value;
        try { JSON.parse(text); } catch (e) { toast("the config is not JSON: " + e.message, true); return; }
        if (!confirm("Deploy this config to " + name + "?")) return;
        try {
          const job = await api("POST", "/v1/deploy", {
            config_json: text, config_name: "console", hosts: [name], wait: true, parallel: 1,
          });
          toast("deploy started: job " + job.id);
        } catch (e) { toast("deploy refused: " + e.message, true); }
      });
    }
    refreshTimes();
    setInterval(refreshTimes, 5000);
  }

  // ---- a job: its progress lines, long-polled ----
  async function jobPage() {
    const state = $("#job-state");
    const id = state.dataset.job;
    const lines = $("#lines");
    let after = Number(lines.dataset.after || 0);
    let st = state.dataset.state;
    $("#live").hidden = false;
    $("#live").textContent = st === "running" ? "live" : "ended";
    $("#live").className = "live on";
    while (st === "running") {
      try {
        const r = await fetch("/v1/jobs/" + encodeURIComponent(id) + "/events?after=" + after + "&wait_ms=15000",
          { credentials: "same-origin" }).then((x) => x.json());
        for (const e of r.events) { lines.appendChild(el("li", {}, e.line)); after = e.seq; }
        st = r.state;
      } catch (e) { await new Promise((ok) => setTimeout(ok, 3000)); }
    }
    state.textContent = st; state.className = "badge j-" + st;
    try {
      const j = await fetch("/v1/jobs/" + encodeURIComponent(id), { credentials: "same-origin" }).then((x) => x.json());
      const tbody = $("#job-hosts tbody");
      tbody.textContent = "";
      for (const h of j.hosts) {
        const tr = el("tr");
        const a = el("td"); a.appendChild(el("a", { href: "/hosts/" + encodeURIComponent(h.host) }, h.host)); tr.appendChild(a);
        const s = el("td"); s.appendChild(el("span", { class: "badge j-" + h.state }, h.state)); tr.appendChild(s);
        tr.appendChild(el("td", {}, h.detail));
        tbody.appendChild(tr);
      }
    } catch (e) { console.error(e); }
  }

  // ---- audit and alerts: new rows on top ----
  function prependRow(tbody, cells) {
    const tr = el("tr", { class: "flash" });
    for (const c of cells) tr.appendChild(el("td", {}, c == null ? "" : String(c)));
    tbody.insertBefore(tr, tbody.firstChild);
  }
  const fmt = (ms) => new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");

  function auditPage() {
    const t = $("#audit");
    if (t.dataset.live !== "true") return;
    follow("topic=audit", (e) => {
      const a = e.data;
      prependRow($("tbody", t), [fmt(a.at * 1000), a.actor, a.action, a.target, a.outcome, a.source, a.detail]);
    });
  }

  function alertsPage() {
    follow("topic=alert", (e) => {
      const d = e.data;
      prependRow($("#deliveries tbody"), [fmt(e.at_ms), d.alert, d.event_kind, e.host, e.kind.replace("alert.", ""), d.attempts, d.detail]);
    });
  }

  const pages = { fleet: fleetPage, host: hostPage, job: jobPage, audit: auditPage, alerts: alertsPage };
  if (pages[page]) pages[page]();
})();
