#!/usr/bin/env bash
# Set up hostsflow and run it on a quick-start config (scripts/quickstart-config.sh): host and
# interface counters (and, with pcap, sampled packets) sent to a local `hostsflow decode`, which
# prints every sample as it arrives.
# With --view: the config also marks traffic by systemd service (systemd { markTraffic = on })
# and `hostsflow view` shows it as a live chart on http://127.0.0.1:8008/ (--top: in the terminal).
# The view and top also start demo traffic (scripts/demo_traffic.py): a web service and a polling
# service on this host with clients in a network namespace behind the veth hfdemo0, so the chart
# names services and the TCP table fills; --no-demo leaves it out (only this host's own traffic).
# Ctrl-C stops everything, the demo's namespace, veth and units included.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=decode
demo=on
for arg in "$@"; do
  case "$arg" in
    --view) mode=view ;;
    --top) mode=top ;;
    --no-demo) demo=off ;;
    *) echo "usage: $0 [--view|--top] [--no-demo]" >&2; exit 2 ;;
  esac
done
bash scripts/install.sh
. .venv/bin/activate
pids=()
demo_dev=
made_conf=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$demo_dev" ]; then python3 scripts/demo_traffic.py stop || true; fi
  if [ -n "$made_conf" ]; then rm -f "$made_conf"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "$mode" != decode ] && [ "$demo" = on ]; then
  if python3 scripts/demo_traffic.py start; then
    demo_dev=hfdemo0
  else
    echo "quickstart: going on without the demo traffic" >&2
  fi
fi
conf=${HOSTSFLOW_CONF:-$(mktemp --suffix=.conf)}
if [ -z "${HOSTSFLOW_CONF:-}" ]; then
  made_conf=$conf
  bash scripts/quickstart-config.sh "$mode" ${demo_dev:+--demo-dev "$demo_dev"} > "$conf"
fi
echo "config: $conf"; cat "$conf"
case "$mode" in
  decode) hostsflow decode --listen 127.0.0.1:6343 & pids+=($!) ;;
  view)
    hostsflow view --listen-sflow 127.0.0.1:6343 --http 127.0.0.1:8008 & pids+=($!)
    if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && command -v xdg-open >/dev/null; then
      (sleep 2; xdg-open http://127.0.0.1:8008/ >/dev/null 2>&1 || true) &
    fi ;;
  top)
    hostsflowd -f "$conf" >/tmp/hostsflowd.log 2>&1 & pids+=($!)
    echo "agent log: /tmp/hostsflowd.log"
    hostsflow top --listen-sflow 127.0.0.1:6343
    exit 0 ;;
esac
hostsflowd -f "$conf"
