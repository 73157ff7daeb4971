// hostsflow view: live stacked chart of traffic by service, legend with current rates,
// tables (TCP connections, protocols, remote addresses) fed by server-sent events, and a
// breakdown of any traffic by the keys sFlow carries (GET /api/flows), zoomable in time.
//
// Service names come from the network: they are only ever used as Map keys and textContent,
// never as object keys or markup, so a service called "__proto__", "toString" or "other"
// is just a name.
"use strict";

const MAX_POINTS = 300;
const PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4",
                 "#f97316", "#84cc16", "#ec4899", "#14b8a6", "#a16207", "#6366f1"];
const OTHER = {id: "other", name: "other (no service)", colour: "#9ca3af"};
const MORE = {id: "more", name: "more services", colour: "#d1d5db"};
const FLOW_FIELDS = ["agent", "service", "protocol", "src_addr", "src_port", "dst_addr",
                     "dst_port", "src_service", "dst_service"];

const state = {
  points: [],          // [{t, bps: Map(label -> bits/s), more, other}]
  order: [],           // service labels in stack order (bottom first), by first appearance
  colours: new Map(),  // service key (or label) -> colour
  keys: new Map(),  // service label -> its key (ADDRESS#INDEX)
  plot: null,
  plotKey: "",
  zoom: null,          // [t0, t1] seconds selected on the chart, or null (live)
  window: 5,
  flowPlot: null,
  flowTimer: null,
  lastSnapshot: null,
  agent: "",           // the agent picked (its address), "" for all
};

// with several agents a label is "ADDRESS/unit": the picker keeps one agent's
function picked(label) { return !state.agent || label.startsWith(state.agent + "/"); }

function renderPicker(agents) {
  const sel = document.getElementById("agent-pick");
  const addrs = Object.keys(agents).sort();
  document.getElementById("agent-box").hidden = addrs.length < 2;
  const want = ["", ...addrs].join("\n");
  if (sel.dataset.options === want) return;
  sel.dataset.options = want;
  sel.replaceChildren(new Option("all agents", ""),
                      ...addrs.map(a => new Option(agents[a] + " (" + a + ")", a)));
  sel.value = addrs.includes(state.agent) ? state.agent : "";
}

function fmtRate(bps) {
  const units = [["Gb/s", 1e9], ["Mb/s", 1e6], ["kb/s", 1e3]];
  for (const [u, s] of units) {
    if (bps >= s) return (bps / s).toFixed(bps / s >= 100 ? 0 : bps / s >= 10 ? 1 : 2) + " " + u;
  }
  return Math.round(bps) + " b/s";
}

function pad(n) { return String(n).padStart(2, "0"); }

// One short label per tick: the time of day (with seconds when the ticks are closer than a
// minute); the date is in the caption under the chart.
function fmtTime(t, withSeconds) {
  const d = new Date(t * 1000);
  return pad(d.getHours()) + ":" + pad(d.getMinutes()) + (withSeconds ? ":" + pad(d.getSeconds()) : "");
}

// A service keeps its colour when its label changes ("3:7" until its counters name it): the
// colour goes with the service's key (ADDRESS#INDEX), which points and snapshots carry.
function colour(label) {
  const key = state.keys.get(label) || label;
  let c = state.colours.get(key);
  if (c === undefined) {
    c = PALETTE[state.colours.size % PALETTE.length];
    state.colours.set(key, c);
  }
  return c;
}

function toPoint(p) {
  if (p.ids && typeof p.ids === "object") {
    for (const [label, key] of Object.entries(p.ids)) {
      if (typeof key === "string" && !state.keys.has(label)) state.keys.set(label, key);
    }
  }
  const bps = new Map();
  if (p.bps && typeof p.bps === "object") {
    for (const [k, v] of Object.entries(p.bps)) if (typeof v === "number") bps.set(k, v);
  }
  return {t: p.t, bps, more: +p.more || 0, other: +p.other || 0};
}

// The services drawn: those with a value in a kept point, oldest first (so a service's band
// keeps its place), forgetting the ones that left the chart.
function learnOrder() {
  const present = new Set();
  for (const p of state.points) for (const k of p.bps.keys()) present.add(k);
  state.order = state.order.filter(l => present.has(l));
  for (const l of present) if (!state.order.includes(l)) { state.order.push(l); colour(l); }
}

