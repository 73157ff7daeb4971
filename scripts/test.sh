#!/usr/bin/env bash
# Run every test (core, modules, end-to-end) as root on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
mkdir -p tests/artifacts
python -m pytest -q -rs "$@"
