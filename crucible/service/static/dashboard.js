// Crucible's metric dashboard: runs list, live charts per metric, run overlay, smoothing,
// log scale and zoom. Plain JavaScript over the REST API and the WebSocket stream; uPlot
// (vendored, MIT) draws the charts.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "crucible.token";
const COLORS = ["#3b5bdb", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0c8599", "#e67700", "#5c940d"];
const HISTORY_POINTS = 2000;

const $ = (id) => document.getElementById(id);
const state = {
  token: localStorage.getItem(TOKEN_KEY),
  runs: [],            // run ids on the chart page
  series: new Map(),   // metric -> Map(run -> Map(x -> value))
  charts: new Map(),   // metric -> {plot, element}
  sockets: [],
  smoothing: 0,
  logScale: false,
  zoomed: new Set(),   // metrics whose x range the user zoomed into
  redrawQueued: new Set(),
};

class Unauthorized extends Error {}

async function api(path) {
  const response = await fetch(API + path, { headers: { Authorization: `Bearer ${state.token}` } });
  if (response.status === 401) throw new Unauthorized("the token was refused");
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`${response.status} ${body.error || ""}: ${JSON.stringify(body.detail || "")}`);
  }
  return response.json();
}

const pathOf = (name) => name.split("/").map(encodeURIComponent).join("/");
const fmt = (v) => (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : +v.toPrecision(5));

function show(section) {
  for (const id of ["login", "runs", "charts"]) $(id).hidden = id !== section;
  $("logout").hidden = section === "login";
}

// -- sign in -----------------------------------------------------------------------------------

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  try {
    await api("/runs");
    localStorage.setItem(TOKEN_KEY, state.token);
    $("login-error").textContent = "";
    route();
  } catch (error) {
    $("login-error").textContent = error instanceof Unauthorized ? "That token was refused." : String(error);
  }
});

$("logout").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  state.token = null;
  closeSockets();
  route();
});

// -- runs list ---------------------------------------------------------------------------------

const RUNS_REFRESH_MS = 3000;
let runsTimer = null;

async function showRuns() {
  show("runs");
  $("crumbs").textContent = "";
  clearTimeout(runsTimer);
  const { runs } = await api("/runs");
  // The list refreshes itself while it is shown; ticked runs stay ticked.
  runsTimer = setTimeout(() => {
    if (!$("runs").hidden && state.token) showRuns().catch(console.error);
  }, RUNS_REFRESH_MS);
  const ticked = new Set([...document.querySelectorAll(".pick:checked")].map((box) => box.value));
  const rows = $("run-rows");
  rows.textContent = "";
  $("no-runs").hidden = runs.length > 0;
  for (const run of runs) {
    const row = document.createElement("tr");
    row.dataset.run = run.run_id;
    const chips = Object.entries(run.latest)
      .slice(0, 8)
      .map(([name, p]) => `<span class="metric-chip"><b>${escapeHtml(name)}</b> ${fmt(p.value)}</span>`)
      .join("");
    row.innerHTML = `
      <td><input type="checkbox" class="pick" value="${escapeHtml(run.run_id)}"${ticked.has(run.run_id) ? " checked" : ""}></td>
      <td><a href="#/run/${encodeURIComponent(run.run_id)}">${escapeHtml(run.run_id)}</a></td>
      <td><span class="status ${run.status}">${run.status}</span></td>
      <td>${run.last_step ?? "–"}</td>
      <td>${new Date(run.last_timestamp).toLocaleString()}</td>
      <td>${chips}</td>`;
    rows.appendChild(row);
  }
  const picks = () => [...document.querySelectorAll(".pick:checked")].map((box) => box.value);
  rows.onchange = () => ($("compare").disabled = picks().length < 2);
  $("compare").disabled = picks().length < 2;
  $("compare").onclick = () => (location.hash = `#/compare/${picks().map(encodeURIComponent).join(",")}`);
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// -- charts ------------------------------------------------------------------------------------

async function showCharts(runs) {
  show("charts");
  closeSockets();
  state.runs = runs;
  state.series = new Map();
  state.charts = new Map();
  state.zoomed = new Set();
  $("chart-grid").textContent = "";
  $("charts-title").textContent = runs.length === 1 ? runs[0] : `Comparing ${runs.join(", ")}`;
  $("crumbs").innerHTML = `<a href="#/">Runs</a> / ${escapeHtml(runs.join(" + "))}`;
  // Subscribe first, then load history, so no point falls between the two.
  for (const run of runs) openSocket(run);
  await Promise.all(runs.map(loadHistory));
}

async function loadHistory(run) {
  const { latest } = await api(`/runs/${encodeURIComponent(run)}/metrics/latest`);
  await Promise.all(
    Object.keys(latest).map(async (metric) => {
      const { points } = await api(`/runs/${encodeURIComponent(run)}/metrics/${pathOf(metric)}?max_points=${HISTORY_POINTS}`);
      addPoints(run, points);
    }),
  );
}

function xOf(point) {
  return point.step ?? Date.parse(point.timestamp) / 1000;
}

function addPoints(run, points) {
  for (const point of points) {
    if (!state.series.has(point.metric)) state.series.set(point.metric, new Map());
    const byRun = state.series.get(point.metric);
    if (!byRun.has(run)) byRun.set(run, new Map());
    byRun.get(run).set(xOf(point), point.value);
    queueRedraw(point.metric);
  }
}

function queueRedraw(metric) {
  if (state.redrawQueued.size === 0) requestAnimationFrame(redrawQueued);
  state.redrawQueued.add(metric);
}

function redrawQueued() {
  const metrics = [...state.redrawQueued];
  state.redrawQueued.clear();
  for (const metric of metrics.sort()) redraw(metric);
}

// TensorBoard's smoothing: an exponential moving average, debiased at the start.
function smooth(values, weight) {
  if (weight <= 0) return values;
  let last = 0;
  let count = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return v;
    last = last * weight + (1 - weight) * v;
    count += 1;
    return last / (1 - Math.pow(weight, count));
  });
}

