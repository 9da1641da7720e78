#!/usr/bin/env bash
# Regenerate docs/RELIABILITY.md: the 10-minute soak, the 200 Hz burst run, and the reliability
# test files scaled up (run_checks.py). About 20 minutes on a 2-core machine; --quick: the
# suite's sizes and a 60 s soak (about 5 minutes). Raw results: out/reliability/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${SFDFUSE_VENV:-$root/.venv}/bin/python"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE="$root/config/fastdds_profile.xml"
cd "$root"
soak_s=600
checks=()
if [[ "${1:-}" == "--quick" ]]; then
    soak_s=60
    checks=(--quick)
fi
status=0
"$py" scripts/reliability/soak.py --duration "$soak_s" || status=1
"$py" scripts/reliability/soak.py --duration 60 --burst || status=1
"$py" scripts/reliability/run_checks.py "${checks[@]}" || status=1
echo "docs/RELIABILITY.md updated (exit status $status)"
exit $status
