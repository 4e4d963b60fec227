// corral's dashboard. No framework: the page asks for the state every POLL ms, follows the
// logs as server-sent events, and acts with the control API's POST calls. Everything it shows
// comes from calls that need a session: without one it shows the login form and nothing else.
"use strict";

const POLL = 2000; // ms between two states
const FAST_POLL = 500; // ms while an action waits for its result
const ACTION_PATIENCE = 120; // s an action's result is waited for
const LOG_LINES = 200; // lines a log view starts with
const MAX_LOG_LINES = 500; // lines kept in the page: the oldest go
// The charts' spans (s) and their ticks' step: the last 15 minutes, or less while corral is younger.
const SPANS = [[60, 15], [120, 30], [300, 60], [600, 120], [900, 300]];
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let state = null; // the last state the manager sent
let readOnly = true;
let pollTimer = null;
let activity = []; // actions under way and done, newest first
let actionCount = 0;

// -- small helpers -----------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "cls") node.setAttribute("class", value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function counted(count, noun) {
  return `${count} ${count === 1 ? noun : noun + "s"}`;
}

function setText(node, text) {
  text = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== text) node.textContent = text;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)}s`;
  const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
  if (m < 60) return `${m}m${String(s).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d${h % 24}h`;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function ago(t) {
  if (!t || !state) return "-";
  const d = state.now - t;
  return d >= 0 ? `${duration(d)} ago` : `in ${duration(-d)}`;
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function number(value, digits = 0) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

// -- talking to the manager ---------------------------------------------------------------

class Unauthorized extends Error {}

async function call(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  if (response.status === 401) throw new Unauthorized();
  let body = null;
  try { body = await response.json(); } catch (error) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function post(path, body) {
  return call(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body || {}),
  });
}

let polling = false; // a state is on its way
let pollAgain = false; // ... and another is wanted as soon as it has come

async function poll() {
  if (polling) { pollAgain = true; return; }
  polling = true;
  pollAgain = false;
  clearTimeout(pollTimer);
  try {
    state = await call("/dashboard/state");
    $("connection").classList.remove("lost");
    setText($("connection"), `updated ${clock(state.now)}`);
    showDashboard();
    render();
  } catch (error) {
    if (error instanceof Unauthorized) { polling = false; showLogin(); return; }
    $("connection").classList.add("lost");
    setText($("connection"), `no answer from corral (${error.message})`);
  }
  polling = false;
  const waiting = activity.some((a) => a.status === "pending");
  pollTimer = setTimeout(poll, pollAgain ? 0 : waiting ? FAST_POLL : POLL);
}

// -- login ---------------------------------------------------------------------------------

function showLogin() {
  state = null;
  clearTimeout(pollTimer);
  stopLogs();
  forget();
  $("dashboard").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("reload-all").hidden = true;
  $("role").hidden = true;
  setText($("about"), "");
  setText($("connection"), "");
  if (new URLSearchParams(location.search).get("login") === "expired") {
    const note = $("login-error");
    note.hidden = false;
    setText(note, "That login link has expired or was used already: run corral dashboard again for a new one.");
  }
  $("token").focus();
}

function forget() {
  // Nothing of a session stays in the page once it has ended.
  for (const tbody of document.querySelectorAll("#dashboard tbody")) tbody.replaceChildren();
  for (const id of ["groups", "log", "activity", "chart-rate", "chart-latency", "chart-errors", "run-text"]) $(id).replaceChildren();
  $("groups").dataset.key = "";
  $("log-filter").dataset.key = "";
  $("run-output").hidden = true;
  rows.clear();
  jobRows.clear();
  activity = [];
}

function showDashboard() {
  if (!$("dashboard").hidden) return;
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  if (location.search) history.replaceState(null, "", "/");
  followLogs();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("login-error");
  error.hidden = true;
  try {
    await post("/session", { token: $("token").value });
    $("token").value = "";
    poll();
  } catch (failure) {
    error.hidden = false;
    setText(error, failure instanceof Unauthorized ? "That is not a token of this corral." : failure.message);
  }
});

$("logout").addEventListener("click", async () => {
  try { await post("/logout"); } catch (error) { /* the session ends anyway */ }
  showLogin();
});

// -- rendering -----------------------------------------------------------------------------

function render() {
  readOnly = state.you.read_only;
  const corral = state.corral;
  const what = corral.app || corral.config || corral.project;
  setText($("about"), `${what} · pid ${corral.pid} · up ${duration(state.now - corral.started)} · ` +
    `${counted(corral.reloads, "reload")} · v${corral.version}${corral.stopping ? " · stopping" : ""}`);
  const role = $("role");
  role.hidden = false;
  setText(role, state.you.role);
  role.className = readOnly ? "read-only" : "";
  for (const node of document.querySelectorAll(".admin-only")) node.hidden = readOnly;
  renderGroups();
  renderProcesses();
  renderJobs();
  renderWeb();
  renderLogFilter();
  checkActivity();
}

function renderGroups() {
  const box = $("groups");
  const key = JSON.stringify([readOnly, state.groups.map((g) => [g.name, g.scalable])]);
  if (box.dataset.key !== key) {
    box.dataset.key = key;
    box.replaceChildren(...state.groups.map((group) => groupControls(group)));
  }
  for (const group of state.groups) {
    const node = box.querySelector(`[data-group="${CSS.escape(group.name)}"] .size`);
    if (node) setText(node, group.name === "jobs" ? counted(group.size, "job") : `${group.size} wanted`);
  }
}

function groupControls(group) {
  const box = el("div", { cls: "group", "data-group": group.name },
    el("span", { cls: "name", text: group.name }), el("span", { cls: "size" }));
  if (readOnly) return box;
  box.append(el("button", {
    text: "Reload", title: `Reload ${group.name}: it runs the current code`,
    onclick: () => reloadGroup(group.name),
  }));
  if (group.name !== "jobs") {
    box.append(el("button", { text: "Restart", title: `Restart every process of ${group.name}, one at a time`, onclick: () => restartGroup(group.name) }));
  }
  if (group.scalable) {
    const input = el("input", { type: "number", min: group.name === "web" ? 1 : 0, value: group.size, "aria-label": `${group.name} count`, "data-scale": group.name });
    box.append(input, el("button", { text: "Scale", onclick: () => scaleGroup(group.name, Number(input.value)) }));
  }
  return box;
}

const rows = new Map(); // "name pid" -> that process's table row (two share a name while one replaces the other)

function renderProcesses() {
  const tbody = $("processes").querySelector("tbody");
  const wanted = [];
  let group = null;
  for (const process of state.processes) {
    if (process.group !== group) {
      group = process.group;
      wanted.push(groupRow(group));
    }
    wanted.push(processRow(process));
  }
  const keys = new Set(state.processes.map(rowKey));
  for (const key of [...rows.keys()]) if (!keys.has(key)) rows.delete(key);
  const current = [...tbody.children];
  if (current.length !== wanted.length || current.some((row, i) => row !== wanted[i])) {
    tbody.replaceChildren(...wanted);
  }
  const live = state.processes.filter((p) => p.pid !== null).length;
  setText($("process-count"), `${live} running of ${state.processes.length}`);
}

const groupRows = new Map();
function groupRow(group) {
  if (!groupRows.has(group)) groupRows.set(group, el("tr", { cls: "group-row" }, el("td", { colspan: 12, text: group })));
  return groupRows.get(group);
}

const rowKey = (process) => `${process.name} ${process.pid}`;

function processRow(process) {
  let row = rows.get(rowKey(process));
  if (!row || row.dataset.readOnly !== String(readOnly)) {
    const cells = ["name", "pid", "state", "uptime", "restarts", "cause", "cpu", "rss", "spark", "requests", "inflight", "actions"]
      .map((name) => el("td", { "data-col": name, cls: ["cpu", "rss", "requests", "inflight", "restarts"].includes(name) ? "num" : null }));
    row = el("tr", { "data-process": process.name, "data-read-only": String(readOnly) }, ...cells);
    rows.set(rowKey(process), row);
    const actions = cells[11];
    if (!readOnly && process.kind !== "zygote" && process.kind !== "manager") {
      actions.append(el("button", { text: "Restart", title: `Restart ${process.name}`, onclick: () => restartProcess(process.name) }));
    }
  }
  const cell = (name) => row.querySelector(`[data-col="${name}"]`);
  setText(cell("name"), process.name);
  setText(cell("pid"), process.pid ?? "-");
  const stateCell = cell("state");
  if (stateCell.dataset.value !== process.state) {
    stateCell.dataset.value = process.state;
    stateCell.replaceChildren(el("span", { cls: `state state-${process.state}`, text: process.state }));
  }
  setText(cell("uptime"), process.started ? duration(state.now - process.started) : "-");
  setText(cell("restarts"), process.restarts);
  const cause = [process.last_cause, process.last_exit && process.last_exit !== process.last_cause ? `(${process.last_exit})` : null]
    .filter(Boolean).join(" ");
  setText(cell("cause"), cause || "-");
  cell("cause").className = "cause";
  setText(cell("cpu"), number(process.cpu_percent, 1));
  setText(cell("rss"), bytes(process.rss));
  sparkline(cell("spark"), process.rss_series);
  setText(cell("requests"), process.requests ?? "-");
  setText(cell("inflight"), process.in_flight ?? "-");
  return row;
}

function sparkline(cell, values) {
  const key = values.length ? `${values.length}:${values[values.length - 1]}` : "";
  if (cell.dataset.key === key) return;
  cell.dataset.key = key;
  if (values.length < 2) { cell.replaceChildren(); return; }
  const w = 80, h = 20, max = Math.max(...values), min = Math.min(...values);
  const span = Math.max(max - min, max * 0.05, 1); // a change of a few pages is no slope
  const points = values.map((v, i) => `${(i / (values.length - 1)) * w},${h - 1 - ((v - min) / span) * (h - 2)}`).join(" ");
  cell.replaceChildren(el("svg:svg", { cls: "spark", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none" },
    el("svg:title", { text: `memory, last ${counted(values.length, "sample")}: ${bytes(min)} to ${bytes(max)}` }),
    el("svg:polyline", { points })));
}

function resultClass(result) {
  if (!result) return "running";
  if (result === "ok") return "ok";
  if (result.startsWith("skipped") || result.startsWith("missed")) return "skipped";
  return "failed";
}

const jobRows = new Map();

function renderJobs() {
  $("jobs-section").hidden = state.jobs.length === 0;
  const tbody = $("jobs").querySelector("tbody");
  const wanted = [];
  for (const job of state.jobs) {
    const [row, failure] = jobRow(job);
    wanted.push(row);
    if (failure) wanted.push(failure);
  }
  const current = [...tbody.children];
  if (current.length !== wanted.length || current.some((row, i) => row !== wanted[i])) tbody.replaceChildren(...wanted);
}

function jobRow(job) {
  let entry = jobRows.get(job.name);
  if (!entry || entry.readOnly !== readOnly) {
    const cells = ["name", "schedule", "last", "next", "counts", "history", "actions"].map((name) =>
      el("td", { "data-col": name, cls: name === "counts" ? "num" : null }));
    const row = el("tr", { "data-job": job.name }, ...cells);
    if (!readOnly) cells[6].append(el("button", { text: "Run now", onclick: () => runJob(job.name) }));
    const failure = el("tr", { cls: "failure", "data-failure": job.name }, el("td", { colspan: 7, cls: "wrap" }));
    entry = { row, failure, readOnly };
    jobRows.set(job.name, entry);
  }
  const cell = (name) => entry.row.querySelector(`[data-col="${name}"]`);
  setText(cell("name"), job.name);
  setText(cell("schedule"), job.schedule);
  const last = job.last_run;
  const lastCell = cell("last");
  const lastText = job.running ? "running now" : last ? `${last.result}, ${duration(last.duration)}, ${ago(last.started)}` : "not yet";
  setText(lastCell, lastText);
  lastCell.className = last && !job.running ? `result-${resultClass(last.result)}` : "";
  setText(cell("next"), job.next_run ? ago(job.next_run) : "-");
  setText(cell("counts"), `${job.runs} / ${job.failures}`);
  const historyKey = JSON.stringify(job.history.map((r) => [r.number, r.result]));
  const historyCell = cell("history");
  if (historyCell.dataset.key !== historyKey) {
    historyCell.dataset.key = historyKey;
    historyCell.replaceChildren(el("span", { cls: "runs" }, ...job.history.map((run) => el("button", {
      cls: `run ${resultClass(run.result)}`, "data-run": run.number,
      title: `#${run.number} (${run.trigger}) ${clock(run.started)}: ${run.result || "running"}${run.duration !== null ? `, ${duration(run.duration)}` : ""}`,
      onclick: () => showRun(job.name, run.number),
    }))));
  }
  let failure = null;
  if (job.last_failure) {
    failure = entry.failure;
    const f = job.last_failure;
    const key = `${f.number}:${f.traceback.length}:${f.tail.length}`;
    const td = failure.firstChild;
    if (td.dataset.key !== key) {
      td.dataset.key = key;
      const text = (f.traceback.length ? f.traceback : f.tail).join("\n") || "(it printed nothing)";
      td.replaceChildren(
        el("div", { cls: "result-failed", text: `last failure: run #${f.number} (${f.trigger}), ${clock(f.started)}, ${f.result}` }),
        el("pre", { cls: "traceback", text }));
    }
  }
  return [entry.row, failure];
}