// Bands bottom first: each service, then "more services", then "other (no service)".
function bands() {
  const out = state.order.filter(picked).map(l => ({id: "s:" + l, name: l, colour: colour(l), get: p => p.bps.get(l) || 0}));
  out.push({...MORE, get: p => p.more});
  out.push({...OTHER, get: p => p.other});
  return out;
}

// uPlot has no stacking: draw cumulative sums, the top of the stack first, each filled opaque
// down to zero, so every band shows one service's share.
function chartData(list) {
  const xs = state.points.map(p => p.t);
  const cum = [];
  let run = state.points.map(() => 0);
  for (const b of list) {
    run = run.map((v, i) => v + b.get(state.points[i]));
    cum.push(run);
  }
  const data = [xs];
  for (let i = list.length - 1; i >= 0; i--) data.push(cum[i]);
  return data;
}

function timeAxis() {
  return {
    space: 70,  // at least this many pixels between ticks: labels are ~50 px wide
    incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600],
    values: (u, splits, ai, space, incr) => splits.map(t => fmtTime(t, incr < 60)),
  };
}

function makePlot() {
  const box = document.getElementById("chart");
  box.innerHTML = "";
  const list = bands();
  const series = [{}];
  for (let i = list.length - 1; i >= 0; i--) {
    const c = list[i].colour;
    series.push({label: list[i].name, stroke: c, fill: c + "cc", width: 1, points: {show: false}});
  }
  const opts = {
    width: Math.max(300, box.clientWidth || 800), height: 340,
    legend: {show: false},
    cursor: {drag: {x: true, y: false, setScale: false}},
    select: {show: true},
    scales: {x: {time: true}, y: {range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1]}},
    axes: [timeAxis(), {size: 80, values: (u, ticks) => ticks.map(fmtRate)}],
    hooks: {setSelect: [u => {
      if (u.select.width < 3) return;
      const t0 = u.posToVal(u.select.left, "x"), t1 = u.posToVal(u.select.left + u.select.width, "x");
      setZoom([Math.floor(t0), Math.ceil(t1)]);
    }]},
    series,
  };
  state.plot = new uPlot(opts, chartData(list), box);
  state.plotKey = list.map(b => b.id).join("\n");
  applyZoom();
}

function applyZoom() {
  if (!state.plot) return;
  if (state.zoom) {
    state.plot.setScale("x", {min: state.zoom[0], max: state.zoom[1]});
  }
}

function redraw() {
  learnOrder();
  const list = bands();
  if (!state.plot || state.plotKey !== list.map(b => b.id).join("\n")) makePlot();
  else {
    state.plot.setData(chartData(list), !state.zoom);
    applyZoom();
  }
  const first = state.points[0], last = state.points[state.points.length - 1];
  if (first && last) {
    document.getElementById("chart-date").textContent =
      new Date(first.t * 1000).toLocaleDateString() + " " + fmtTime(first.t, true) + " \u2013 " +
      fmtTime(last.t, true);
  }
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function legendRow(kind, label, name, bps, inb, outb, col) {
  const li = el("li", kind === "service" ? "svc" : "svc " + kind);
  li.dataset.kind = kind;
  if (kind === "service") li.dataset.service = label;
  li.dataset.bps = String(bps);
  if (inb !== null) { li.dataset.inBps = String(inb); li.dataset.outBps = String(outb); }
  const sw = el("span", "swatch");
  sw.style.background = col;
  li.append(sw, el("span", "name", name), el("span", "rate", fmtRate(bps)));
  if (inb !== null) li.append(el("span", "split", "in " + fmtRate(inb) + " \u00b7 out " + fmtRate(outb)));
  return li;
}

function renderLegend(snap) {
  const ul = document.getElementById("legend");
  ul.replaceChildren();
  for (const s of snap.services) {
    if (state.agent && s.agent !== state.agent) continue;
    ul.append(legendRow("service", s.label, s.label, s.bps, s.in.bps, s.out.bps, colour(s.label)));
  }
  const hidden = (snap.services_total || 0) - snap.services.length;
  if (hidden > 0) {
    const li = legendRow("more", "", hidden + " more services", snap.more.bps, null, null, MORE.colour);
    ul.append(li);
  }
  ul.append(legendRow("other", "", OTHER.name, snap.other.bps, null, null, OTHER.colour));
}

function renderNotices(snap) {
  const box = document.getElementById("notices");
  box.replaceChildren();
  for (const n of snap.notices || []) box.append(el("p", "hint", n));
}

function fillTable(id, rows, cells, ncols) {
  const tbody = document.querySelector("#" + id + " tbody");
  tbody.replaceChildren();
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", "empty", "none yet");
    td.colSpan = ncols;
    tr.append(td); tbody.append(tr);
    return;
  }
  for (const row of rows) {
    const tr = el("tr");
    for (const [text, num] of cells(row)) tr.append(el("td", num ? "num" : "", text));
    tbody.append(tr);
  }
}

