// hostsflow view: live stacked chart of traffic by service, legend with current rates,
// and tables (TCP connections, protocols, remote addresses), fed by server-sent events.
"use strict";

const MAX_POINTS = 300;
const PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4",
                 "#f97316", "#84cc16", "#ec4899", "#14b8a6", "#a16207", "#6366f1"];
const OTHER = "other";
const OTHER_COLOUR = "#9ca3af";

const state = {
  points: [],          // [{t, bps: {label: bits/s}, other}]
  order: [],           // service labels in stack order (bottom first), by first appearance
  colours: {},
  plot: null,
  plotKey: "",
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

function colour(label) {
  if (label === OTHER) return OTHER_COLOUR;
  if (!(label in state.colours)) {
    state.colours[label] = PALETTE[Object.keys(state.colours).length % PALETTE.length];
  }
  return state.colours[label];
}

function learn(labels) {
  for (const l of labels) {
    if (!state.order.includes(l)) { state.order.push(l); colour(l); }
  }
}

function stackLabels() { return [...state.order.filter(picked), OTHER]; }

// uPlot has no stacking: draw cumulative sums, the top of the stack first, each filled opaque
// down to zero, so every band shows one service's share.
function chartData() {
  const labels = stackLabels();
  const xs = state.points.map(p => p.t);
  const cum = [];
  let run = state.points.map(() => 0);
  for (const l of labels) {
    run = run.map((v, i) => {
      const p = state.points[i];
      return v + ((l === OTHER ? p.other : p.bps[l]) || 0);
    });
    cum.push(run);
  }
  const data = [xs];
  for (let i = labels.length - 1; i >= 0; i--) data.push(cum[i]);
  return data;
}

function makePlot() {
  const box = document.getElementById("chart");
  box.innerHTML = "";
  const labels = stackLabels();
  const series = [{}];
  for (let i = labels.length - 1; i >= 0; i--) {
    const c = colour(labels[i]);
    series.push({label: labels[i], stroke: c, fill: c + "cc", width: 1, points: {show: false}});
  }
  const opts = {
    width: Math.max(300, box.clientWidth || 800), height: 340,
    legend: {show: false},
    cursor: {drag: {x: false, y: false}},
    scales: {x: {time: true}, y: {range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1]}},
    axes: [{}, {size: 80, values: (u, ticks) => ticks.map(fmtRate)}],
    series,
  };
  state.plot = new uPlot(opts, chartData(), box);
  state.plotKey = labels.join("\n");
}

function redraw() {
  if (!state.plot || state.plotKey !== stackLabels().join("\n")) makePlot();
  else state.plot.setData(chartData());
}

function renderLegend(snap) {
  const ul = document.getElementById("legend");
  ul.innerHTML = "";
  const rows = snap.services.filter(s => !state.agent || s.agent === state.agent)
    .map(s => ({label: s.label, bps: s.bps, inb: s.in.bps, outb: s.out.bps}));
  rows.push({label: OTHER, bps: snap.other.bps, inb: null, outb: null});
  if (!snap.services.length) {
    const li = document.createElement("li");
    li.className = "hint";
    li.textContent = "No services heard yet: the agent needs systemd { markTraffic = on } " +
      "(services come with its counter samples, every polling interval).";
    ul.append(li);
  }
  for (const r of rows) {
    const li = document.createElement("li");
    li.className = r.label === OTHER ? "svc other" : "svc";
    li.dataset.service = r.label;
    li.dataset.bps = String(r.bps);
    if (r.inb !== null) { li.dataset.inBps = String(r.inb); li.dataset.outBps = String(r.outb); }
    const sw = document.createElement("span");
    sw.className = "swatch"; sw.style.background = colour(r.label);
    const name = document.createElement("span");
    name.className = "name"; name.textContent = r.label === OTHER ? "other (no service)" : r.label;
    const rate = document.createElement("span");
    rate.className = "rate"; rate.textContent = fmtRate(r.bps);
    li.append(sw, name, rate);
    if (r.inb !== null) {
      const split = document.createElement("span");
      split.className = "split";
      split.textContent = "in " + fmtRate(r.inb) + " \u00b7 out " + fmtRate(r.outb);
      li.append(split);
    }
    ul.append(li);
  }
}

function fillTable(id, rows, cells, ncols) {
  const tbody = document.querySelector("#" + id + " tbody");
  tbody.innerHTML = "";
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = ncols; td.className = "empty"; td.textContent = "none yet";
    tr.append(td); tbody.append(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const [text, num] of cells(row)) {
      const td = document.createElement("td");
      td.textContent = text;
      if (num) td.className = "num";
      tr.append(td);
    }
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
  document.getElementById("status").textContent =
    "total " + fmtRate(snap.total.bps) + " \u00b7 " + st.datagrams + " datagrams, " +
    st.flow_samples + " flow samples (" + st.marked_samples + " marked), " +
    st.malformed + " malformed";
  document.body.dataset.updated = String(snap.time);
}

function onSnapshot(snap) {
  state.last = snap;
  renderPicker(snap.agents);
  learn(snap.services.map(s => s.label));
  renderLegend(snap);
  renderTables(snap);
  renderStatus(snap);
}

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("history", ev => {
    const msg = JSON.parse(ev.data);
    state.points = msg.points.slice(-MAX_POINTS);
    for (const p of state.points) learn(Object.keys(p.bps));
    onSnapshot(msg.snapshot);
    redraw();
  });
  es.addEventListener("snapshot", ev => {
    const msg = JSON.parse(ev.data);
    state.points.push(msg.point);
    if (state.points.length > MAX_POINTS) state.points.shift();
    learn(Object.keys(msg.point.bps));
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
  if (state.last) onSnapshot(state.last);
  redraw();
});
connect();
