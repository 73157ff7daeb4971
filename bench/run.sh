#!/bin/bash
# bench/run.sh - the whole benchmark suite, as root; writes bench/RESULTS.md.
#
#   bench/run.sh                 everything (about 40 minutes on 2 cores; collector: 13)
#   STAGES="rig report" bench/run.sh   only some stages: rig tcp churn collector poll idle latency profile report
#   RATES=10000,50000,100000,0 SAMPLINGS="1 10" bench/run.sh
#
# pipeline: the per-sample path in one process, no kernel (bench/pipeline.py).
# rig:     our agent (pcap module) and pmacctd (sfprobe) over the same sweep with the shared
#          perf rig's measure.py (two namespaces joined by a veth pair, unique names).
# tcp:     tcp + systemd markTraffic cost per sample with 10,000 sockets open (own namespace).
# churn:   markTraffic off against on, real services calling and called 2,000 times a second.
# poll:    one counter polling round with 500 services (real cgroups, one process each).
# idle:    counters only, no traffic (bench/idle.py), and RSS with every in-repo module.
# latency: packet on the wire -> datagram at the collector.
# profile: py-spy on the agent at 1 in 1, generator max; top functions.
# report:  bench/report.py turns bench/out/*.json* into bench/RESULTS.md.
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH")
OUT=$BENCH/out
# the venv scripts/install.sh makes (core, modules), else whatever python3 is on the PATH
if [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; else PY=$(python3 -c 'import sys; print(sys.executable)'); fi
STAGES=${STAGES:-"pipeline rig tcp churn collector poll idle latency profile report"}
RATES=${RATES:-10000,50000,100000,0}
SAMPLINGS=${SAMPLINGS:-"1 10"}
TRIES=${TRIES:-2}                      # attempts per rate point while other load is seen
export RIG_QUIET_MAX=${RIG_QUIET_MAX:-40}  # seconds to wait for a quiet machine per point

[ "$(id -u)" = 0 ] || { echo "bench/run.sh: run as root (namespaces, capture)" >&2; exit 1; }

# the shared folder sits beside the repo in CI, at /work/shared here (as the tests look for it)
SHARED=""
for d in "$REPO/../shared" /work/shared; do
  if [ -f "$d/tools/perf-rig/measure.py" ]; then SHARED=$(cd "$d" && pwd); break; fi
done
[ -n "$SHARED" ] || { echo "bench/run.sh: shared/tools/perf-rig not found beside the repo nor at /work/shared" >&2; exit 1; }
RIG=$SHARED/tools/perf-rig

SUFFIX=$$
export RIG_NS_A=${RIG_NS_A:-hfA$SUFFIX}
export RIG_NS_B=${RIG_NS_B:-hfB$SUFFIX}
mkdir -p "$OUT"

cleanup() {
  RIG_NS_A=$RIG_NS_A RIG_NS_B=$RIG_NS_B "$RIG/rig.sh" down >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

has() { case " $STAGES " in *" $1 "*) return 0;; esac; return 1; }

# An installed package has its bytecode compiled (pip does it); an editable checkout run with
# PYTHONDONTWRITEBYTECODE=1 (as CI and containers often set) would compile every module at
# each start, which costs about 1 MB of RSS and start-up time that a real install does not pay.
"$PY" -m compileall -q "$REPO/core/hostsflow" "$REPO"/plugins/*/hostsflow_* >/dev/null

echo "== building the rig's C tools into $OUT"
cc -O2 -Wall -o "$OUT/udpgen" "$RIG/udpgen.c"
cc -O2 -Wall -o "$OUT/sfcount" "$RIG/sfcount.c"

if has pipeline; then
  echo "== pipeline: per-sample path in one process"
  a=$("$PY" "$BENCH/pipeline.py" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["us_per_sample_best"])')
  b=$("$PY" "$BENCH/pipeline.py" --noop-hooks | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["us_per_sample_best"])')
  echo "{\"no modules\": $a, \"one module with both per-sample hooks (no-op)\": $b}" > "$OUT/pipeline.json"
  cat "$OUT/pipeline.json"
fi

if has rig || has latency || has profile; then
  echo "== rig up: $RIG_NS_A / $RIG_NS_B"
  "$RIG/rig.sh" down >/dev/null 2>&1 || true
  "$RIG/rig.sh" up
fi

agent_conf() {  # $1 = sampling N
  cat > "$OUT/hostsflowd-n$1.conf" <<CONF
sflow {
  collector { ip = 127.0.0.1 udpport = 6343 }
  polling = 20
  sampling = $1
  pcap { dev = vethB sampling = $1 }
}
CONF
  echo "$OUT/hostsflowd-n$1.conf"
}

pmacct_conf() {  # $1 = sampling N
  cat > "$OUT/pmacctd-n$1.conf" <<CONF
daemonize: false
pcap_interface: vethB
plugins: sfprobe
sfprobe_receiver: 127.0.0.1:6343
snaplen: 128
sampling_rate: $1
CONF
  echo "$OUT/pmacctd-n$1.conf"
}

if has rig; then
  : > "$OUT/results.jsonl"
  for n in $SAMPLINGS; do
    conf=$(agent_conf "$n")
    echo "== rig: hostsflow pcap 1 in $n"
    "$PY" "$BENCH/rig_measure.py" "$RIG" --label "hostsflow-n$n" --sampling "$n" --rates "$RATES" \
      --bin-dir "$OUT" --out "$OUT/results.jsonl" --workdir "$OUT" --idle 10 --tries "$TRIES" -- \
      "$PY" -m hostsflow -f "$conf" --status-file "$OUT/status-n$n.json"
    conf=$(pmacct_conf "$n")
    echo "== rig: pmacctd sfprobe 1 in $n"
    "$PY" "$BENCH/rig_measure.py" "$RIG" --label "pmacctd-n$n" --sampling "$n" --rates "$RATES" \
      --bin-dir "$OUT" --out "$OUT/results.jsonl" --workdir "$OUT" --idle 10 --tries "$TRIES" -- \
      pmacctd -f "$conf"
  done
fi

export PATH="$(dirname "$PY"):$PATH"  # the venv's tools (py-spy) before the system's
if has profile || has churn; then
  command -v py-spy >/dev/null || "$PY" -m pip install -q 'py-spy>=0.3,<1'
fi

if has profile; then
  echo "== profile: py-spy on the agent, 1 in 1, generator max"
  "$PY" "$BENCH/profile_agent.py" --bin-dir "$OUT" --out "$OUT/profile.json" \
    --conf "$(agent_conf 1)" --python "$PY"
fi

if has latency; then
  echo "== latency: packet -> datagram"
  ip netns exec "$RIG_NS_B" "$PY" "$BENCH/latency.py" --out "$OUT/latency.json"
fi

if has tcp; then
  echo "== tcp + systemd markTraffic cost per sample, 10,000 sockets"
  "$PY" "$BENCH/mark_cost.py" --out "$OUT/mark_cost.json"
fi

if has churn; then
  echo "== markTraffic with 2,000 new short connections a second, off against on"
  "$PY" "$BENCH/mark_churn.py" --out "$OUT/mark_churn.json"
fi

if has collector; then
  echo "== the fleet collector at 100 agents x 500 samples/s, against sfacctd"
  "$PY" "$BENCH/collector_cost.py" --out "$OUT/collector_cost.json"
fi

if has poll; then
  echo "== counter polling round, 500 services"
  "$PY" "$BENCH/poll_cost.py" --services 500 --out "$OUT/poll_cost.json"
fi

if has idle; then
  echo "== idle, counters only (60 s) and every in-repo module"
  "$PY" "$BENCH/idle.py" --seconds "${IDLE_SECONDS:-60}" > "$OUT/idle.json"
  "$PY" "$BENCH/idle.py" --seconds 20 --all > "$OUT/idle_all.json"
fi

if has report; then
  "$PY" "$BENCH/report.py" --out-dir "$OUT" --results "$BENCH/RESULTS.md"
  echo "== wrote $BENCH/RESULTS.md"
fi
