// hostsflow view: the service dependency map.  Polls /api/edges once a second and draws every
// end as a node (service@host, or an address nobody names) in columns by call depth (clients
// left, the services they call to the right), each edge as an arrow whose width grows with its
// rate; hovering an edge shows its numbers.  The table below lists the same edges.
"use strict";

const MAP = {
  colWidth: 300, rowHeight: 74, nodeWidth: 230, nodeHeight: 44, pad: 20,
  poll: 1000,
};

function mapRate(bps) {
  const units = [["Gb/s", 1e9], ["Mb/s", 1e6], ["kb/s", 1e3]];
  for (const [u, s] of units) {
    if (bps >= s) return (bps / s).toFixed(bps / s >= 100 ? 0 : bps / s >= 10 ? 1 : 2) + " " + u;
  }
  return Math.round(bps) + " b/s";
}

function svgEl(name, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// column of each node: the longest chain of calls leading to it (cycles stop at the node count)
function columns(nodes, edges) {
  const col = {};
  for (const n of nodes) col[n.id] = 0;
  for (let round = 0; round < nodes.length; round++) {
    let moved = false;
    for (const e of edges) {
      if (e.src === e.dst) continue;
      const want = Math.min(col[e.src] + 1, nodes.length);
      if (col[e.dst] < want) { col[e.dst] = want; moved = true; }
    }
    if (!moved) break;
  }
  return col;
}

function layout(doc) {
  const col = columns(doc.nodes, doc.edges);
  const byCol = {};
  for (const n of doc.nodes) (byCol[col[n.id]] = byCol[col[n.id]] || []).push(n);
  const pos = {};
  let rows = 1, cols = 1;
  for (const [c, list] of Object.entries(byCol)) {
    list.sort((a, b) => a.id.localeCompare(b.id));
    list.forEach((n, i) => {
      pos[n.id] = {x: MAP.pad + Number(c) * MAP.colWidth, y: MAP.pad + i * MAP.rowHeight};
    });
    rows = Math.max(rows, list.length);
    cols = Math.max(cols, Number(c) + 1);
  }
  return {pos, width: MAP.pad * 2 + (cols - 1) * MAP.colWidth + MAP.nodeWidth,
          height: MAP.pad * 2 + (rows - 1) * MAP.rowHeight + MAP.nodeHeight};
}

function edgeText(e) {
  const lines = [e.src + " \u2192 " + e.dst, e.protocol + "/" + e.port,
    "rate " + mapRate(e.bps) + ", " + e.pps.toFixed(1) + " packets/s",
    "connections sampled " + e.connections + ", samples " + e.samples];
  if (e.rtt_ms !== null) lines.push("RTT " + e.rtt_ms.toFixed(3) + " ms, retrans " + e.retrans);
  lines.push("counted at the " + e.side + " by " + e.observers.join(", "));
  return lines.join("\n");
}

function showTip(ev, text) {
  const tip = document.getElementById("tip");
  const box = document.getElementById("map-box").getBoundingClientRect();
  tip.textContent = text;
  tip.hidden = false;
  tip.style.left = (ev.clientX - box.left + 14) + "px";
  tip.style.top = (ev.clientY - box.top + 10) + "px";
}

function hideTip() { document.getElementById("tip").hidden = true; }

function drawMap(doc) {
  const svg = document.getElementById("map");
  const {pos, width, height} = layout(doc);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.replaceChildren();
  const defs = svgEl("defs");
  const marker = svgEl("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
                                  markerWidth: 10, markerHeight: 10, markerUnits: "userSpaceOnUse",
                                  orient: "auto"});
  marker.append(svgEl("path", {d: "M0,0 L10,5 L0,10 z", fill: "#2563eb"}));
  defs.append(marker);
  svg.append(defs);
  const maxBps = Math.max(1, ...doc.edges.map(e => e.bps));
  for (const e of doc.edges) {
    const a = pos[e.src], b = pos[e.dst];
    if (!a || !b) continue;
    const x1 = a.x + MAP.nodeWidth, y1 = a.y + MAP.nodeHeight / 2;
    const x2 = b.x, y2 = b.y + MAP.nodeHeight / 2;
    const dx = Math.max(40, (x2 - x1) / 2);
    const g = svgEl("g", {class: "edge", "data-src": e.src, "data-dst": e.dst,
                          "data-bps": e.bps, "data-pps": e.pps,
                          "data-connections": e.connections});
    const w = 1.5 + 8 * Math.sqrt(e.bps / maxBps);
    g.append(svgEl("path", {d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`,
                            "stroke-width": w.toFixed(1), "marker-end": "url(#arrow)"}));
    g.append(svgEl("text", {x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle"},
                   mapRate(e.bps)));
    g.append(svgEl("title", {}, edgeText(e)));
    g.addEventListener("mousemove", ev => showTip(ev, edgeText(e)));
    g.addEventListener("mouseleave", hideTip);
    svg.append(g);
  }
  for (const n of doc.nodes) {
    const p = pos[n.id];
    const g = svgEl("g", {class: n.service ? "node" : "node address", "data-id": n.id,
                          transform: `translate(${p.x},${p.y})`});
    g.append(svgEl("rect", {width: MAP.nodeWidth, height: MAP.nodeHeight, rx: 6}));
    g.append(svgEl("text", {x: 10, y: 18}, n.service || n.address));
    g.append(svgEl("text", {x: 10, y: 35, class: "host"},
                   n.service ? "on " + n.host + " (" + n.address + ")" : "not named by any agent"));
    g.append(svgEl("title", {}, n.id));
    svg.append(g);
  }
}

function fillEdges(doc) {
  const tbody = document.querySelector("#edges tbody");
  tbody.replaceChildren();
  for (const e of doc.edges) {
    const tr = document.createElement("tr");
    tr.dataset.src = e.src;
    tr.dataset.dst = e.dst;
    tr.dataset.bps = String(e.bps);
    const cells = [[e.src], [e.dst], [e.protocol + "/" + e.port], [mapRate(e.bps), 1],
      [e.pps.toFixed(1), 1], [String(e.connections), 1],
      [e.rtt_ms === null ? "-" : e.rtt_ms.toFixed(3), 1],
      [e.retrans === null ? "-" : String(e.retrans), 1], [e.side], [e.observers.join(", ")]];
    for (const [text, num] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (num) td.className = "num";
      tr.append(td);
    }
    tbody.append(tr);
  }
}

async function poll() {
  try {
    const r = await fetch("/api/edges", {cache: "no-store"});
    const doc = await r.json();
    drawMap(doc);
    fillEdges(doc);
    document.getElementById("map-window").textContent = String(doc.window);
    const st = doc.stats;
    document.getElementById("map-status").textContent =
      doc.edges.length + " edges, " + doc.nodes.length + " ends \u00b7 " + st.samples +
      " flow samples (" + st.placed + " placed, " + st.unplaced + " seen by no end's agent)";
    document.body.dataset.updated = String(doc.time);
  } catch (err) {
    document.getElementById("map-status").textContent = "no answer from the collector, retrying\u2026";
  }
  setTimeout(poll, MAP.poll);
}

poll();
