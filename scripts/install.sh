#!/usr/bin/env bash
# Set up everything hostsflow and its tests need on a fresh Debian 12 machine (run as root):
# Debian packages (third-party decoders, nftables, iproute2, systemd, D-Bus, a C compiler),
# then a virtualenv at .venv with the core and every in-repo module installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv gcc libc6-dev            # venv; the C traffic generator used by tests and bench
  iproute2 ethtool iputils-ping         # namespaces, veth, offloads
  nftables iptables                     # NFLOG rules, packet drops in tcp tests
  tshark nfdump-sflow pmacct            # independent sFlow decoders
  systemd dbus                          # a real systemd --user and dbus-daemon for the systemd module
  procps                                # ss is in iproute2; ps/pkill for tests
  chromium chromium-driver              # headless browser for the hostsflow view page test
  mmdebstrap systemd-container          # booted Debian containers (tests/booted_kit.py)
  prometheus                            # a real Prometheus scraping collectors (fleet tests)
  dnsmasq-base                          # dnsmasq, a real DNS server for the DNS-SD tests (no service)
)
if [ "${HOSTSFLOW_SKIP_APT:-}" != 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# Debian's interpreter by default: installed where an unprivileged user can read it, so the
# agent can drop root after start-up (dropPriv) and still import what it needs.
PY=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
modules=()
for d in plugins/*/ examples/*/; do
  [ -f "$d/pyproject.toml" ] && modules+=(-e "$d")
done
python -m pip install -q -e ".[test,view]" "${modules[@]}"
echo "installed: $(python -m pip list 2>/dev/null | grep -ci hostsflow) hostsflow distributions in .venv"
