"""Reading a REST request body as JSON, bounded, with every failure a 4xx :class:`ApiError`.

* The size is bounded by the app (``client_max_size`` = ``max_message_bytes``: 413).
* The bytes are decoded with the charset the ``Content-Type`` declares (UTF-8 when it
  declares none); an unknown charset answers 415, bytes that are not valid in it 400. The
  media type itself is not checked: ``curl -d`` sends ``application/x-www-form-urlencoded``.
* Nesting is bounded (:data:`MAX_DEPTH` arrays/objects) before the parser runs, so a body of
  100 000 ``[`` is a 400, not a ``RecursionError``.
* Numbers are bounded (:data:`MAX_NUMBER_CHARS` characters), so a 5000-digit integer is a
  400 rather than Python's int-string conversion limit; ``NaN``/``Infinity`` (not JSON) and
  floats that overflow to infinity are refused.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from itertools import accumulate

from aiohttp import web

from pytrickle_worker.transport.http_errors import ApiError

__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "parse_json", "read_json"]

#: Deepest nesting of arrays and objects a request body may have.
MAX_DEPTH = 32
#: Longest number literal (digits, sign, point and exponent) a request body may hold.
MAX_NUMBER_CHARS = 64

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class _BodyError(ValueError):
    """A limit of the parser hooks (number too long, not finite)."""


def _depth(text: str) -> int:
    """The deepest nesting of ``text`` (brackets inside strings do not count)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _BodyError(f"a number has more than {MAX_NUMBER_CHARS} characters")
    return int(literal)


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _BodyError(f"a number has more than {MAX_NUMBER_CHARS} characters")
    value = float(literal)
    if not math.isfinite(value):
        raise _BodyError(f"the number {literal} is out of range")
    return value


def _constant(name: str) -> object:
    raise _BodyError(f"{name} is not a JSON value")


def parse_json(text: str, *, empty_ok: bool = False) -> object:
    """Parse a request body; :class:`ApiError` 400 says what is wrong."""
    if not text.strip():
        if empty_ok:
            return {}
        raise ApiError(400, "request body must be a JSON object")
    if _depth(text) > MAX_DEPTH:
        raise ApiError(400, f"request body is nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except _BodyError as exc:
        raise ApiError(400, f"request body refused: {exc}") from None
    except (RecursionError, ValueError) as exc:  # a limit the checks above did not foresee
        raise ApiError(400, f"request body refused: {exc}") from None


async def read_json(request: web.Request, *, empty_ok: bool = False) -> object:
    """Read, decode and parse ``request``'s body (see the module docstring)."""
    raw = await request.read()
    charset = request.charset or "utf-8"
    try:
        encoding = codecs.lookup(charset).name
    except LookupError:
        raise ApiError(415, f"unsupported charset {charset!r} (send UTF-8)") from None
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, f"request body is not valid {charset} (byte {exc.start}: {exc.reason})"
        ) from None
    except LookupError:  # a codec that is not a text encoding (rot13, base64 ...)
        raise ApiError(415, f"unsupported charset {charset!r} (send UTF-8)") from None
    except (UnicodeError, ValueError) as exc:
        raise ApiError(400, f"request body is not valid {charset}: {exc}") from None
    return parse_json(text, empty_ok=empty_ok)
