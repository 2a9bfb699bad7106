// The hgad-edge console: one page, four views, the agent's JSON API, live updates by server-sent events.
// Plain JavaScript and SVG: nothing to build, nothing loaded from the network.
"use strict";

const S = { session: null, cameras: [], latestAlert: null, timers: [], events: null };
const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const num = (v, d = 4) => (v === null || v === undefined ? "-" : Number(v).toFixed(d));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "-");
const mayAct = () => S.session && S.session.role === "operator";

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  if (r.status === 401) { showLogin(); throw new Error("log in first"); }
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
  return r.json();
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": S.session.csrf },
    body: JSON.stringify(body || {}),
  });
  const out = await r.json().catch(() => ({ ok: false, error: r.statusText }));
  notice(out.ok ? "done" : out.error, !out.ok);
  return out;
}

function notice(text, error = false) {
  const n = $("#notice");
  n.textContent = text; n.className = error ? "error" : ""; n.hidden = false;
  clearTimeout(notice.t); notice.t = setTimeout(() => { n.hidden = true; }, error ? 8000 : 2500);
}

function every(ms, fn) { fn(); S.timers.push(setInterval(fn, ms)); }
function clearTimers() { S.timers.forEach(clearInterval); S.timers = []; }

// ---------------------------------------------------------------------------------------------- charts

function lineChart(svg, points, threshold, xLabel) {
  const w = svg.clientWidth || 400, h = svg.clientHeight || 120, pad = 24;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  if (!points.length) { svg.innerHTML = `<text x="${pad}" y="${h / 2}">no frames yet</text>`; return; }
  // Scores of a gross defect run to thousands: the axis stops at 4x the threshold so that the normal range and
  // the threshold stay readable; points above it sit on the top edge.
  const cap = Math.abs(threshold) * 4 || Infinity;
  points = points.map((p) => [p[0], Math.min(p[1], cap)]);
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]).concat([threshold]);
  const lo = Math.min(...ys), hi = Math.max(...ys), margin = (hi - lo) * 0.15 || Math.abs(hi) * 0.1 || 1;
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || x0 + 1, y0 = Math.max(0, lo - margin), y1 = hi + margin;
  const X = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (w - 2 * pad), Y = (y) => h - pad - ((y - y0) / (y1 - y0)) * (h - 2 * pad);
  const path = points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
  svg.innerHTML = `<line class="threshold" x1="${pad}" x2="${w - pad}" y1="${Y(threshold)}" y2="${Y(threshold)}"/>
    <path class="series" d="${path}"/>
    <text x="${w - pad}" y="${Y(threshold) - 3}" text-anchor="end">threshold ${num(threshold)}</text>
    <text x="${pad}" y="${h - 6}">${esc(xLabel)}</text><text x="${pad}" y="12">${num(y1, 3)}</text>
    <text x="${pad}" y="${h - pad + 10}">${num(y0, 3)}</text>`;
}

function histogram(svg, hist, threshold) {
  const w = svg.clientWidth || 400, h = svg.clientHeight || 120, pad = 24;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  if (!hist) { svg.innerHTML = ""; return; }
  const e = hist.edges, c = hist.counts, lo = Math.min(e[0], threshold), hi = Math.max(e[e.length - 1], threshold) * 1.02;
  const X = (x) => pad + ((x - lo) / (hi - lo || 1)) * (w - 2 * pad), top = Math.max(...c) || 1;
  const bars = c.map((n, i) => `<rect class="bar" x="${X(e[i])}" width="${Math.max(1, X(e[i + 1]) - X(e[i]) - 1)}"
      y="${h - pad - (n / top) * (h - 2 * pad)}" height="${(n / top) * (h - 2 * pad)}"><title>${n}</title></rect>`).join("");
  svg.innerHTML = `${bars}<line class="threshold" x1="${X(threshold)}" x2="${X(threshold)}" y1="${pad / 2}" y2="${h - pad}"/>
    <text x="${X(threshold) + 3}" y="${pad}">threshold ${num(threshold)}</text>
    <text x="${pad}" y="${h - 6}">normal scores of the calibration (${c.reduce((a, b) => a + b, 0)} images)</text>`;
}

