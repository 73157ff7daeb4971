#!/usr/bin/env bash
# Set up hostsflow and run it on a quick-start config: host and interface counters (and, with
# pcap, sampled packets) sent to a local `hostsflow decode`, which prints every sample as it arrives.
# With --view: the config also marks traffic by systemd service (systemd { markTraffic = on })
# and `hostsflow view` shows it as a live chart on http://127.0.0.1:8008/ (--top: in the terminal).
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=decode
case "${1:-}" in
  --view) mode=view ;;
  --top) mode=top ;;
  "") ;;
  *) echo "usage: $0 [--view|--top]" >&2; exit 2 ;;
esac
bash scripts/install.sh
. .venv/bin/activate
conf=${HOSTSFLOW_CONF:-$(mktemp --suffix=.conf)}
if [ -z "${HOSTSFLOW_CONF:-}" ]; then
  dev=$(ip -o route show default 2>/dev/null | awk '{print $5; exit}')
  {
    echo "sflow {"
    echo "  collector { ip = 127.0.0.1 udpport = 6343 }"
    echo "  polling = 5"
    echo "  sampling = 100"
    [ -n "$dev" ] && echo "  pcap { dev = $dev }"
    echo "  tcp { }"
    if [ "$mode" != decode ]; then
      echo "  pcap { dev = lo }            # services talking to each other on this host"
      echo "  systemd { markTraffic = on }"
    fi
    echo "}"
  } > "$conf"
fi
echo "config: $conf"; cat "$conf"
case "$mode" in
  decode) hostsflow decode --listen 127.0.0.1:6343 & ;;
  view)
    hostsflow view --listen-sflow 127.0.0.1:6343 --http 127.0.0.1:8008 &
    if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && command -v xdg-open >/dev/null; then
      (sleep 2; xdg-open http://127.0.0.1:8008/ >/dev/null 2>&1 || true) &
    fi ;;
  top)
    hostsflowd -f "$conf" >/tmp/hostsflowd.log 2>&1 &
    agent=$!
    trap 'kill $agent 2>/dev/null' EXIT
    echo "agent log: /tmp/hostsflowd.log"
    hostsflow top --listen-sflow 127.0.0.1:6343
    exit 0 ;;
esac
decoder=$!
trap 'kill $decoder 2>/dev/null' EXIT
hostsflowd -f "$conf"