function renderTables(snap) {
  fillTable("connections", snap.connections.filter(c => picked(c.service)).slice(0, 10), c => [
    [c.service || "-"], [c.local], [c.remote], [fmtRate(c.bps), 1], [c.rtt_ms.toFixed(3), 1],
    [c.min_rtt_ms.toFixed(3), 1], [c.rttvar_ms.toFixed(3), 1], [String(c.retrans), 1],
    [String(c.lost), 1], [String(c.snd_cwnd), 1]], 10);
  fillTable("protocols", snap.protocols.filter(p => picked(p.service)).slice(0, 10),
            p => [[p.service], [p.direction], [p.key], [fmtRate(p.bps), 1]], 4);
  fillTable("remotes", snap.remotes.filter(p => picked(p.service)).slice(0, 10),
            p => [[p.service], [p.direction], [p.key], [fmtRate(p.bps), 1]], 4);
}

function renderStatus(snap) {
  const st = snap.stats;
  const hosts = Object.entries(snap.agents).map(([a, h]) => h + " (" + a + ")");
  document.getElementById("host").textContent = hosts.length ? "on " + hosts.join(", ") : "";
  document.getElementById("window").textContent = String(snap.window);
  let text = "total " + fmtRate(snap.total.bps) + " \u00b7 " + st.datagrams + " datagrams, " +
    st.flow_samples + " flow samples (" + st.marked_samples + " marked), " +
    st.malformed + " malformed";
  if (st.sources_refused) text += ", " + st.sources_refused + " refused (--allow)";
  document.getElementById("status").textContent = text;
  document.body.dataset.updated = String(snap.time);
}

function onSnapshot(snap) {
  state.lastSnapshot = snap;
  state.window = snap.window;
  renderPicker(snap.agents);
  for (const s of snap.services) {
    if (!state.keys.has(s.label)) state.keys.set(s.label, s.agent + "#" + s.index);
    colour(s.label);
  }
  renderLegend(snap);
  renderNotices(snap);
  renderTables(snap);
  renderStatus(snap);
}

// ------------------------------------------------------------------ breakdown

function flowKeys() {
  return [...document.querySelectorAll("#flow-keys input:checked")].map(i => i.value);
}

function setZoom(range) {
  state.zoom = range;
  if (!range && state.plot) state.plot.setData(chartData(bands()), true);
  applyZoom();
  describeRange();
  queryFlows();
}

function describeRange() {
  const r = document.getElementById("flow-range");
  if (state.zoom) {
    r.textContent = "from " + fmtTime(state.zoom[0], true) + " to " + fmtTime(state.zoom[1], true) +
      " (" + (state.zoom[1] - state.zoom[0]) + " s, selected on the chart)";
  } else {
    r.textContent = "the last " + state.window + " s, live (drag across the chart to zoom in time)";
  }
  document.getElementById("flow-zoom-reset").hidden = !state.zoom;
}

async function queryFlows() {
  const keys = flowKeys();
  const params = new URLSearchParams({
    keys: keys.join(","), filter: document.getElementById("flow-filter").value,
    top: document.getElementById("flow-top").value});
  if (state.zoom) { params.set("start", state.zoom[0]); params.set("end", state.zoom[1]); }
  const err = document.getElementById("flow-error");
  const asked = state.flowAsked = (state.flowAsked || 0) + 1;
  let res;
  try {
    const r = await fetch("/api/flows?" + params.toString());
    res = await r.json();
    if (asked !== state.flowAsked) return;  // a later question was asked: its answer counts
    if (!r.ok) { err.textContent = res.error || ("error " + r.status); return; }
  } catch (e) {
    err.textContent = "breakdown unavailable: " + e; return;
  }
  err.textContent = "";
  renderFlows(res);
}

