# Sourced by the project's commands: `ensure_venv` creates (or reuses) the
# virtual environment .venv/ in the repo root, installs the project into it,
# and builds the custom-op library for the installed TensorFlow.
# The pip install is skipped while setup.py is unchanged (a stamp in .venv/
# records its hash); the library build is skipped while it is up to date
# (custom_ops/build.py checks its record). PYTHON picks the interpreter
# (default python3); TENSORMASK_BUILD_CUDA=auto|on|off the CUDA kernels.

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
  "$root/.venv/bin/python" "$root/custom_ops/build.py" || {
    echo "[venv] ERROR: building the custom-op library failed (see above)" >&2; return 1; }
}