// ---------------------------------------------------------------------------------------------- cameras

function cameraCard(c) {
  const lines = [...new Set(S.lines || [])];
  return `<section class="card camera" data-name="${esc(c.name)}">
    <header><h2>${esc(c.name)}</h2><span class="status ${esc(c.camera)}" data-f="camera">${esc(c.camera)}</span></header>
    <div class="frame"><img alt="latest frame of ${esc(c.name)}" data-live="${esc(c.name)}"><span class="empty" hidden>no frame yet</span></div>
    <label><input type="checkbox" class="heat" checked> heatmap overlay</label>
    <dl class="facts">
      <dt>line</dt><dd data-f="line">${esc(c.line)}</dd>
      <dt>profile</dt><dd data-f="profile">v${esc(c.profile_version)} (${esc(c.calibration_id.slice(0, 8))}, ${esc(c.mode)})</dd>
      <dt>score / threshold</dt><dd data-f="score">${num(c.last_score)} / ${num(c.threshold)}</dd>
      <dt>p-value</dt><dd data-f="p">${num(c.p_value)}</dd>
      <dt>alert</dt><dd data-f="alert">${c.alert_open ? '<span class="alarm">open</span>' : "none"}</dd>
      <dt>frames judged</dt><dd data-f="frames">${esc(c.frames)}</dd>
      <dt>calibration</dt><dd data-f="calibrate">${calibrateText(c.calibrate)}</dd>
    </dl>
    <svg class="chart" data-scores="${esc(c.name)}"></svg>
    ${mayAct() ? `<div class="controls">
      <select class="line-choice">${lines.map((l) => `<option ${l === c.line ? "selected" : ""}>${esc(l)}</option>`).join("")}</select>
      <button class="switch">switch line</button>
      <span class="muted">recalibrate from the next</span><input type="number" class="frames" value="200" min="20" max="5000">
      <span class="muted">frames, far</span><input type="number" class="far" value="0.01" step="0.005" min="0.0001" max="0.5">
      <label><input type="checkbox" class="fa"> with kept false alarms</label>
      <button class="calibrate primary">recalibrate</button></div>` : ""}
  </section>`;
}

function calibrateText(k) {
  if (!k || k.state === "idle") return "idle";
  const what = k.state === "collecting" ? `collecting ${k.collected}/${k.frames}` : k.state;
  return `${esc(what)} (${esc(k.line)})${k.error ? ` <span class="alarm">${esc(k.error)}</span>` : ""}${k.warning ? ` <span class="muted">${esc(k.warning)}</span>` : ""}`;
}

function updateCards() {
  for (const c of S.cameras) {
    const card = $(`section.camera[data-name="${CSS.escape(c.name)}"]`);
    if (!card) continue;
    const set = (f, html) => { const el = $(`[data-f="${f}"]`, card); if (el) el.innerHTML = html; };
    const status = $('[data-f="camera"]', card); status.textContent = c.camera; status.className = `status ${c.camera}`;
    set("line", esc(c.line));
    set("profile", `v${esc(c.profile_version)} (${esc(c.calibration_id.slice(0, 8))}, ${esc(c.mode)})`);
    set("score", `${num(c.last_score)} / ${num(c.threshold)}`);
    set("p", num(c.p_value));
    set("alert", c.alert_open ? '<span class="alarm">open</span>' : "none");
    set("frames", esc(c.frames));
    set("calibrate", calibrateText(c.calibrate));
  }
}