function chartData(metric) {
  const byRun = state.series.get(metric);
  const xs = [...new Set([...byRun.values()].flatMap((points) => [...points.keys()]))].sort((a, b) => a - b);
  const columns = state.runs.map((run) => {
    const points = byRun.get(run) || new Map();
    const ys = xs.map((x) => (points.has(x) ? points.get(x) : null));
    const logSafe = state.logScale ? ys.map((y) => (y !== null && y > 0 ? y : null)) : ys;
    return smooth(logSafe, state.smoothing);
  });
  return [xs, ...columns];
}

function pointCount(metric) {
  let n = 0;
  for (const points of state.series.get(metric).values()) n += points.size;
  return n;
}

function redraw(metric) {
  let chart = state.charts.get(metric);
  const data = chartData(metric);
  if (!chart) chart = createChart(metric, data);
  else chart.plot.setData(data, !state.zoomed.has(metric));
  chart.element.dataset.points = String(pointCount(metric));
}

function createChart(metric, data) {
  const element = document.createElement("div");
  element.className = "chart";
  element.dataset.metric = metric;
  element.dataset.scale = state.logScale ? "log" : "linear";
  const title = document.createElement("h2");
  title.textContent = metric;
  element.appendChild(title);
  // Keep charts in name order.
  const after = [...$("chart-grid").children].find((child) => child.dataset.metric > metric);
  $("chart-grid").insertBefore(element, after || null);
  const width = Math.max(480, element.clientWidth - 20);
  const options = {
    width,
    height: 260,
    scales: { x: { time: false }, y: state.logScale ? { distr: 3 } : {} },
    axes: [{ label: "step" }, { size: 70 }],
    cursor: { drag: { x: true, y: false, setScale: true } },
    series: [
      { label: "step" },
      ...state.runs.map((run, i) => ({ label: run, stroke: COLORS[i % COLORS.length], width: 1.6, spanGaps: true, points: { show: false } })),
    ],
    hooks: {
      setSelect: [() => state.zoomed.add(metric)],
      // The visible x range and axis kind, for people reading the DOM (and the tests).
      setScale: [
        (u, key) => {
          if (key !== "x") return;
          element.dataset.xMin = String(u.scales.x.min);
          element.dataset.xMax = String(u.scales.x.max);
        },
      ],
    },
  };
  const plot = new uPlot(options, data, element);
  plot.over.addEventListener("dblclick", () => state.zoomed.delete(metric));
  const chart = { plot, element };
  state.charts.set(metric, chart);
  return chart;
}

function rebuildCharts() {
  for (const { plot, element } of state.charts.values()) {
    plot.destroy();
    element.remove();
  }
  state.charts.clear();
  state.zoomed.clear();
  for (const metric of [...state.series.keys()].sort()) redraw(metric);
}

$("smoothing").addEventListener("input", (event) => {
  state.smoothing = Number(event.target.value);
  $("smoothing-value").textContent = state.smoothing.toFixed(2);
  for (const metric of state.series.keys()) queueRedraw(metric);
});
$("log-scale").addEventListener("change", (event) => {
  state.logScale = event.target.checked;
  rebuildCharts();
});
$("reset-zoom").addEventListener("click", () => {
  state.zoomed.clear();
  for (const metric of state.series.keys()) queueRedraw(metric);
});

// -- live stream -------------------------------------------------------------------------------

function openSocket(run) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/ws/metrics/${encodeURIComponent(run)}`;
  const socket = new WebSocket(url, ["crucible", `bearer.${state.token}`]);
  socket.onopen = () => setConnection();
  socket.onmessage = (event) => addPoints(run, JSON.parse(event.data).points);
  socket.onclose = (event) => {
    setConnection();
    // 4008: we fell behind; any other unexpected close: reconnect while the page is open.
    if (state.sockets.includes(socket) && state.runs.includes(run)) {
      state.sockets = state.sockets.filter((s) => s !== socket);
      setTimeout(() => {
        if (state.runs.includes(run)) {
          openSocket(run);
          loadHistory(run);
        }
      }, event.code === 4008 ? 200 : 2000);
    }
  };
  state.sockets.push(socket);
}

function closeSockets() {
  const sockets = state.sockets;
  state.sockets = [];
  state.runs = [];
  for (const socket of sockets) socket.close();
  setConnection();
}

function setConnection() {
  const open = state.sockets.filter((s) => s.readyState === WebSocket.OPEN).length;
  $("connection").textContent = state.sockets.length ? `live: ${open}/${state.sockets.length}` : "";
  $("connection").dataset.live = String(open);
}

// -- routing -----------------------------------------------------------------------------------

async function route() {
  if (!state.token) {
    closeSockets();
    show("login");
    return;
  }
  const hash = decodeURIComponent(location.hash.slice(1));
  try {
    if (hash.startsWith("/run/")) await showCharts([hash.slice(5)]);
    else if (hash.startsWith("/compare/")) await showCharts(hash.slice(9).split(",").filter(Boolean));
    else {
      closeSockets();
      await showRuns();
    }
  } catch (error) {
    if (error instanceof Unauthorized) {
      localStorage.removeItem(TOKEN_KEY);
      state.token = null;
      show("login");
      $("login-error").textContent = "Your token was refused; sign in again.";
    } else {
      console.error(error);
    }
  }
}

window.addEventListener("hashchange", route);
route();
