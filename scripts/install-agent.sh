#!/usr/bin/env bash
# Install the agent on a host (root, Debian 12): a virtualenv at PREFIX (default /opt/hostsflow)
# with the core and every in-repo module (not editable, no test or view extras), hostsflowd and
# hostsflow linked into /usr/local/bin, and packaging/hostsflowd.service installed as
# /etc/systemd/system/hostsflowd.service (not enabled: `systemctl enable --now hostsflowd`).
# The config stays yours: /etc/hsflowd.conf, hsflowd's file, read unchanged.
#
#   sudo bash scripts/install-agent.sh [--prefix DIR] [--no-apt]
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=/opt/hostsflow
APT=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --no-apt) APT=0; shift ;;
    *) echo "usage: $0 [--prefix DIR] [--no-apt]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "$0: run as root" >&2; exit 1; }

if [ "$APT" = 1 ]; then
  # what the agent itself needs: a venv, libpcap for the pcap module (pcapy-ng's wheel brings
  # its own, the package keeps the system's for anything built from source)
  missing=()
  for p in python3-venv libpcap0.8; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# Debian's interpreter: installed where the user the agent drops to can read it
PY=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
[ -x "$PREFIX/bin/python" ] || "$PY" -m venv "$PREFIX"
modules=()
for d in plugins/*/; do
  [ -f "$d/pyproject.toml" ] && modules+=("$d")
done
# a build directory of pip's own: the source tree may be read-only
export PIP_DISABLE_PIP_VERSION_CHECK=1
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r pyproject.toml README.md core plugins "$build"/
find "$build" -name '*.egg-info' -prune -exec rm -rf {} + -o -name __pycache__ -prune -exec rm -rf {} +
(cd "$build" && "$PREFIX/bin/python" -m pip install -q . "${modules[@]}")
"$PREFIX/bin/python" -m compileall -q "$PREFIX/lib" >/dev/null || true
chmod -R a+rX "$PREFIX"

ln -sf "$PREFIX/bin/hostsflowd" /usr/local/bin/hostsflowd
ln -sf "$PREFIX/bin/hostsflow" /usr/local/bin/hostsflow
install -m 0644 packaging/hostsflowd.service /etc/systemd/system/hostsflowd.service
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
echo "installed hostsflow into $PREFIX: $("$PREFIX/bin/python" -m pip list 2>/dev/null | grep -ci hostsflow) distributions; unit /etc/systemd/system/hostsflowd.service"
