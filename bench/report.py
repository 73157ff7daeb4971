#!/usr/bin/env python3
"""Write bench/RESULTS.md from the files bench/run.sh leaves in bench/out/.

Inputs (each optional): results.jsonl (measure.py, labels ``hostsflow-nN`` / ``pmacctd-nN``),
profile.json, pipeline.json, mark_cost.json, poll_cost.json, idle.json, idle_all.json,
latency.json, collector_cost.json.  Every figure is printed next to its target and, on the rig,
next to pmacctd's figure of the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
from typing import Any


def load(path: str) -> Any:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    if path.endswith(".jsonl"):
        return [json.loads(x) for x in text.splitlines() if x.strip()]
    return json.loads(text) if text else None


def fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def pmacct_version() -> str:
    try:
        out = subprocess.run(["pmacctd", "-V"], capture_output=True, text=True).stdout
        return out.splitlines()[0].rsplit("pmacctd", 1)[-1].strip() if out else "?"
    except OSError:
        return "not installed"


def rig_figures(rows: list[dict]) -> dict[Any, Any]:
    """(sampling, target rate) -> (ours, pmacctd's, ratio of CPU per sample) for one run."""
    by = {(r["label"], r["target_pps"]): r for r in rows}
    found: dict[Any, Any] = {}
    for r in rows:
        if not r["label"].startswith("hostsflow") or r["target_pps"] == "idle":
            continue
        n, rate = r["sampling"], r["target_pps"]
        b = by.get((f"pmacctd-n{n}", rate))
        ratio = (r["us_per_sample"] / b["us_per_sample"]
                 if b and r.get("us_per_sample") and b.get("us_per_sample") else None)
        found[(n, rate)] = (r, b, ratio)
    return found


def rig_section(rows: list[dict], lines: list[str]) -> dict[Any, Any]:
    """Side-by-side tables per sampling rate; returns the figures the targets need."""
    found = rig_figures(rows)
    by = {(r["label"], r["target_pps"]): r for r in rows}
    for n in sorted({r["sampling"] for r in rows}):
        lines += [f"### 1 in {n}", "",
                  "| offered pps (target) | agent | samples/s | CPU % of a core | CPU us / sample "
                  "| ratio to pmacctd | loss % | RSS MB | foreign CPU % (contention) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for (sampling, rate), (a, b, ratio) in found.items():
            if sampling != n:
                continue
            label = f"{a['offered_pps']:,} ({'gen max' if rate == 0 else f'{rate:,}'})"
            for name, r in (("hostsflow", a), ("pmacctd", b)):
                if r is None:
                    continue
                lines.append(
                    f"| {label} | {name} | {fmt(r['samples_per_s'])} | {fmt(r['cpu_pct'], 1)} "
                    f"| {fmt(r.get('us_per_sample'))} | "
                    f"{fmt(ratio) if name == 'hostsflow' else ''} | {fmt(r.get('loss_pct'))} "
                    f"| {fmt(r['rss_mb'], 1)} | {fmt(r.get('foreign_cpu_pct'), 1)} |")
                label = ""
        idle_a, idle_b = by.get((f"hostsflow-n{n}", "idle")), by.get((f"pmacctd-n{n}", "idle"))
        if idle_a and idle_b:
            lines.append(f"| idle | hostsflow / pmacctd | | {fmt(idle_a['cpu_pct_precise'], 3)} / "
                         f"{fmt(idle_b['cpu_pct_precise'], 3)} | | | | "
                         f"{fmt(idle_a['rss_mb'], 1)} / {fmt(idle_b['rss_mb'], 1)} | |")
        lines.append("")
    return found


def targets(found: dict[Any, Any], mark: Any, poll: Any, idle: Any, idle_all: Any,
            lat: Any, churn: Any = None) -> list[tuple[str, str, str, bool | None]]:
    """(target, detail, figure, met?) for each target issue 10 sets, from one run's files."""
    t: list[tuple[str, str, str, bool | None]] = []
    a10 = found.get((10, 100000))
    if a10 and a10[2] is not None:
        t.append(("1 in 10, 100k pps: CPU/sample <= 0.5 x pmacctd",
                  f"{fmt(a10[0]['us_per_sample'])} us vs {fmt(a10[1]['us_per_sample'])} us",
                  f"ratio {a10[2]:.2f}", a10[2] <= 0.5))
    a1 = found.get((1, 0))
    if a1 and a1[0]:
        r = a1[0]
        t.append(("1 in 1, generator max: loss < 0.1 %",
                  f"{fmt(r['samples_per_s'])} samples/s of {fmt(r['offered_pps'])} pps offered",
                  f"loss {fmt(r.get('loss_pct'))} %",
                  r.get("loss_pct") is not None and r["loss_pct"] < 0.1))
        if a1[2] is not None:
            t.append(("1 in 1, generator max: CPU/sample <= 2 x pmacctd",
                      f"{fmt(r['us_per_sample'])} us vs {fmt(a1[1]['us_per_sample'])} us",
                      f"ratio {a1[2]:.2f}", a1[2] <= 2.0))
    real = mark.get("realistic") if mark else None
    if real:
        m = real["tcp+systemd"]
        t.append(("tcp + systemd markTraffic on TCP traffic, 10k sockets: added CPU/sample "
                  "(median) < 15 us",
                  f"real loopback TCP traffic (bulk + short connections), 1 in "
                  f"{real.get('sampling')}: tcp alone +{fmt(real['tcp']['added_median_us'])} us, "
                  f"both +{fmt(m['added_median_us'])} us", f"{fmt(m['added_median_us'])} us",
                  m["added_median_us"] < 15))
    if mark:
        m = mark["tcp+systemd"]
        t.append(("the same, worst case: every sample a new connection",
                  f"tcp alone +{fmt(mark['tcp']['added_median_us'])} us, both "
                  f"+{fmt(m['added_median_us'])} us", f"{fmt(m['added_median_us'])} us",
                  m["added_median_us"] < 15))
    if churn:
        t.append((f"markTraffic with {fmt(churn['clients'] * churn['rate_per_client'])} new "
                  "short connections/s: added agent CPU < 10 % of a core",
                  f"1 in {churn['sampling']}, services as client and as server, remote peers, "
                  f"against markTraffic off in the same run"
                  + (f" (loopback peers: +{churn['local']['added_agent_cpu_pct']} %)"
                     if churn.get("local") else ""), f"+{churn['added_agent_cpu_pct']} %",
                  churn["added_agent_cpu_pct"] < 10))
    if poll:
        t.append((f"counter polling, {poll['services']} services: CPU per round < 100 ms",
                  f"{poll['counter_samples_per_round']} counter samples, "
                  f"{poll['datagrams_per_round']} datagrams", f"{poll['round_cpu_ms_median']} ms",
                  poll["round_cpu_ms_median"] < 100))
    if idle:
        pct = idle.get("cpu_percent_of_core_precise", idle["cpu_percent_of_core"])
        t.append(("idle, counters only: CPU < 0.05 % of a core",
                  f"{idle['seconds']} s, modules {', '.join(idle.get('modules', []))}",
                  f"{pct:.3f} %", pct < 0.05))
    if idle_all:
        mb = idle_all["rss_kb_end"] / 1024
        t.append(("RSS with every in-repo module < 30 MB (pmacctd ~31 MB)",
                  f"modules {', '.join(idle_all.get('modules', []))}; counters only: "
                  f"{idle['rss_kb_end'] / 1024:.1f} MB" if idle else "", f"{mb:.1f} MB", mb < 30))
    if lat:
        worst = max(lat[k]["max_s"] for k in ("sparse", "busy") if "max_s" in lat[k])
        t.append(("latency packet -> datagram < 1.5 s",
                  "; ".join(f"{k} ({lat[k]['pps']} pps): median {lat[k].get('median_s')} s, "
                            f"p99 {lat[k].get('p99_s')} s" for k in ("sparse", "busy")),
                  f"max {worst} s", worst < 1.5))
    return t


def collector_targets(c: Any) -> list[tuple[str, str, str, bool | None]]:
    """The fleet collector's two targets (bench/collector_cost.py)."""
    if not c or "hostsflow" not in c:
        return []
    h, peer = c["hostsflow"], c.get("sfacctd") or {}
    offered = c["offered_samples_s"]
    return [
        (f"fleet collector, {c['agents']} agents x {c['samples_per_agent_s']} samples/s: "
         "under one core while keeping up",
         f"hostsflow view {fmt(h.get('us_per_sample'))} us a sample, kept "
         f"{100 - (h.get('loss_pct') or 0):.1f} % of {offered:,}/s; sfacctd "
         f"{fmt(peer.get('us_per_sample'))} us, kept {100 - (peer.get('loss_pct') or 0):.1f} %",
         f"{h['cores']} cores", bool(c.get("target_under_one_core"))),
        ("fleet collector: bounded memory (once its 300 s of history are full, the 2nd half's "
         "RSS within 5 % of the 1st's; n/a: the run was too short to judge)",
         f"{h.get('edges')} edges, {h.get('metric_series')} series served; RSS every 30 s: "
         f"{h.get('rss_mb_every_30s')}",
         f"{h.get('rss_mb_first_half_max')} / {h.get('rss_mb_second_half_max')} MB",
         c.get("target_bounded_memory")),
    ]


def collector_section(c: Any) -> list[str]:
    """The fleet collector benchmark's table (bench/collector_cost.py)."""
    if not c or "hostsflow" not in c:
        return []
    L = ["## The fleet collector (bench/collector_cost.py)", "",
         f"{c['agents']} agents x {c['samples_per_agent_s']} flow samples/s "
         f"({c['offered_samples_s']:,}/s, {c['per_datagram']} a datagram), replayed on loopback "
         f"for {c['seconds']} s to each collector in turn.", "",
         "| collector | cores | us / sample counted | samples kept | socket drops (datagrams) "
         "| RSS MB after filling, 1st / 2nd half |", "|---|---:|---:|---:|---:|---:|"]
    for name, key in (("hostsflow view", "hostsflow"), ("sfacctd", "sfacctd")):
        r = c.get(key) or {}
        if "cores" not in r:
            continue
        L.append(f"| {name} | {r['cores']} | {fmt(r.get('us_per_sample'))} "
                 f"| {fmt(r.get('samples_counted'))} of {fmt(r.get('samples_sent'))} "
                 f"| {fmt(r.get('datagrams_dropped_by_socket'))} "
                 f"| {r.get('rss_mb_first_half_max')} / {r.get('rss_mb_second_half_max')} |")
    L.append("")
    return L


def churn_section(c: Any) -> list[str]:
    """The markTraffic churn benchmark's tables (bench/mark_churn.py), per placement."""
    L = ["## markTraffic with short connections (bench/mark_churn.py)", "",
         f"Real services under `systemd --user` in their own namespace: a service serving and a "
         f"service calling, {c['clients']} plain peers, each client at "
         f"{fmt(c['rate_per_client'])} new connections/s (servers close first); a real "
         f"hostsflowd, pcap at 1 in {c['sampling']}, markTraffic off and on in "
         f"{c['rounds']} interleaved rounds of {c['window_s']} s (medians).  Peers remote: in a "
         "namespace across a veth (one local end per packet); local: on loopback (both ends "
         "this host's, the peers' looked up too).", "",
         "| peers | markTraffic | agent CPU % of a core | traffic processes CPU % (system) "
         "| machine busy % |", "|---|---|---:|---:|---:|"]
    for where in ("remote", "local"):
        p = c.get(where)
        if not p:
            continue
        for k in ("off", "on"):
            r = p[k]
            L.append(f"| {where if k == 'off' else ''} | {k} | {r['agent_cpu_pct']} | "
                     f"{r['traffic_cpu_pct']} ({r['traffic_sys_pct']}) | {r['machine_busy_pct']} |")
    L.append("")
    for where in ("remote", "local"):
        p = c.get(where)
        if p:
            on = p["on"]["runs"][0]
            L.append(f"- {where}: markTraffic adds {p['added_agent_cpu_pct']} % of a core to the "
                     f"agent, {p['added_traffic_sys_pct']:+} points to the traffic's system time "
                     f"(the kernel programs); outcomes (first round) {on['marking']}")
    small = c.get("small_history") or (c.get("remote") or {}).get("small_history")
    if small:
        L.append(f"- markTrafficHistory = {small['markTrafficHistory']}: the log overflowed "
                 f"({small['sockets'].get('log_overflow', 0)} seconds counted, logged "
                 f"{small['overflow_logged']} time(s)); samples taken "
                 f"{fmt(small['flow_samples_taken'])}, outcomes {small['marking']}")
    L.append("")
    return L


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--results", required=True)
    a = ap.parse_args()
    d = a.out_dir
    rows = load(os.path.join(d, "results.jsonl")) or []
    prof = load(os.path.join(d, "profile.json"))
    pipe = load(os.path.join(d, "pipeline.json"))
    mark = load(os.path.join(d, "mark_cost.json"))
    churn = load(os.path.join(d, "mark_churn.json"))
    poll = load(os.path.join(d, "poll_cost.json"))
    collector = load(os.path.join(d, "collector_cost.json"))
    idle = load(os.path.join(d, "idle.json"))
    idle_all = load(os.path.join(d, "idle_all.json"))
    lat = load(os.path.join(d, "latency.json"))
    before = load(os.path.join(d, "results-before.jsonl")) or []
    pipe_before = load(os.path.join(d, "pipeline-before.json"))

    L = ["# Benchmark results", "",
         f"Written by `bench/run.sh` (bench/report.py) on "
         f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}.", "",
         f"- machine: {os.cpu_count()} CPUs (nproc), kernel {platform.release()}, "
         f"Python {platform.python_version()}, {platform.machine()}",
         f"- peer: pmacctd {pmacct_version()} with the sfprobe plugin, run in the same session "
         "over the same sweep (shared perf rig: generator on CPU 0, agent + collector on CPU 1)",
         "- CPU per sample = agent CPU (all its processes) / samples received by the collector, "
         "10 s steady-state window.  \"foreign CPU\" is load from other processes on this shared "
         "machine during the window (measure.py retries a point up to 3 times and keeps the "
         "least contended); figures move with it, ratios within one run are what count.", ""]

    found: dict[Any, Any] = {}
    if rows:
        L += ["## Rig sweep: hostsflow (pcap module, counters on) against pmacctd", ""]
        found = rig_section(rows, L)

    if before and rows:
        old = rig_figures(before)
        label_path = os.path.join(d, "results-before.label")
        label = open(label_path).read().strip() if os.path.exists(label_path) else "an earlier run"
        L += ["### Effect of the optimisations", "",
              f"\"before\" = {label}.  The two runs saw different foreign load on this shared "
              "machine (see the foreign CPU column of each run): per-sample figures move with it, "
              "the ratio to pmacctd of the same run is the fairer comparison.", "",
              "| N | offered pps (target) | us / sample before | after | pmacctd before | after "
              "| ratio before | after |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for (n, rate), (ours, peer, ratio) in found.items():
            if (n, rate) not in old:
                continue
            o, po, rb = old[(n, rate)]
            L.append(f"| {n} | {'gen max' if rate == 0 else f'{rate:,}'} "
                     f"| {fmt(o.get('us_per_sample'))} | {fmt(ours.get('us_per_sample'))} "
                     f"| {fmt(po.get('us_per_sample') if po else None)} "
                     f"| {fmt(peer.get('us_per_sample') if peer else None)} | {fmt(rb)} "
                     f"| {fmt(ratio)} |")
        L.append("")

    # ---------------------------------------------------------------- targets
    t = targets(found, mark, poll, idle, idle_all, lat, churn) + collector_targets(collector)
    prev_dir = os.path.join(d, "prev-session")
    prev = {name: load(os.path.join(prev_dir, name + ".json"))
            for name in ("mark_cost", "mark_churn", "poll_cost", "idle", "idle_all", "latency")}
    prev_rows = load(os.path.join(prev_dir, "results.jsonl")) or []
    before_fig = {name: fig for name, _, fig, _ in targets(
        rig_figures(prev_rows), prev["mark_cost"], prev["poll_cost"], prev["idle"],
        prev["idle_all"], prev["latency"], prev["mark_churn"])}
    label_path = os.path.join(prev_dir, "label")
    prev_label = open(label_path).read().strip() if os.path.exists(label_path) else ""
    L += ["## Targets", ""]
    if prev_label:
        L += [f"\"previous\" = {prev_label}.", ""]
    L += ["| target | detail | figure | previous | verdict |", "|---|---|---|---|---|"]
    L += [f"| {name} | {detail} | {fig} | {before_fig.get(name, '-')} | {verdict(ok)} |"
          for name, detail, fig, ok in t]
    L.append("")

    # ---------------------------------------------------------------- details
    if mark:
        L += ["## tcp + systemd markTraffic cost (bench/mark_cost.py)", "",
              f"{mark['sockets_open']:,} sockets open in a namespace; samples through phase 1, the "
              "sock_diag replies, phase 2 and the encoder; CPU = thread time, pooled over "
              f"{mark.get('rounds', 1)} rounds with fresh agents (record counts per round).", "",
              "- worst case: every sample a new connection (one local end, the client's, as a "
              "NIC's capture has it; no answer to reuse), one sample at a time" +
              (f", and the same fed {mark['batched']['batch']} samples per capture batch"
               if mark.get("batched") else ""),
              ]
        real = mark.get("realistic")
        if real:
            L.append(f"- realistic: {real.get('traffic', 'real TCP traffic')}; captured on lo, "
                     f"sampled 1 in {real.get('sampling')}, replayed in "
                     f"{real.get('window_s')} s capture batches "
                     f"({fmt(real.get('packets_captured'))} packets captured)")
        L += ["", "| case | agent | median us | p90 us | added (median) | extended_tcp_info "
              "| extended_entities |", "|---|---|---:|---:|---:|---:|---:|"]
        cases = [("worst case", mark)]
        if mark.get("batched"):
            cases.append((f"worst case, batches of {mark['batched']['batch']}", mark["batched"]))
        if real:
            cases.append(("realistic", real))
        for case, data in cases:
            for k in ("none", "tcp", "tcp+systemd"):
                m = data[k]
                L.append(f"| {case} | {k} | {m['median_us']} | {m['p90_us']} "
                         f"| {m.get('added_median_us', '-')} | {m['extended_tcp_info']} "
                         f"| {m['extended_entities']} |")
                case = ""
        L.append("")
    if churn:
        L += churn_section(churn)
    L += collector_section(collector)
    if poll:
        L += ["## Counter polling round (bench/poll_cost.py)", "",
              f"{poll['services']} services in real cgroups ({', '.join(poll['hierarchies'])}), "
              f"one process each.  CPU per round (all sources due): median "
              f"{poll['round_cpu_ms_median']} ms, all rounds {poll['round_cpu_ms_all']} ms.  "
              f"Unit list sync: {poll['unit_sync_cpu_ms']} ms.  Readings from: "
              f"{poll['sources_used']}.", ""]
    if lat:
        L += ["## Latency (bench/latency.py)", "", f"`{lat['config']}`", "",
              "| load | packets | matched | median s | p99 s | max s |", "|---|---:|---:|---:|---:|---:|"]
        for k in ("sparse", "busy"):
            x = lat[k]
            L.append(f"| {k} ({x['pps']} pps) | {x['sent']} | {x['matched']} | {x.get('median_s')} "
                     f"| {x.get('p99_s')} | {x.get('max_s')} |")
        L.append("")
    if pipe:
        L += ["## In-process per-sample path (bench/pipeline.py)", "",
              "Ring batch -> the pcap tap's PacketBatch -> encode -> UDP send (with a module's "
              "per-sample hooks: FlowSamples and the hooks in between), no kernel capture; best of "
              "several runs, process CPU time.", "", "| variant | us / sample |", "|---|---:|"]
        if pipe_before:
            L[-2:] = ["| variant | us / sample before | after |", "|---|---:|---:|"]
        for k, v in pipe.items():
            L.append(f"| {k} | {pipe_before.get(k, '-')} | {v} |" if pipe_before else f"| {k} | {v} |")
        L.append("")
    if prof:
        L += ["## Profile of the per-sample path (py-spy on the running agent)", "",
              f"`py-spy record` at 1 in 1, {prof['rate']}, {prof['seconds']} s: share of the "
              f"{prof['stacks_total'] - prof['stacks_idle_in_select']} stacks caught while the "
              "agent was on CPU (py-spy leaves idle waits out).  Time in C (struct.pack, "
              "socket.send, attrs-generated `__init__` bodies) counts as the Python function that "
              "called it: `UdpSender.send` is mostly the send() system call.", "",
              "| own time % | function |", "|---:|---|"]
        L += [f"| {v} | `{k}` |" for k, v in prof["own"]]
        L += ["", "| inclusive % | function |", "|---:|---|"]
        # frames under which nearly everything runs (runpy, the event loop) say nothing
        L += [f"| {v} | `{k}` |" for k, v in prof["inclusive"] if v < 95][:12]
        L.append("")
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis.md")
    if os.path.exists(notes):
        L += [open(notes).read().rstrip(), ""]
    with open(a.results, "w") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