async function viewCameras(main) {
  S.cameras = await api("/api/cameras");
  S.lines = (await api("/api/profiles")).map((p) => p.line);
  main.innerHTML = `<h1>Cameras</h1><div class="grid">${S.cameras.map(cameraCard).join("")}</div>`;
  for (const card of main.querySelectorAll("section.camera")) {
    const name = card.dataset.name;
    $(".switch", card)?.addEventListener("click", () => post(`/api/cameras/${encodeURIComponent(name)}/line`, { line: $(".line-choice", card).value }));
    $(".calibrate", card)?.addEventListener("click", () => post(`/api/cameras/${encodeURIComponent(name)}/calibrate`, {
      frames: Number($(".frames", card).value), far: Number($(".far", card).value), include_false_alarms: $(".fa", card).checked,
    }));
  }
  const period = 1000 / (S.session.live_fps || 2);
  every(period, () => {
    for (const img of main.querySelectorAll("img[data-live]")) {
      if (img.dataset.loading) continue;  // one request in flight per camera: a slow link never piles up
      const heat = $(".heat", img.closest("section")).checked ? 1 : 0;
      img.dataset.loading = "1";
      img.onload = () => { delete img.dataset.loading; img.nextElementSibling.hidden = true; };
      img.onerror = () => { delete img.dataset.loading; img.nextElementSibling.hidden = false; };
      img.src = `/api/cameras/${encodeURIComponent(img.dataset.live)}/frame.jpg?heatmap=${heat}&t=${Date.now()}`;
    }
  });
  every(2000, async () => {
    for (const svg of main.querySelectorAll("svg[data-scores]")) {
      const s = await api(`/api/cameras/${encodeURIComponent(svg.dataset.scores)}/scores?seconds=300`);
      const t0 = s.points.length ? s.points[s.points.length - 1][0] : 0;
      lineChart(svg, s.points.map((p) => [p[0] - t0, p[1]]), s.threshold, "score, last 5 minutes");
    }
  });
}

// ---------------------------------------------------------------------------------------------- alerts

async function viewAlerts(main) {
  const q = new URLSearchParams(location.hash.split("?")[1] || "");
  const cams = S.cameras.length ? S.cameras : await api("/api/cameras");
  const lines = (await api("/api/profiles")).map((p) => p.line);
  const opt = (list, cur) => `<option value="">all</option>${list.map((v) => `<option ${v === cur ? "selected" : ""}>${esc(v)}</option>`).join("")}`;
  main.innerHTML = `<h1>Alerts</h1>
    <form class="filters">
      <label>camera<select name="camera">${opt(cams.map((c) => c.name), q.get("camera"))}</select></label>
      <label>line<select name="line">${opt(lines, q.get("line"))}</select></label>
      <label>type<select name="type">${opt(["new", "update", "end"], q.get("type"))}</select></label>
      <label>from<input type="datetime-local" name="since" value="${esc(q.get("since") || "")}"></label>
      <label>to<input type="datetime-local" name="until" value="${esc(q.get("until") || "")}"></label>
      <button class="primary">filter</button>
    </form><div id="alert-list"><p class="muted">Loading&hellip;</p></div>`;
  $("form.filters", main).addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new URLSearchParams([...new FormData(ev.target)].filter(([, v]) => v));
    location.hash = `#/alerts?${f}`;
  });
  await renderAlerts(q);
}

