"""Validators shared by every wire model (the CMS protocol, the REST API, processor params)."""

from __future__ import annotations

import re

from pydantic import AfterValidator

__all__ = ["NO_CONTROL", "reject_control_characters"]

#: C0 controls (NUL, newline, escape, …), DEL and the C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def reject_control_characters(value: str) -> str:
    # A NUL reaches os/zip calls as "embedded null byte"; newlines and other control
    # characters in ids and URLs only ever forge log lines or headers.
    found = _CONTROL.search(value)
    if found is not None:
        raise ValueError(
            f"must not contain control characters (U+{ord(found.group()):04X} at {found.start()})"
        )
    return value


#: ``Annotated[str, NO_CONTROL]``: a string field that refuses NUL and other control
#: characters, naming the field in the error.
NO_CONTROL = AfterValidator(reject_control_characters)
