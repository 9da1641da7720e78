#!/usr/bin/env bash
# The demo: set up the venv (idempotent), then run `sfdfuse demo` (arguments are passed on, e.g.
# --ir DIR --vi DIR, --method mean, --out DIR). Outputs land in out/demo/ by default.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_venv.sh"
venv="${SFDFUSE_VENV:-$root/.venv}"
cd "$root"
exec "$venv/bin/sfdfuse" demo "$@"
