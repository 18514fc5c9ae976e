# Sourced by scripts/demo and scripts/test: create or reuse .venv and install what it needs.
# Versions come from constraints.txt (torch is pinned there: an unpinned torch would pull
# the multi-GB CUDA build).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ATTEND_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "attend: creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
# Reinstall only when what we install from changed.
stamp="$venv/.attend-stamp"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -d' ' -f1) ${ATTEND_EXTRAS:-test,translate,viz}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "attend: installing into $venv" >&2
  "$venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" -e "$root[${ATTEND_EXTRAS:-test,translate,viz}]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
