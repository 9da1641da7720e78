#!/usr/bin/env bash
# Set up the venv (idempotent) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_venv.sh"
venv="${SFDFUSE_VENV:-$root/.venv}"
# DDS traffic of the tests stays on this machine; large best-effort images need the SHM profile.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE="$root/config/fastdds_profile.xml"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( ($$ % 100) + 1 ))}"
cd "$root"
exec "$venv/bin/python" -m pytest "$@"   # no paths given: pytest.ini testpaths (test/)