async function showRun(job, number) {
  const box = $("run-output");
  box.hidden = false;
  setText($("run-title"), `${job} #${number}`);
  setText($("run-text"), "…");
  try {
    const run = await call(`/dashboard/run?job=${encodeURIComponent(job)}&number=${number}`);
    setText($("run-title"), `${job} #${number} (${run.trigger}) started ${clock(run.started)}: ` +
      `${run.result || "running"}${run.duration !== null ? `, ${duration(run.duration)}` : ""}` +
      (run.lines_dropped ? ` (its first ${counted(run.lines_dropped, "line")} are not kept)` : ""));
    setText($("run-text"), run.output.join("\n") || "(it printed nothing)");
  } catch (error) {
    setText($("run-text"), error.message);
  }
}

// -- charts --------------------------------------------------------------------------------

function renderWeb() {
  const web = state.web;
  $("web-section").hidden = !web;
  if (!web) return;
  const age = state.now - state.corral.started;
  const [span, step] = SPANS.find(([s]) => s >= age) || SPANS[SPANS.length - 1];
  const shown = span >= 60 ? `${span / 60} minute${span > 60 ? "s" : ""}` : `${span}s`;
  setText($("web-window"), `last ${shown}; each point over ${web.window}s; dashed lines: reloads`);
  const last = (name) => { const v = web[name]; return v.length ? v[v.length - 1] : null; };
  setText($("now-rate"), last("rate") === null ? "" : number(last("rate"), 1));
  setText($("now-p50"), number(last("p50"), 1));
  setText($("now-p99"), number(last("p99"), 1));
  setText($("now-errors"), last("errors") === null ? "" : number(last("errors"), 2));
  const axis = { span, step };
  chart($("chart-rate"), axis, web.t, [{ values: web.rate, cls: "line-rate" }], web.reloads);
  chart($("chart-latency"), axis, web.t, [{ values: web.p50, cls: "line-p50" }, { values: web.p99, cls: "line-p99" }], web.reloads);
  chart($("chart-errors"), axis, web.t, [{ values: web.errors, cls: "line-errors" }], web.reloads);
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function offset(seconds) {
  if (seconds === 0) return "now";
  if (seconds < 60) return `-${seconds}s`;
  return seconds % 60 ? `-${Math.floor(seconds / 60)}m${seconds % 60}s` : `-${seconds / 60}m`;
}

function chart(svg, axis, times, series, reloads) {
  const W = 600, H = 170, left = 44, right = 8, top = 10, bottom = 22;
  const end = state.now, start = end - axis.span;
  const x = (t) => left + ((t - start) / axis.span) * (W - left - right);
  let max = 0;
  for (const s of series) for (let i = 0; i < times.length; i++) if (times[i] >= start && s.values[i] !== null) max = Math.max(max, s.values[i]);
  max = niceMax(max);
  const y = (v) => top + (1 - v / max) * (H - top - bottom);
  const nodes = [];
  for (const fraction of [0, 0.5, 1]) {
    const value = max * fraction;
    nodes.push(el("svg:line", { cls: "axis", x1: left, x2: W - right, y1: y(value), y2: y(value) }));
    nodes.push(el("svg:text", { cls: "tick", x: left - 4, y: y(value) + 4, "text-anchor": "end", text: value >= 100 ? Math.round(value) : +value.toFixed(2) }));
  }
  for (let back = axis.span; back >= 0; back -= axis.step) {
    const anchor = back === axis.span ? "start" : back ? "middle" : "end";
    nodes.push(el("svg:text", { cls: "tick", x: x(end - back), y: H - 6, "text-anchor": anchor, text: offset(back) }));
  }
  for (const reload of reloads) {
    if (reload.t < start) continue;
    const at = x(reload.t);
    nodes.push(el("svg:line", { cls: `marker-${reload.result}`, x1: at, x2: at, y1: top, y2: H - bottom },
      el("svg:title", { text: `reload ${reload.result} at ${clock(reload.t)}` })));
    nodes.push(el("svg:text", { cls: `marker-label-${reload.result}`, x: at + 3, y: top + 9, text: reload.result === "ok" ? "reload" : "reload failed" }));
  }
  let drawn = false;
  for (const s of series) {
    let segment = [];
    const flush = () => {
      if (segment.length > 1) nodes.push(el("svg:polyline", { cls: `series ${s.cls}`, points: segment.join(" ") }));
      else if (segment.length === 1) { const [px, py] = segment[0].split(","); nodes.push(el("svg:circle", { cls: s.cls, cx: px, cy: py, r: 1.5 })); }
      if (segment.length) drawn = true;
      segment = [];
    };
    for (let i = 0; i < times.length; i++) {
      if (times[i] < start || s.values[i] === null) { flush(); continue; }
      segment.push(`${x(times[i]).toFixed(1)},${y(s.values[i]).toFixed(1)}`);
    }
    flush();
  }
  if (!drawn) nodes.push(el("svg:text", { cls: "empty", x: W / 2, y: H / 2, "text-anchor": "middle", text: "no requests yet" }));
  svg.replaceChildren(...nodes);
}

// -- actions: each shows its progress, then its result, from the states that follow ------

function track(what, path, body, check) {
  const entry = { id: ++actionCount, what, started: Date.now(), status: "pending", text: "asking corral…", check: null };
  activity.unshift(entry);
  activity = activity.slice(0, 8);
  renderActivity();
  post(path, body).then((answer) => {
    entry.text = answer.message;
    entry.check = check;
    renderActivity();
    poll();
  }, (error) => {
    entry.status = "failed";
    entry.text = error instanceof Unauthorized ? "not logged in" : error.message;
    renderActivity();
  });
}

function checkActivity() {
  let changed = false;
  for (const entry of activity) {
    if (entry.status !== "pending" || !entry.check) continue;
    const result = entry.check(state);
    if (result) {
      entry.status = result.ok ? "done" : "failed";
      entry.text = result.text;
      changed = true;
    } else if ((Date.now() - entry.started) / 1000 > ACTION_PATIENCE) {
      entry.status = "failed";
      entry.text = `no result after ${ACTION_PATIENCE}s: see the logs`;
      changed = true;
    }
  }
  if (changed || activity.some((a) => a.status === "pending")) renderActivity();
}

function renderActivity() {
  $("activity-section").hidden = activity.length === 0;
  $("activity").replaceChildren(...activity.map((entry) => {
    const waited = Math.round((Date.now() - entry.started) / 1000);
    const status = entry.status === "pending" ? `in progress ${waited}s` : entry.status;
    return el("li", { cls: entry.status, "data-action": entry.id },
      el("span", { cls: "what", text: entry.what }),
      el("span", { cls: "status", text: status }),
      el("span", { cls: "text", text: entry.text }),
      el("span", { cls: "when", text: new Date(entry.started).toLocaleTimeString([], { hour12: false }) }));
  }));
}

const members = (s, group) => s.processes.filter((p) => p.group === group && p.kind !== "zygote");
const serving = (p) => p.pid !== null && (p.state === "ready" || p.state === "running");

function restartProcess(name) {
  const before = state.processes.find((p) => p.name === name);
  const oldPid = before ? before.pid : null;
  track(`restart ${name}`, "/restart", { target: name }, (s) => {
    const now = s.processes.filter((p) => p.name === name);
    const fresh = now.find((p) => serving(p) && p.pid !== oldPid);
    if (fresh && !now.some((p) => p.pid === oldPid)) return { ok: true, text: `${name} was pid ${oldPid}, now pid ${fresh.pid}` };
    return null;
  });
}

function restartGroup(group) {
  const old = new Set(members(state, group).map((p) => p.pid));
  track(`restart ${group}`, "/restart", { target: group }, (s) => groupRenewed(s, group, old));
}

function groupRenewed(s, group, old) {
  const now = members(s, group);
  const size = (s.groups.find((g) => g.name === group) || {}).size;
  const fresh = now.filter((p) => serving(p) && !old.has(p.pid));
  if (now.every((p) => !old.has(p.pid)) && fresh.length === size) return { ok: true, text: `${size} new processes: ${fresh.map((p) => `${p.name} pid ${p.pid}`).join(", ")}` };
  return null;
}

function scaleGroup(group, count) {
  track(`scale ${group} to ${count}`, "/scale", { counts: { [group]: count } }, (s) => {
    const now = members(s, group);
    if (now.filter(serving).length === count && now.every((p) => serving(p) || p.state === "stopped")) return { ok: true, text: `${group} runs ${count}` };
    return null;
  });
}

function reloadGroup(group) {
  if (group === "web") return reloadWeb(`reload web`, { group: "web" });
  if (group === "jobs") return track("reload jobs", "/reload", { group }, () => ({ ok: true, text: "the next runs use the current code" }));
  const old = new Set(members(state, group).map((p) => p.pid));
  track(`reload ${group}`, "/reload", { group }, (s) => groupRenewed(s, group, old));
}

function reloadWeb(what, body) {
  const seen = state.web ? state.web.reloads.length : 0;
  const last = state.web && seen ? state.web.reloads[seen - 1].t : 0;
  track(what, "/reload", body, (s) => {
    if (!s.web) return { ok: true, text: "reloading" };
    const done = s.web.reloads.filter((r) => r.t > last);
    if (!done.length) return null;
    const result = done[done.length - 1].result;
    return { ok: result === "ok", text: result === "ok" ? "reload complete: the workers run the current code" : "reload failed: the old workers keep serving (see the logs)" };
  });
}

function runJob(name) {
  const job = state.jobs.find((j) => j.name === name);
  const lastNumber = job && job.history.length ? job.history[job.history.length - 1].number : 0;
  track(`run ${name} now`, `/jobs/${encodeURIComponent(name)}/run`, {}, (s) => {
    const now = s.jobs.find((j) => j.name === name);
    const run = now && now.history.find((r) => r.number > lastNumber && r.trigger === "run now");
    if (!run || run.result === null) return null;
    return { ok: run.result === "ok", text: `run #${run.number}: ${run.result}, ${duration(run.duration)}` };
  });
}

$("reload-all").addEventListener("click", () => reloadWeb("reload everything", {}));

// -- logs: server-sent events, a bounded number of lines in the page ----------------------

let source = null;
let pending = [];
let paused = false;
let frame = null;
let received = 0;

function followLogs() {
  stopLogs();
  $("log").replaceChildren();
  received = 0;
  const filter = $("log-filter").value;
  const query = new URLSearchParams({ lines: LOG_LINES });
  if (filter) query.set("group", filter);
  source = new EventSource(`/dashboard/logs?${query}`);
  source.onmessage = (event) => {
    const batch = JSON.parse(event.data);
    received += batch.length;
    pending.push(...batch);
    if (pending.length > MAX_LOG_LINES) pending = pending.slice(-MAX_LOG_LINES);
    if (!paused && frame === null) frame = requestAnimationFrame(flushLogs);
  };
  source.onerror = () => setText($("log-note"), "the log stream is reconnecting…");
  source.onopen = () => setText($("log-note"), "");
}

function stopLogs() {
  if (source) source.close();
  source = null;
  pending = [];
}

function flushLogs() {
  frame = null;
  const log = $("log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
  const fragment = document.createDocumentFragment();
  for (const [t, process, line] of pending) {
    fragment.append(el("div", { cls: "line" },
      el("span", { cls: "t", text: clock(t) }),
      el("span", { cls: process === "corral" ? "p corral" : "p", text: process }),
      line));
  }
  pending = [];
  log.append(fragment);
  let extra = log.childElementCount - MAX_LOG_LINES;
  while (extra-- > 0) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
  setText($("log-note"), `${counted(received, "line")} received; the last ${Math.min(log.childElementCount, MAX_LOG_LINES)} shown`);
}

function renderLogFilter() {
  const select = $("log-filter");
  const groups = state.groups.map((g) => g.name).filter((g) => g !== "jobs");
  const options = ["", "corral", ...groups, ...state.jobs.map((j) => j.name), ...state.processes.map((p) => p.name)];
  const unique = [...new Set(options)];
  const key = unique.join("\n");
  if (select.dataset.key === key) return;
  select.dataset.key = key;
  const chosen = select.value;
  select.replaceChildren(...unique.map((name) => el("option", { value: name, text: name || "every process" })));
  select.value = unique.includes(chosen) ? chosen : "";
}

$("log-filter").addEventListener("change", followLogs);
$("log-pause").addEventListener("click", () => {
  paused = !paused;
  setText($("log-pause"), paused ? "Resume" : "Pause");
  if (!paused && frame === null) frame = requestAnimationFrame(flushLogs);
});

poll();
