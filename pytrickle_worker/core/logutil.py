"""Logging set-up and credential masking for URLs.

:func:`setup_logging` writes plain text lines (the default) or JSON lines (``LOG_FORMAT=json``:
one object per line with ``ts``, ``level``, ``logger``, ``message`` and, for an exception,
``exc``). Credentials never reach a log: every record is masked when it is created (so any
handler, pytest's caplog included, sees the masked text) and both formatters mask their output
again, tracebacks included.
"""

import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

LogFormat = Literal["text", "json"]

#: The userinfo runs to the *last* ``@`` before the path: a password may contain ``@``
#: (FFmpeg accepts ``rtsp://admin:p@ss@cam/``), and all of it is secret.
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s]+)@")
#: Secret query values, including pre-signed URL signatures (S3, GCS, Azure SAS) and the
#: spellings of camera firmwares (XMEye ``pass``/``loginpas``, ``pw``, ``psw``).
_SECRET_QUERY_RE = re.compile(
    r"(?P<key>[?&](?:password|passwd|pwd|pass|pw|psw|loginpas|passphrase|token|access_token"
    r"|private_token|api_key|apikey|key|secret|client_secret|auth"
    r"|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token"
    r"|x-goog-signature|x-goog-credential)=)[^&#\s]*",
    re.IGNORECASE,
)
#: ``Authorization: Bearer <token>`` (a header dump, a curl command line in an error message).
_BEARER_RE = re.compile(r"(?P<key>\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def _mask_userinfo(userinfo: str) -> str:
    # "user:password" keeps the user name (useful when debugging); a lone "token" is all secret.
    user, sep, _ = userinfo.partition(":")
    return f"{user}:***" if sep and user else "***"


def mask_url(url: str) -> str:
    """Return ``url`` with any password, token or secret query value replaced by ``***``.

    ``rtsp://admin:hunter2@cam/stream?token=abc`` becomes
    ``rtsp://admin:***@cam/stream?token=***``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{_mask_userinfo(userinfo)}@{hostport}"
    masked = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return _SECRET_QUERY_RE.sub(r"\g<key>***", masked)


def mask_text(text: str) -> str:
    """Mask credentials in every URL that appears inside free text (error messages)."""

    def _substitute(match: re.Match[str]) -> str:
        return f"{match.group('scheme')}{_mask_userinfo(match.group('userinfo'))}@"

    masked = _SECRET_QUERY_RE.sub(r"\g<key>***", _USERINFO_RE.sub(_substitute, text))
    return _BEARER_RE.sub(r"\g<key>***", masked)


def _mask_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # malformed args: the handler reports those, not us
        return
    masked = mask_text(message)
    if masked != message:
        record.msg = masked
        record.args = None
    if record.exc_info and not record.exc_text:
        # Formatters reuse a record's exc_text: every handler then prints the masked traceback.
        record.exc_text = mask_text(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = mask_text(record.stack_info)


class MaskingFilter(logging.Filter):
    """Masks URL credentials in every record, whatever logger produced it."""

    def filter(self, record: logging.LogRecord) -> bool:
        _mask_record(record)
        return True


class MaskingRecordFactory:
    """A ``logging`` record factory that masks each record's message as it is created.

    Handler filters only see records that reach their handler; masking at creation covers
    every handler (including ones installed by libraries or by pytest) at once.
    """

    def __init__(self, previous: Callable[..., logging.LogRecord]) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        _mask_record(record)
        return record


class TextFormatter(logging.Formatter):
    """``12:00:00 INFO    name: message``, credentials masked (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    and ``exc`` (the formatted traceback) when the record carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, str] = {
            "ts": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_text(record.getMessage()),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = mask_text(record.exc_text)
        if record.stack_info:
            entry["stack"] = mask_text(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


def make_formatter(fmt: LogFormat = "text") -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def setup_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Log to stderr at ``level`` as ``fmt`` ("text" or "json"), credentials masked."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, MaskingRecordFactory):
        logging.setLogRecordFactory(MaskingRecordFactory(factory))
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
