#!/usr/bin/env bash
# Run the worker on a fresh machine: installs into .venv, builds the offline demo assets
# (demo models, demo MPTA, sample video) on first use, and serves on port 8000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec .venv/bin/pytrickle-worker serve "$@"
