#!/usr/bin/env bash
# Idempotent set-up shared by run.sh and test.sh: a virtualenv in .venv with the project
# installed (editable) plus the extras named in $1 (e.g. "demo" or "dev,demo").
# pip's output goes to .venv/install.log; it is shown only when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: Python >= 3.11 is required ($("$python" --version 2>&1) found)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$python" --version 2>&1)"
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
    log=.venv/install.log
    if compgen -G ".venv/.installed-*" >/dev/null; then
        echo "setup: pyproject.toml or the extras changed; updating .venv (pytrickle-worker[${extras}])…"
    else
        echo "setup: installing pytrickle-worker[${extras}] into .venv (first run, ~30 s)…"
    fi
    if ! {
        .venv/bin/python -m pip install --upgrade pip \
            && .venv/bin/python -m pip install -e ".[${extras}]"
    } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "error: installing into .venv failed; the whole pip log is in $log" >&2
        exit 1
    fi
    touch "$stamp"
    echo "setup: done (pip's log: $log)"
fi
