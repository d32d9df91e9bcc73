# Sourced by the project's commands: `ensure_venv` creates (or reuses) the
# virtual environment .venv/ in the repo root and installs the project into it.
# The install is skipped while the files that define it are unchanged (a stamp
# in .venv/ records their hash); PYTHON picks the interpreter (default python3).

ensure_venv() {
  local root stamp want
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  stamp="$root/.venv/.tensormask-install-stamp"
  want="$(cat "$root/setup.py" | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$root/.venv/bin/python" ]; then
    echo "[venv] creating $root/.venv with ${PYTHON:-python3}" >&2
    "${PYTHON:-python3}" -m venv "$root/.venv" || {
      echo "[venv] ERROR: could not create the virtual environment" >&2; return 1; }
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[venv] installing tensormask-tf and its dependencies (first run: a few minutes, ~3 GB)" >&2
    "$root/.venv/bin/python" -m pip install -q --upgrade pip &&
      "$root/.venv/bin/python" -m pip install -q -e "$root[test]" || {
        echo "[venv] ERROR: pip install failed (see above)" >&2; return 1; }
    echo "$want" > "$stamp"
  fi
}
