#!/usr/bin/env bash
# Run every check: ruff (lint + format), pyright strict, then the whole pytest suite.
# Installs what it needs (virtualenv, Python packages, Debian packages for the test servers).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need_apt[*]}"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

bash scripts/setup.sh dev,demo
# shellcheck disable=SC1091
source .venv/bin/activate

echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== pyright (strict)"; pyright
echo "== pytest"; python -m pytest "$@"
