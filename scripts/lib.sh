# Shared by the scripts in this folder (sourced, never run): help from each
# script's header comment, preflight checks with one-line errors, the test
# virtualenv.

# The header comment of the calling script, without the `#`: from the line
# after the shebang to the first line that isn't a comment. No line numbers,
# so the help can't be cut or run into the code.
usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# `--help` or `-h` as the first argument prints the usage and exits.
handle_help() {
  case "${1:-}" in -h|--help) usage; exit 0 ;; esac
}

die() {
  echo "error: $*" >&2
  exit 1
}

need_docker() {
  command -v docker >/dev/null || die "docker is not installed"
  docker compose version >/dev/null 2>&1 || die "Docker Compose v2 (docker compose) is not available"
  docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (is dockerd running?)"
}

need_python() {
  command -v "${PYTHON:-python3}" >/dev/null || die "${PYTHON:-python3} is not installed"
}

# .venv-tests: the test client, the server's pinned dependencies (for the unit
# tests of its code) and the trainer package; rebuilt when a pin changes.
ensure_test_venv() {
  local root=$1 venv=$1/.venv-tests
  local stamp=$venv/.requirements.sha256 want
  want=$(cd "$root" && cat tests/requirements.txt mlflow-server/requirements.txt \
    mlflow-server/tests/requirements.txt trainer/pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[test] installing the test client and the server's dependencies into .venv-tests"
    "${PYTHON:-python3}" -m venv "$venv"
    (cd "$root" && "$venv/bin/pip" install --quiet --disable-pip-version-check \
      -r tests/requirements.txt -r mlflow-server/tests/requirements.txt)
    echo "$want" > "$stamp"
  fi
}
