"""The processor registry: processors chosen by name, one module each in ``processors/``.

A module of this package that defines ``create_processor(deps) -> FrameProcessor`` is a
processor; its name is the module's ``PROCESSOR_NAME`` (else the module's name). Nothing
registers itself at import: :func:`discover_processors` builds the name → factory dict,
and the app keeps it.

The stream door runs the processor named by ``stream_processor`` (``PTW_STREAM_PROCESSOR``,
default ``mpta``). The CMS door runs MPTA for an archive ``modelUrl``, and the processor
named by a ``modelUrl`` of the form ``processor://NAME?key=value&...`` (each value read as
JSON when it parses, else as a string) — see :func:`parse_processor_url`.
"""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.engine.mpta.policy import ModelUrlPolicy
from pytrickle_worker.engine.mpta.service import PipelineService
from pytrickle_worker.processing import FrameProcessor

logger = logging.getLogger(__name__)

__all__ = [
    "PROCESSOR_SCHEME",
    "ProcessorDeps",
    "ProcessorFactory",
    "UnknownProcessorError",
    "discover_processors",
    "lookup",
    "parse_processor_url",
]

#: The ``modelUrl`` scheme that names a processor instead of an MPTA archive.
PROCESSOR_SCHEME = "processor"
#: Modules of ``processors/`` that are steps or plumbing, not processors.
_NOT_PROCESSORS = frozenset({"annotate", "registry"})


@dataclass(frozen=True)
class ProcessorDeps:
    """What a processor factory may use: the worker's shared parts."""

    service: PipelineService
    model_urls: ModelUrlPolicy
    #: The archive the stream door's MPTA processor preloads, if any.
    default_model_url: str | None = None


ProcessorFactory = Callable[[ProcessorDeps], FrameProcessor]


class UnknownProcessorError(WorkerError):
    """No processor has that name; the message lists the names there are."""


def discover_processors(package: str = "processors") -> dict[str, ProcessorFactory]:
    """Import every module of ``package`` and return name → factory of its processors."""
    root = importlib.import_module(package)
    found: dict[str, ProcessorFactory] = {}
    for info in pkgutil.iter_modules(root.__path__):
        if info.name.startswith("_") or info.name in _NOT_PROCESSORS:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        factory: object = getattr(module, "create_processor", None)
        if not callable(factory):
            continue
        name = str(getattr(module, "PROCESSOR_NAME", info.name))
        if name in found:
            raise ValueError(f"two processor modules are named {name!r}")
        found[name] = cast(ProcessorFactory, factory)  # a module's duck-typed hook
    logger.debug("processors: %s", ", ".join(sorted(found)))
    return found


def lookup(registry: Mapping[str, ProcessorFactory], name: str) -> ProcessorFactory:
    """The factory named ``name``; :class:`UnknownProcessorError` lists the known names."""
    factory = registry.get(name)
    if factory is None:
        known = ", ".join(sorted(registry)) or "none"
        raise UnknownProcessorError(f"unknown processor {name!r} (known: {known})")
    return factory


def parse_processor_url(url: str) -> tuple[str, dict[str, Any]] | None:
    """``processor://NAME?k=v`` → ``(NAME, {k: v})``; None for any other URL (an archive).

    Values are JSON when they parse (``0.5``, ``true``, ``[1,2]``), strings otherwise.
    """
    parts = urlsplit(url)
    if parts.scheme != PROCESSOR_SCHEME:
        return None
    name = parts.netloc or parts.path.lstrip("/")
    params: dict[str, Any] = {}
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return name, params
