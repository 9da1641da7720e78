#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the package into it.
# Idempotent: a stamp file records the hash of the install inputs; nothing is reinstalled when
# they have not changed. Override the interpreter with PYTHON=..., the venv with SFDFUSE_VENV=...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SFDFUSE_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
torch_spec="${SFDFUSE_TORCH:-torch==2.13.0}"
extras="${SFDFUSE_EXTRAS:-ros,dev}"
if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating virtual environment $venv" >&2
    "$python" -m venv "$venv"
fi
stamp="$venv/.sfdfuse-installed"
want="$(cat "$root/setup.py" "$root/package.xml" "$0" | sha256sum | cut -d' ' -f1) $torch_spec $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "[setup] installing $torch_spec and sfdfuse_ros[$extras] into $venv" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$torch_spec"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[$extras]"
echo "$want" > "$stamp"
