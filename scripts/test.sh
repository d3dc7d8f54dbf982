#!/usr/bin/env bash
# Run every check: ruff (lint + format), pyright strict, then the whole pytest suite.
# Installs what it needs (virtualenv, Python packages, Debian packages for the test servers).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# tests/test_live_page.py drives Debian's Chromium with Playwright (no browser download).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# The RTSP test server (tests/servers/rtsp_server.py) runs under the Debian system Python with
# GStreamer's GObject bindings: videotestsrc/appsrc (base), x264enc (ugly), h264parse (bad),
# rtph264pay/qtdemux (good), gst-rtsp-server. `--check` exits 0 when all of it is there.
gst_packages=(
    python3 python3-gi python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gir1.2-gst-plugins-base-1.0
    gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
)
if ! { [ -x /usr/bin/python3 ] \
    && /usr/bin/python3 tests/servers/rtsp_server.py --check >/dev/null 2>&1 \
    && command -v gst-inspect-1.0 >/dev/null 2>&1 \
    && gst-inspect-1.0 x264enc >/dev/null 2>&1; }; then
    need_apt+=("${gst_packages[@]}")
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need_apt[*]}"
    if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

bash scripts/setup.sh dev,demo
# shellcheck disable=SC1091
source .venv/bin/activate

echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== pyright (strict)"; pyright
echo "== import contract"; lint-imports
echo "== pytest"; python -m pytest "$@"
