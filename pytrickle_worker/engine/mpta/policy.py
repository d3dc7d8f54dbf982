"""Which model archives a caller may name: one rule for both doors of the worker.

The CMS door (``modelUrl`` of a ``subscribe``) and the stream door (``model_url`` in the params
of ``/api/stream/start``, ``/api/stream/params`` and the control channel) check every URL a
caller gives with the same :class:`ModelUrlPolicy`, built from the worker config by
``WorkerConfig.model_url_policy()``. The pipeline the operator preloads (``--pipeline``) is
not a caller's choice: it is ``trusted``, and a caller may name it too.

* ``http://`` and ``https://``: any host, or, when ``model_url_hosts``
  (``PTW_MODEL_URL_HOSTS``) is set, only those hosts (an SSRF guard).
* ``file://`` URLs and local paths: allowed when ``allow_local_models``
  (``PTW_ALLOW_LOCAL_MODELS``) is true, refused when it is false. Unset, it follows the
  allow-list: allowed while no allow-list is set (development, the demo), refused once one
  is, because an operator who restricts where models come from does not expect a caller to
  be able to name a file on the worker's disk.
* any other scheme: refused.

docs/SECURITY.md describes the rule for operators.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pytrickle_worker.core.errors import WorkerError
from pytrickle_worker.core.logutil import mask_text

__all__ = ["ModelUrlPolicy", "ModelUrlRefusedError"]

_WINDOWS_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]")
_REMOTE_SCHEMES = ("http", "https")


class ModelUrlRefusedError(WorkerError):
    """A caller named a model archive this worker's policy does not allow."""

    permanent = True


def _invalid(url: str, exc: ValueError) -> ModelUrlRefusedError:
    return ModelUrlRefusedError(f"{mask_text(url)!r} is not a valid URL: {exc}")


@dataclass(frozen=True)
class ModelUrlPolicy:
    """``hosts``: the http(s) hosts allowed (lower case), None for any host.
    ``allow_local``: whether ``file://`` URLs and local paths are allowed.
    ``trusted``: sources the operator gave (the preloaded pipeline), always allowed."""

    hosts: frozenset[str] | None = None
    allow_local: bool = True
    trusted: frozenset[str] = frozenset()

    @classmethod
    def create(
        cls,
        hosts: Iterable[str] | None,
        allow_local: bool | None = None,
        trusted: Iterable[str] = (),
    ) -> ModelUrlPolicy:
        """``allow_local`` None: local archives are allowed exactly when ``hosts`` is None."""
        allowed = None if hosts is None else frozenset(h.strip().lower() for h in hosts)
        local = allowed is None if allow_local is None else allow_local
        return cls(hosts=allowed, allow_local=local, trusted=frozenset(trusted))

    def describe(self) -> str:
        """One line for the start-up log."""
        hosts = "any host" if self.hosts is None else "hosts " + ", ".join(sorted(self.hosts))
        local = "allowed" if self.allow_local else "refused"
        return f"model URLs: http(s) from {hosts}; local archives {local}"

    def check(self, url: str) -> None:
        """Return when a caller may name ``url``; raise :class:`ModelUrlRefusedError` saying why
        (the message names the setting that decides it) when not."""
        if url in self.trusted:
            return
        if _WINDOWS_DRIVE_RE.match(url):
            scheme = ""
        else:
            try:
                scheme = urlsplit(url).scheme.lower()
            except ValueError as exc:
                raise _invalid(url, exc) from None
        if scheme in _REMOTE_SCHEMES:
            self._check_host(url)
        elif scheme in ("", "file"):
            if not self.allow_local:
                why = (
                    "PTW_ALLOW_LOCAL_MODELS is false"
                    if self.hosts is None
                    else "PTW_MODEL_URL_HOSTS is set; PTW_ALLOW_LOCAL_MODELS=true allows them"
                )
                raise ModelUrlRefusedError(
                    "local archives (file:// URLs and paths) are not accepted from callers "
                    f"({why}); give an http(s) URL"
                )
        else:
            raise ModelUrlRefusedError(
                f"unsupported scheme {scheme!r} (supported: http://, https://, file:// and "
                "local paths)"
            )

    def _check_host(self, url: str) -> None:
        if self.hosts is None:
            return
        try:
            host = (urlsplit(url).hostname or "").lower()
        except ValueError as exc:
            raise _invalid(url, exc) from None
        if host not in self.hosts:
            raise ModelUrlRefusedError(
                f"host {host!r} is not allowed (PTW_MODEL_URL_HOSTS: "
                f"{', '.join(sorted(self.hosts))})"
            )
