#!/usr/bin/env bash
# Run the worker on a fresh machine: installs into .venv, builds the offline demo assets
# (demo models, demo MPTA, sample video) on first use, and serves on port 8000.
# Arguments go to `pytrickle-worker serve` (e.g. --port 9000, --config FILE, --no-demo).
# --demo-camera analyses the sample video as camera demo;sample, so http://127.0.0.1:8000/live
# shows it at once; pass --no-demo-camera to start without it.
# Once it listens, the worker logs the URLs to try (health, the CMS WebSocket, the stream API).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
echo "run: starting .venv/bin/pytrickle-worker serve --demo-camera $* (Ctrl-C stops it)"
exec .venv/bin/pytrickle-worker serve --demo-camera "$@"
