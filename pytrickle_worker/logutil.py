"""Logging set-up and credential masking for URLs."""

import logging
import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_SECRET_QUERY_RE = re.compile(
    r"(?P<key>[?&](?:password|passwd|pwd|token|access_token|api_key|apikey|key|secret|auth)=)[^&#\s]*",
    re.IGNORECASE,
)


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

    return _SECRET_QUERY_RE.sub(r"\g<key>***", _USERINFO_RE.sub(_substitute, text))


class MaskingFilter(logging.Filter):
    """Masks URL credentials in every record, whatever logger produced it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg = masked
            record.args = None
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
