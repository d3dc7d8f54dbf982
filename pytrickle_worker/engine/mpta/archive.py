"""Safe extraction of ``.mpta`` (zip) archives and ``pipeline.json`` discovery.

``extract_archive`` validates every member *before* writing anything:

* the file must be a readable zip no larger than ``max_archive_bytes``;
* member names must be relative paths without ``..`` components, drive
  letters, backslashes or NUL bytes (zip-slip);
* members must be regular files or directories (no symlinks, devices, fifos)
  and must not be encrypted; names must be unique;
* there may be at most ``max_files`` members and their *declared* uncompressed
  sizes must add up to at most ``max_uncompressed_bytes``.

While extracting, the bytes actually written are counted as well and the
extraction aborts once they exceed ``max_uncompressed_bytes`` (a zip bomb may
lie in its headers); CRC-32 values are checked by :mod:`zipfile` at the end of
every member.  Files are created with mode 0644 and directories with 0755
whatever the archive says (never setuid/setgid, never executable).

Extraction goes to a temporary directory next to ``dest_dir`` that is renamed
onto ``dest_dir`` atomically once complete; on any failure the temporary
directory is removed, so a failed extraction leaves nothing behind.  Since
``dest_dir`` is meant to be content-addressed (``extracted/<sha256>``), an
existing ``dest_dir`` is treated as a finished extraction of the same archive
and reused, including when a concurrent extraction wins the rename race.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from pytrickle_worker.core.errors import ArchiveError

__all__ = [
    "PIPELINE_JSON",
    "ArchiveLimits",
    "extract_archive",
    "find_pipeline_root",
]

logger = logging.getLogger(__name__)

PIPELINE_JSON = "pipeline.json"

_GIB = 1024**3
_CHUNK = 1024 * 1024
_FILE_MODE = 0o644
_DIR_MODE = 0o755
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_MAX_LISTED = 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Upper bounds applied to every archive (download size, extraction size, member count)."""

    max_archive_bytes: int = 2 * _GIB
    max_uncompressed_bytes: int = 4 * _GIB
    max_files: int = 2000


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool


def _member_parts(name: str, archive: str) -> tuple[str, ...]:
    """Validate a member name and return its path components (zip-slip checks)."""
    shown = repr(name)
    if "\x00" in name:
        raise ArchiveError(f"{archive}: member {shown} has a NUL byte in its name (zip-slip)")
    if "\\" in name:
        raise ArchiveError(f"{archive}: member {shown} contains a backslash (zip-slip)")
    if name.startswith("/"):
        raise ArchiveError(f"{archive}: member {shown} has an absolute path (zip-slip)")
    if _DRIVE_RE.match(name):
        raise ArchiveError(f"{archive}: member {shown} has a drive letter (zip-slip)")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"{archive}: member {shown} contains a '..' component (zip-slip)")
    if not parts and not name.endswith("/"):
        raise ArchiveError(f"{archive}: member {shown} has an empty path")
    return parts


def _validate_members(zf: zipfile.ZipFile, archive: str, limits: ArchiveLimits) -> list[_Member]:
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise ArchiveError(
            f"{archive}: {len(infos)} members, more than the limit of {limits.max_files}"
        )
    members: list[_Member] = []
    seen: set[tuple[str, ...]] = set()
    declared = 0
    for info in infos:
        parts = _member_parts(info.filename, archive)
        shown = repr(info.filename)
        mode = info.external_attr >> 16
        file_type = stat.S_IFMT(mode)
        if file_type == stat.S_IFLNK:
            raise ArchiveError(f"{archive}: member {shown} is a symbolic link (not allowed)")
        if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(f"{archive}: member {shown} is not a regular file or directory")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{archive}: member {shown} is encrypted (not supported)")
        is_dir = info.is_dir() or file_type == stat.S_IFDIR
        if not parts:  # "./" or "/"-only directory entries: nothing to create
            continue
        if parts in seen:
            raise ArchiveError(f"{archive}: member {shown} appears more than once")
        seen.add(parts)
        if not is_dir:
            declared += info.file_size
        members.append(_Member(info, parts, is_dir))
    if declared > limits.max_uncompressed_bytes:
        raise ArchiveError(
            f"{archive}: declared uncompressed size {declared} bytes exceeds the limit of "
            f"{limits.max_uncompressed_bytes} bytes (zip bomb?)"
        )
    return members


def _make_dirs(root: Path, parts: tuple[str, ...], archive: str) -> Path:
    """Create ``root/parts...`` (each level 0755, no symlinks followed) and return it."""
    current = root
    for part in parts:
        current = current / part
        try:
            current.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                shown = "/".join(parts)
                raise ArchiveError(
                    f"{archive}: cannot create directory {shown!r} (a file has that name)"
                ) from None
            continue
        current.chmod(_DIR_MODE)  # independent of the umask
    return current