async function renderAlerts(q) {
  const params = new URLSearchParams({ limit: "100" });
  for (const k of ["camera", "line", "type"]) if (q.get(k)) params.set(k, q.get(k));
  for (const k of ["since", "until"]) if (q.get(k)) params.set(k, String(new Date(q.get(k)).getTime() / 1000));
  const alerts = await api(`/api/alerts?${params}`);
  const list = $("#alert-list");
  if (!list) return;
  if (!alerts.length) { list.innerHTML = `<p class="muted">No alert matches.</p>`; return; }
  let body = $("tbody", list);
  if (!body) {
    list.innerHTML = `<table><thead><tr><th></th><th>started</th><th>camera</th><th>line</th><th>type</th>
      <th>score / threshold</th><th>p-value</th><th>regions</th><th>verdict</th></tr></thead><tbody></tbody></table>`;
    body = $("tbody", list);
    // One listener for the table: rows come and go with live updates, a click still finds its row.
    body.addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-id]");
      if (tr) location.hash = `#/alerts/${tr.dataset.id}`;
    });
  }
  // Rows are kept by event id and updated in place: a live refresh does not reload thumbnails
  // or replace the row a person is about to click.
  const old = new Map([...body.querySelectorAll("tr[data-id]")].map((tr) => [tr.dataset.id, tr]));
  alerts.forEach((a, i) => {
    let tr = old.get(a.event_id);
    old.delete(a.event_id);
    if (!tr) {
      tr = document.createElement("tr");
      tr.className = "clickable";
      tr.dataset.id = a.event_id;
      tr.innerHTML = `<td><img class="thumb" loading="lazy" alt="" src="/api/alerts/${esc(a.event_id)}/heatmap.jpg"></td>
        <td></td><td></td><td></td><td></td><td></td><td></td><td></td><td></td>`;
    }
    const cells = tr.children;
    const text = [when(a.started || a.ts), a.camera, a.line, a.type, `${num(a.peak_score ?? a.score)} / ${num(a.threshold)}`,
      num(a.p_value), String((a.regions || []).length)];
    text.forEach((t, k) => { if (cells[k + 1].textContent !== t) cells[k + 1].textContent = t; });
    const verdict = a.feedback ? `<span class="tag ${esc(a.feedback)}">${esc(a.feedback.replace("_", " "))}</span>` : "";
    if (cells[8].innerHTML !== verdict) cells[8].innerHTML = verdict;
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  for (const tr of old.values()) tr.remove();
}

async function viewAlert(main, id) {
  const a = await api(`/api/alerts/${encodeURIComponent(id)}`);
  const regions = (a.regions || []).map((r) => `<tr><td>${r.x}, ${r.y}</td><td>${r.w} x ${r.h}</td><td>${num(r.peak)}</td></tr>`).join("");
  main.innerHTML = `<h1>Alert ${esc(a.event_id.slice(0, 8))} <span class="muted">${esc(a.camera)} / ${esc(a.line)}</span></h1>
    <div class="detail"><div>
      ${a.has_heatmap ? `<img alt="heatmap" src="/api/alerts/${esc(a.event_id)}/heatmap.jpg">` : '<p class="muted">no heatmap</p>'}
      <h2>Score over the event</h2><svg class="chart" id="event-scores"></svg>
    </div><div class="card">
      <dl class="facts">
        <dt>status</dt><dd>${esc(a.status)} (${esc(a.type)})</dd><dt>started</dt><dd>${when(a.started || a.ts)}</dd>
        <dt>peak score</dt><dd>${num(a.peak_score ?? a.score)}</dd><dt>threshold</dt><dd>${num(a.threshold)}</dd>
        <dt>p-value</dt><dd>${num(a.p_value)}</dd><dt>frames</dt><dd>${esc(a.first_frame_index)}-${esc(a.last_frame_index)} (${esc(a.anomalous_frames)} anomalous)</dd>
        <dt>model / profile</dt><dd>${esc(a.model_id)} / ${esc((a.calibration_id || "").slice(0, 8))}</dd>
        <dt>verdict</dt><dd id="verdict">${a.feedback ? `<span class="tag ${esc(a.feedback)}">${esc(a.feedback.replace("_", " "))}</span>` : "none yet"}</dd>
      </dl>
      <table><thead><tr><th>region at</th><th>size</th><th>peak</th></tr></thead><tbody>${regions}</tbody></table>
      ${mayAct() ? `<div class="controls"><button class="danger" data-label="defect">defect</button>
        <button class="primary" data-label="false_alarm">false alarm</button></div>` : ""}
      ${a.has_frame ? `<p><a href="/api/alerts/${esc(a.event_id)}/frame.jpg" target="_blank">the frame without overlay</a></p>` : ""}
    </div></div>`;
  lineChart($("#event-scores"), a.scores || [], a.threshold, "score by frame index");
  for (const b of main.querySelectorAll("button[data-label]")) {
    b.addEventListener("click", async () => {
      const out = await post(`/api/alerts/${encodeURIComponent(id)}/feedback`, { label: b.dataset.label });
      if (out.ok) $("#verdict").innerHTML = `<span class="tag ${esc(b.dataset.label)}">${esc(b.dataset.label.replace("_", " "))}</span>`;
    });
  }
}

// ---------------------------------------------------------------------------------------------- lines

async function viewLines(main) {
  const lines = await api("/api/profiles");
  main.innerHTML = `<h1>Lines and profiles</h1>${lines.map((l) => `<section class="card line" data-line="${esc(l.line)}">
    <header><h2>${esc(l.line)}</h2><span class="muted">cameras: ${esc(l.cameras.join(", ") || "none")}</span></header>
    ${l.active ? `<dl class="facts"><dt>active</dt><dd>v${l.active.version}, ${when(l.active.created)}</dd>
      <dt>threshold</dt><dd>${num(l.active.threshold)} for far ${esc(l.active.far)} (realised &le; ${num(l.active.far_bound)} at 90 %)</dd>
      <dt>images</dt><dd>${esc(l.active.n)}, ${esc(l.active.method_detail)}</dd></dl>
      <svg class="chart" data-hist="${esc(l.line)}"></svg>` : '<p class="muted">no active profile</p>'}
    <table><thead><tr><th>version</th><th>created</th><th>n</th><th>far</th><th>bound (90 %)</th><th>method</th><th>model</th><th></th></tr></thead><tbody>
    ${l.history.map((p) => `<tr><td>v${p.version}</td><td>${when(p.created)}</td><td>${p.n}</td><td>${p.far}</td><td>${num(p.far_bound)}</td>
      <td>${esc(p.method)}</td><td>${esc(p.model_id)}</td><td>${p.active ? '<span class="tag">active</span>'
      : mayAct() ? `<button class="activate" data-id="${esc(p.calibration_id)}">activate</button>` : ""}</td></tr>`).join("")}
    </tbody></table></section>`).join("") || '<p class="muted">No profile yet: calibrate a line.</p>'}`;
  for (const l of lines) if (l.active) histogram($(`svg[data-hist="${CSS.escape(l.line)}"]`), l.histogram, l.active.threshold);
  for (const b of main.querySelectorAll("button.activate")) {
    b.addEventListener("click", async () => { const out = await post("/api/profiles/activate", { calibration_id: b.dataset.id }); if (out.ok) viewLines(main); });
  }
}

// ---------------------------------------------------------------------------------------------- health

async function viewHealth(main) {
  main.innerHTML = `<h1>Health</h1><div id="health"></div>`;
  every(2000, async () => {
    const h = await api("/api/health");
    const b = h.broker || {}, d = h.disk || {};
    const cams = Object.entries(h.cameras || {}).map(([name, c]) => `<tr><td>${esc(name)}</td><td>${esc(c.line)}</td>
      <td>${c.up ? "up" : "down"}</td><td>${num(c.fps_in, 1)}</td><td>${num(c.fps_processed, 1)}</td><td>${esc(c.skipped)}</td>
      <td>${esc(c.corrupt)}</td><td>${num(c.latency_ms.p50, 0)} / ${num(c.latency_ms.p99, 0)}</td>
      <td>${h.drift[name] ? (h.drift[name].drifting ? '<span class="alarm">drifting</span>' : "stable") : "-"}</td></tr>`).join("");
    const el = $("#health");
    if (!el) return;
    el.innerHTML = `<div class="grid"><section class="card"><dl class="facts">
      <dt>device</dt><dd>${esc(h.device)}</dd><dt>uptime</dt><dd>${num(h.uptime_s / 3600, 2)} h</dd>
      <dt>model</dt><dd>${esc(h.model_id)}</dd><dt>backend</dt><dd>${esc(h.backend.name)} on ${esc(h.backend.device)} (${esc(h.backend.precision)})</dd>
      <dt>why</dt><dd>${esc(h.backend.reason)}</dd>
      <dt>broker</dt><dd>${b.connected ? "connected" : `<span class="alarm">unreachable</span> ${esc(b.error || "")}`} (${esc(b.address)})</dd>
      <dt>outbox</dt><dd>${esc(h.outbox_depth)} alert message(s) waiting</dd>
      <dt>disk</dt><dd>${num(d.free_mb, 0)} MB free, database ${num(d.db_mb, 1)} MB${d.full ? ' <span class="alarm">full</span>' : ""}</dd>
      <dt>stages (ms)</dt><dd>${Object.entries(h.stages_ms || {}).map(([k, v]) => `${esc(k)} ${num(v, 1)}`).join(", ")}</dd>
      </dl></section></div>
      <h2 style="margin-top:1rem">Cameras</h2><table><thead><tr><th>camera</th><th>line</th><th>state</th><th>frames/s in</th>
      <th>judged/s</th><th>skipped</th><th>corrupt</th><th>latency p50/p99 ms</th><th>drift</th></tr></thead><tbody>${cams}</tbody></table>`;
  });
}

// ---------------------------------------------------------------------------------------------- shell

function showLogin() {
  clearTimers();
  $("#view").innerHTML = `<section class="card login"><h1>Log in</h1><form>
    <label>role <select name="role"><option>operator</option><option>viewer</option></select></label>
    <label>password <input type="password" name="password" autocomplete="current-password" required></label>
    <button class="primary">log in</button></form></section>`;
  $(".login form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const r = await fetch("/api/login", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ role: f.get("role"), password: f.get("password") }) });
    if (r.ok) { await start(); } else { notice("wrong role or password", true); }
  });
}

