"""``ModelRegistry``: one warmed-up session per (model content, provider), reference counted.

Pipelines that use the same model file (or the same bytes under another name) share one
:class:`OnnxModel`. ``acquire`` is blocking (hashing, session creation, warm-up): call it
from a worker thread (``asyncio.to_thread``). Concurrent acquires of the same content load
it once: a per-key lock serialises them while other keys load in parallel.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from pytrickle_worker.core.errors import ModelError
from pytrickle_worker.engine.inference.batching import BatchCoordinator
from pytrickle_worker.engine.inference.model import InferenceObserver, OnnxModel, file_sha256
from pytrickle_worker.engine.inference.providers import ProviderChoice

__all__ = ["LoadedModelStats", "ModelRegistry"]

logger = logging.getLogger(__name__)

_Key = tuple[str, str]  # (sha256, provider chain name)


class LoadedModelStats(TypedDict):
    """One row of :meth:`ModelRegistry.stats` (JSON-serialisable)."""

    path: str
    sha256: str
    contract: str
    task: str
    classes: int
    input_size: list[int]
    provider: str
    refs: int
    load_ms: float
    warmup_ms: float
    loaded_at: float


@dataclass(slots=True)
class _Entry:
    key: _Key
    model: OnnxModel
    refs: int
    loaded_at: float


class ModelRegistry:
    """Loads each model once per (sha256, provider) and shares it until the last release."""

    def __init__(
        self,
        providers: ProviderChoice,
        *,
        warmup: bool = True,
        observer: InferenceObserver | None = None,
        batching: BatchCoordinator | None = None,
        max_batch: int = 1,
        pad_to_sizes: bool | None = False,
    ) -> None:
        """``batching``/``max_batch``: the scheduler's run slots, and the batch size to use
        for models with a dynamic batch axis (every loaded model is batched through them);
        ``pad_to_sizes``: their batches are padded to a few warmed-up sizes; None: where a
        model's session runs on a GPU provider (:meth:`OnnxModel.enable_batching`)."""
        self.providers = providers
        self._warmup = warmup
        self._observer = observer
        self._batching = batching
        self.max_batch = max_batch
        self.pad_to_sizes = pad_to_sizes
        self._lock = threading.Lock()
        self._key_locks: dict[_Key, threading.Lock] = {}
        self._entries: dict[_Key, _Entry] = {}
        self._by_model: dict[int, _Entry] = {}
        self._loads = 0

    def _key_lock(self, key: _Key) -> threading.Lock:
        with self._lock:
            lock = self._key_locks.get(key)
            if lock is None:
                lock = self._key_locks[key] = threading.Lock()
            return lock

    def acquire(self, path: str | Path) -> OnnxModel:
        """The model at ``path``, loaded (and warmed up) on first use; release it when done.

        Raises :class:`ModelError` when the file is missing, not ONNX or unsupported.
        """
        model_path = Path(path)
        if model_path.suffix.lower() == ".onnx":
            try:
                sha256 = file_sha256(model_path)
            except FileNotFoundError as exc:
                raise ModelError(f"model file '{model_path}' does not exist") from exc
            except OSError as exc:
                raise ModelError(f"cannot read model file '{model_path}': {exc}") from exc
        else:
            sha256 = ""  # OnnxModel raises the "export it to ONNX" error
        key: _Key = (sha256, self.providers.name)
        with self._key_lock(key):
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.refs += 1
                    logger.debug("%s: shared (%d users)", model_path.name, entry.refs)
                    return entry.model
            # Load outside the registry lock: other models load in parallel.
            model = OnnxModel(
                model_path,
                self.providers,
                sha256=sha256,
                warmup=self._warmup,
                max_batch=self.max_batch,
            )
            if self._batching is not None:
                model.enable_batching(
                    self._batching, self.max_batch, pad_to_sizes=self.pad_to_sizes
                )
            with self._lock:
                model.observer = self._observer  # after the warm-up: only real runs count
                entry = _Entry(key, model, 1, time.time())
                self._entries[key] = entry
                self._by_model[id(model)] = entry
                self._loads += 1
            return model

    def release(self, model: OnnxModel) -> None:
        """Give back one reference; the last one closes the session."""
        with self._lock:
            entry = self._by_model.get(id(model))
            if entry is None or entry.model is not model:
                logger.warning("release of a model this registry does not hold: %r", model)
                return
            entry.refs -= 1
            if entry.refs > 0:
                return
            del self._by_model[id(model)]
            del self._entries[entry.key]
        model.close()
        logger.info("unloaded %s", model.path.name)

    def set_observer(self, observer: InferenceObserver | None) -> None:
        """Observe every ``session.run`` of the loaded models and of those loaded later."""
        with self._lock:
            self._observer = observer
            for entry in self._entries.values():
                entry.model.observer = observer

    @property
    def loaded_count(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def total_loads(self) -> int:
        """Sessions created since start (a reload after a full release counts again)."""
        with self._lock:
            return self._loads

    def refcount(self, model: OnnxModel) -> int:
        with self._lock:
            entry = self._by_model.get(id(model))
            return entry.refs if entry is not None and entry.model is model else 0

    def stats(self) -> list[LoadedModelStats]:
        """One JSON-friendly row per loaded model."""
        with self._lock:
            entries = list(self._entries.values())
        rows: list[LoadedModelStats] = []
        for entry in entries:
            info = entry.model.info
            rows.append(
                {
                    "path": str(info.path),
                    "sha256": info.sha256,
                    "contract": info.contract.value,
                    "task": info.task,
                    "classes": info.nc,
                    "input_size": list(info.input_size),
                    "provider": info.provider,
                    "refs": entry.refs,
                    "load_ms": round(entry.model.load_ms, 1),
                    "warmup_ms": round(entry.model.warmup_ms, 1),
                    "loaded_at": entry.loaded_at,
                }
            )
        return rows

    def close(self) -> None:
        """Close every session regardless of references (process shutdown)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._by_model.clear()
        for entry in entries:
            entry.model.close()