function groupName(g, keys) {
  return g.key.map((v, i) => (keys[i].endsWith("service") && v === "") ? "(no service)" : String(v)).join(" \u00b7 ");
}

function renderFlows(res) {
  const table = document.getElementById("flows");
  const head = el("tr");
  for (const k of res.keys) head.append(el("th", "", k));
  head.append(el("th", "num", "rate"), el("th", "num", "pkts/s"));
  table.tHead.replaceChildren(head);
  const rows = res.groups.map(g => ({g}));
  if (res.not_itemised.bps > 0) rows.push({overflow: res.not_itemised});
  fillTable("flows", rows, r => r.g
    ? [...r.g.key.map((v, i) => [(res.keys[i].endsWith("service") && v === "") ? "(no service)" : String(v)]),
       [fmtRate(r.g.bps), 1], [r.g.pps.toFixed(1), 1]]
    : [[r.overflow.label], ...res.keys.slice(1).map(() => [""]), [fmtRate(r.overflow.bps), 1],
       [r.overflow.pps.toFixed(1), 1]], res.keys.length + 2);
  document.getElementById("flow-total").textContent =
    res.matched.groups + " groups, " + fmtRate(res.matched.bps) + " matched over " + res.span + " s";
  drawFlowChart(res);
}

function drawFlowChart(res) {
  const box = document.getElementById("flow-chart");
  box.replaceChildren();
  state.flowPlot = null;
  if (!res.groups.length || res.t.length < 2) return;
  const series = [{}];
  const data = [res.t];
  res.groups.forEach((g, i) => {
    const c = PALETTE[i % PALETTE.length];
    series.push({label: groupName(g, res.keys), stroke: c, width: 1.5, points: {show: false}});
    data.push(g.series);
  });
  state.flowPlot = new uPlot({
    width: Math.max(300, box.clientWidth || 800), height: 220,
    legend: {show: true, live: false},
    scales: {x: {time: true}, y: {range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1]}},
    axes: [timeAxis(), {size: 80, values: (u, ticks) => ticks.map(fmtRate)}],
    series,
  }, data, box);
}

function setupBreakdown() {
  const keysBox = document.getElementById("flow-keys");
  for (const f of FLOW_FIELDS) {
    const label = el("label");
    const box = el("input");
    box.type = "checkbox"; box.value = f; box.checked = f === "protocol" || f === "dst_port";
    label.append(box, " " + f);
    keysBox.append(label);
  }
  document.getElementById("flow-form").addEventListener("submit", ev => {
    ev.preventDefault(); queryFlows();
  });
  document.getElementById("flow-other").addEventListener("click", () => {
    document.getElementById("flow-filter").value = "service=";
    for (const i of document.querySelectorAll("#flow-keys input")) {
      i.checked = ["protocol", "src_addr", "dst_addr", "dst_port"].includes(i.value);
    }
    queryFlows();
  });
  document.getElementById("flow-zoom-reset").addEventListener("click", () => setZoom(null));
  describeRange();
  state.flowTimer = setInterval(() => { if (!state.zoom) queryFlows(); }, 2000);
}

// ------------------------------------------------------------------ the stream

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("history", ev => {
    const msg = JSON.parse(ev.data);
    state.points = msg.points.slice(-MAX_POINTS).map(toPoint);
    onSnapshot(msg.snapshot);
    redraw();
    describeRange();
    queryFlows();
  });
  es.addEventListener("snapshot", ev => {
    const msg = JSON.parse(ev.data);
    state.points.push(toPoint(msg.point));
    if (state.points.length > MAX_POINTS) state.points.shift();
    onSnapshot(msg.snapshot);
    redraw();
  });
  es.onerror = () => {
    document.getElementById("status").textContent = "connection lost, retrying\u2026";
  };
}

window.addEventListener("resize", () => { if (state.plot) makePlot(); });
document.getElementById("agent-pick").addEventListener("change", ev => {
  state.agent = ev.target.value;
  if (state.lastSnapshot) onSnapshot(state.lastSnapshot);
  redraw();
});
setupBreakdown();
connect();