async function route() {
  clearTimers();
  const [path] = location.hash.replace(/^#\/?/, "").split("?");
  const [view, id] = path.split("/");
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.view === (view || "cameras"));
  const main = $("#view");
  try {
    if (view === "alerts" && id) await viewAlert(main, id);
    else if (view === "alerts") await viewAlerts(main);
    else if (view === "lines") await viewLines(main);
    else if (view === "health") await viewHealth(main);
    else await viewCameras(main);
  } catch (e) { if (S.session && S.session.role) main.innerHTML = `<p class="alarm">${esc(e.message)}</p>`; }
}

function listen() {
  if (S.events) S.events.close();
  S.events = new EventSource("/api/events");
  S.events.addEventListener("update", (ev) => {
    const u = JSON.parse(ev.data);
    S.cameras = u.cameras;
    const b = $("#broker");
    b.textContent = u.broker && u.broker.connected ? "broker connected" : "broker unreachable";
    b.className = `pill ${u.broker && u.broker.connected ? "ok" : "bad"}`;
    updateCards();
    if (u.latest_alert !== S.latestAlert) {
      const first = S.latestAlert === null;
      S.latestAlert = u.latest_alert;
      if (!first && location.hash.startsWith("#/alerts") && !location.hash.split("?")[0].split("/")[2]) {
        renderAlerts(new URLSearchParams(location.hash.split("?")[1] || ""));
      }
    }
  });
}

async function start() {
  S.session = await (await fetch("/api/session", { credentials: "same-origin" })).json();
  $("#who").textContent = S.session.role ? S.session.role : "not logged in";
  $("#logout").hidden = !(S.session.login_required && S.session.role);
  if (!S.session.role) { showLogin(); return; }
  listen();
  await route();
}

$("#logout").addEventListener("click", async () => { await fetch("/api/logout", { method: "POST" }); location.reload(); });
window.addEventListener("hashchange", route);
start();
