#!/usr/bin/env bash
# Idempotent set-up shared by run.sh and test.sh: a virtualenv in .venv with the project
# installed (editable) plus the extras named in $1 (e.g. "demo" or "dev,demo").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: Python >= 3.11 is required ($("$python" --version 2>&1) found)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[${extras}]"
    touch "$stamp"
fi
