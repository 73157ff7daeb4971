#!/usr/bin/env bash
# The quick start's config on stdout: host and interface counters, pcap on the default-route
# device, tcp; for the view and top also pcap on lo and systemd { markTraffic = on }, and with
# --demo-dev a pcap block on the demo's veth (scripts/demo_traffic.py), sampling 1 in 10 there.
#   quickstart-config.sh decode|view|top [--collector IP:PORT] [--demo-dev DEV]
set -euo pipefail
usage() { echo "usage: $0 decode|view|top [--collector IP:PORT] [--demo-dev DEV]" >&2; exit 2; }
mode=${1:-}
case "$mode" in decode|view|top) shift ;; *) usage ;; esac
collector=127.0.0.1:6343
demo_dev=
while [ $# -gt 0 ]; do
  case "$1" in
    --collector) collector=${2:?}; shift 2 ;;
    --demo-dev) demo_dev=${2:?}; shift 2 ;;
    *) usage ;;
  esac
done
dev=$(ip -o route show default 2>/dev/null | awk '{print $5; exit}')
echo "sflow {"
echo "  collector { ip = ${collector%:*} udpport = ${collector##*:} }"
echo "  polling = 5"
echo "  sampling = 100"
[ -n "$dev" ] && echo "  pcap { dev = $dev }"
echo "  tcp { }"
if [ "$mode" != decode ]; then
  echo "  pcap { dev = lo }            # services talking to each other on this host"
  [ -n "$demo_dev" ] && echo "  pcap { dev = $demo_dev sampling = 10 }   # the demo's remote network"
  echo "  systemd { markTraffic = on }"
fi
echo "}"
