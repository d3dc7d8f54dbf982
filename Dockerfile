# syntax=docker/dockerfile:1.7
#
# pytrickle-worker images (docs/DEPLOY.md). Two runtime targets:
#
#   gpu  (the default: the last stage) CUDA 13 + cuDNN 9 runtime, onnxruntime-gpu
#        docker build -t ghcr.io/pytrickle/pytrickle-worker:0.1.0 .
#   cpu  python slim, onnxruntime (CPU only)
#        docker build --target cpu -t ghcr.io/pytrickle/pytrickle-worker:0.1.0-cpu .
#
# Both run `pytrickle-worker serve` on port 8000 as UID 10001, keep MPTA downloads, the demo
# assets and the TensorRT engine cache in the volume /var/cache/pytrickle-worker, and carry
# the demo extra (onnx) and examples/ for the compose `demo` profile. PyAV's wheels bundle
# FFmpeg, so no system ffmpeg is installed. Other libraries' caches (onnxruntime's) go to
# XDG_CACHE_HOME under /tmp, so the root filesystem may be read-only. Needs BuildKit (the
# default since Docker 23).

ARG ORT_GPU_VERSION=1.31.1

# ---- build: wheels of the project and every dependency ----------------------------------
FROM python:3.12.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pytrickle_worker/ pytrickle_worker/
COPY processors/ processors/
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels ".[demo]"

# ---- build-gpu: the same wheels plus onnxruntime-gpu (a CUDA 13 + cuDNN 9 build) ---------
FROM build AS build-gpu
ARG ORT_GPU_VERSION
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels \
        --find-links /wheels ".[gpu,demo]" "onnxruntime-gpu==${ORT_GPU_VERSION}"

# ---- cpu: `docker build --target cpu` ---------------------------------------------------
FROM python:3.12.11-slim-bookworm AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PTW_CACHE_DIR=/var/cache/pytrickle-worker \
    XDG_CACHE_HOME=/tmp/.cache \
    PTW_HOST=0.0.0.0 \
    PTW_PORT=8000
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /wheels "pytrickle-worker[demo]==0.1.0" \
    && groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/worker --create-home \
        --shell /usr/sbin/nologin worker \
    && mkdir -p /var/cache/pytrickle-worker \
    && chown 10001:10001 /var/cache/pytrickle-worker
WORKDIR /app
COPY examples/ /app/examples/
USER 10001:10001
VOLUME ["/var/cache/pytrickle-worker"]
EXPOSE 8000
STOPSIGNAL SIGTERM
# /health answers 200 in every state (the state is in its body): healthy while the process answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PTW_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["pytrickle-worker"]
CMD ["serve"]

# ---- gpu (default): CUDA 13 + cuDNN 9 runtime, onnxruntime-gpu ---------------------------
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS gpu
ARG ORT_GPU_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PTW_CACHE_DIR=/var/cache/pytrickle-worker \
    XDG_CACHE_HOME=/tmp/.cache \
    PTW_HOST=0.0.0.0 \
    PTW_PORT=8000 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
# Ubuntu 24.04's python3 is 3.12, the same minor version the wheels were built for. Its
# packages are not pinned: the Ubuntu archive drops superseded versions, so a pin would break
# the build within weeks; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# onnxruntime and onnxruntime-gpu ship the same `onnxruntime` module, so the CPU package must
# not be installed beside the GPU one: install everything, remove both, then put back only
# onnxruntime-gpu (its dependencies are already there), and check the CUDA provider is in.
RUN --mount=type=bind,from=build-gpu,source=/wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /wheels "pytrickle-worker[gpu,demo]==0.1.0" \
    && /opt/venv/bin/pip uninstall --yes --disable-pip-version-check onnxruntime onnxruntime-gpu \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /wheels --no-deps "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && /opt/venv/bin/python -c "import onnxruntime as o; p = o.get_available_providers(); assert 'CUDAExecutionProvider' in p, p" \
    && groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/worker --create-home \
        --shell /usr/sbin/nologin worker \
    && mkdir -p /var/cache/pytrickle-worker \
    && chown 10001:10001 /var/cache/pytrickle-worker
WORKDIR /app
COPY examples/ /app/examples/
USER 10001:10001
VOLUME ["/var/cache/pytrickle-worker"]
EXPOSE 8000
STOPSIGNAL SIGTERM
# /health answers 200 in every state (the state is in its body): healthy while the process answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PTW_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["pytrickle-worker"]
CMD ["serve"]