def _extract_members(
    zf: zipfile.ZipFile, members: list[_Member], tmp: Path, archive: str, limits: ArchiveLimits
) -> None:
    written = 0
    for member in members:
        if member.is_dir:
            _make_dirs(tmp, member.parts, archive)
            continue
        parent = _make_dirs(tmp, member.parts[:-1], archive)
        target = parent / member.parts[-1]
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, _FILE_MODE)
        with os.fdopen(fd, "wb") as out, zf.open(member.info) as src:
            os.fchmod(out.fileno(), _FILE_MODE)  # independent of the umask, never setuid
            member_written = 0
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                member_written += len(chunk)
                if written > limits.max_uncompressed_bytes:
                    raise ArchiveError(
                        f"{archive}: extracted data exceeds the limit of "
                        f"{limits.max_uncompressed_bytes} bytes while writing member "
                        f"{member.info.filename!r} (zip bomb?)"
                    )
                if member_written > member.info.file_size:
                    raise ArchiveError(
                        f"{archive}: member {member.info.filename!r} is larger than its "
                        f"declared size of {member.info.file_size} bytes"
                    )
                out.write(chunk)


def extract_archive(
    zip_path: Path,
    dest_dir: Path,
    limits: ArchiveLimits,
    *,
    display_name: str | None = None,
    archive_stem: str | None = None,
) -> Path:
    """Safely extract ``zip_path`` to ``dest_dir`` and return the directory holding pipeline.json.

    Raises ``ArchiveError`` for anything unsafe, corrupt or incomplete; on error
    nothing is left behind.  An existing ``dest_dir`` is reused as is.
    ``display_name`` (already masked) names the archive in messages instead of
    ``zip_path.name``; ``archive_stem`` is the archive's own name without its extension
    (``vehicle`` for ``.../vehicle.mpta``), whose folder wins where several hold a
    pipeline.json.
    """
    archive = display_name or zip_path.name
    if dest_dir.is_dir():
        logger.debug("reusing extracted archive %s", dest_dir)
        return find_pipeline_root(dest_dir, archive_stem)
    try:
        size = zip_path.stat().st_size
    except OSError as exc:
        raise ArchiveError(f"{archive}: cannot read archive ({exc.strerror})") from None
    if size > limits.max_archive_bytes:
        raise ArchiveError(
            f"{archive}: archive is {size} bytes, over the limit of {limits.max_archive_bytes}"
        )

    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ArchiveError(f"{archive}: not a valid zip archive ({exc})") from None
    except OSError as exc:
        raise ArchiveError(f"{archive}: cannot read archive ({exc})") from None

    with zf:
        members = _validate_members(zf, archive, limits)
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".tmp", dir=dest_dir.parent)
        )
        try:
            tmp.chmod(_DIR_MODE)
            try:
                _extract_members(zf, members, tmp, archive, limits)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise ArchiveError(f"{archive}: corrupt archive ({exc})") from None
            except NotImplementedError as exc:
                raise ArchiveError(f"{archive}: unsupported zip feature ({exc})") from None
            except (OSError, RuntimeError, ValueError) as exc:
                raise ArchiveError(f"{archive}: cannot extract archive ({exc})") from None
            try:
                root = find_pipeline_root(tmp, archive_stem)
            except ArchiveError as exc:
                raise ArchiveError(f"{archive}: {exc}") from None
            relative = root.relative_to(tmp)
            try:
                tmp.rename(dest_dir)
            except OSError as exc:
                if not dest_dir.is_dir():
                    raise ArchiveError(
                        f"{archive}: cannot move extraction into place ({exc})"
                    ) from None
                # A concurrent extraction of the same archive got there first: keep it.
                logger.debug("%s was extracted concurrently; keeping the existing copy", archive)
                shutil.rmtree(tmp, ignore_errors=True)
                return find_pipeline_root(dest_dir, archive_stem)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("extracted %s (%d members) to %s", archive, len(members), dest_dir)
    return dest_dir / relative


def _is_ignored(entry: Path) -> bool:
    return entry.name.startswith(".") or entry.name == "__MACOSX"


def find_pipeline_root(extracted: Path, archive_stem: str | None = None) -> Path:
    """Return the directory holding ``pipeline.json``.

    It is either ``extracted`` itself or the one top-level folder that holds it (other
    folders beside it, an ``extras/`` say, are left alone, as the original worker did; hidden
    entries and ``__MACOSX`` are ignored). Where several folders hold one, the folder named
    like the archive (``archive_stem``) is it, as the original worker looked there first;
    without such a folder they are ambiguous (the original took whichever the file system
    listed first).
    """
    if (extracted / PIPELINE_JSON).is_file():
        return extracted
    entries: list[Path] = []
    with contextlib.suppress(OSError):
        entries = sorted(entry for entry in extracted.iterdir() if not _is_ignored(entry))
    folders = [entry for entry in entries if entry.is_dir() and not entry.is_symlink()]
    holding = [folder for folder in folders if (folder / PIPELINE_JSON).is_file()]
    if len(holding) == 1:
        return holding[0]
    named = [folder for folder in holding if archive_stem and folder.name == archive_stem]
    if named:
        return named[0]
    listed = [entry.name + ("/" if entry.is_dir() else "") for entry in entries]
    found = ", ".join(listed[:_MAX_LISTED]) or "nothing"
    if len(listed) > _MAX_LISTED:
        found += f", ... ({len(listed)} entries)"
    raise ArchiveError(
        f"no {PIPELINE_JSON} at the archive root or in exactly one top-level folder "
        f"(found: {found})"
    )
