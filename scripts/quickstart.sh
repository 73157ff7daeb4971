#!/usr/bin/env bash
# Set up hostsflow and run it on a quick-start config: host and interface counters (and, with
# pcap, sampled packets) sent to a local `hostsflow decode`, which prints every sample as it arrives.
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
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
    echo "}"
  } > "$conf"
fi
echo "config: $conf"; cat "$conf"
hostsflow decode --listen 127.0.0.1:6343 &
decoder=$!
trap 'kill $decoder 2>/dev/null' EXIT
hostsflowd -f "$conf" --status-file /tmp/hostsflow-status.json
