"""Safe extraction of .mpta archives (pytrickle_worker.engine.mpta.archive)."""

from __future__ import annotations

import json
import os
import stat
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from pytrickle_worker.core.errors import ArchiveError, MptaError
from pytrickle_worker.engine.mpta.archive import ArchiveLimits, extract_archive, find_pipeline_root

PIPELINE = json.dumps(
    {
        "pipeline": {
            "modelId": "m",
            "modelFile": "m.onnx",
            "minConfidence": 0.5,
            "triggerClasses": ["car"],
        }
    }
)
LIMITS = ArchiveLimits()


def _listing(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def _build(path: Path, members: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def env(tmp_path: Path) -> tuple[Path, Path]:
    """(tmp_path, cache) with cache/extracted existing and empty."""
    cache = tmp_path / "cache"
    (cache / "extracted").mkdir(parents=True)
    return tmp_path, cache


def _expect_failure(
    tmp_path: Path, cache: Path, zip_path: Path, match: str, limits: ArchiveLimits = LIMITS
) -> str:
    """Extraction must fail with ``match`` and leave the filesystem exactly as it was."""
    before = _listing(tmp_path)
    dest = cache / "extracted" / "abc"
    with pytest.raises(ArchiveError, match=match) as info:
        extract_archive(zip_path, dest, limits)
    assert _listing(tmp_path) == before
    assert list((cache / "extracted").iterdir()) == []
    assert not dest.exists()
    return str(info.value)


# ---------------------------------------------------------------- happy paths


def test_extract_flat_archive(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(tmp_path / "flat.mpta", {"pipeline.json": PIPELINE, "m.onnx": b"onnx"})
    dest = cache / "extracted" / "abc"
    root = extract_archive(zip_path, dest, LIMITS)
    assert root == dest
    assert (root / "m.onnx").read_bytes() == b"onnx"
    # only the final directory remains next to it (no temp dirs)
    assert [p.name for p in (cache / "extracted").iterdir()] == ["abc"]


def test_extract_nested_folder_like_the_original_worker(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(
        tmp_path / "demo.mpta",
        {
            "demo/": b"",
            "demo/pipeline.json": PIPELINE,
            "demo/models/m.onnx": b"x",
            "__MACOSX/demo/._pipeline.json": b"junk",
            ".DS_Store": b"junk",
        },
    )
    root = extract_archive(zip_path, cache / "extracted" / "abc", LIMITS)
    assert root == cache / "extracted" / "abc" / "demo"
    assert (root / "models" / "m.onnx").read_bytes() == b"x"


def test_existing_destination_is_reused(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(tmp_path / "a.mpta", {"pipeline.json": PIPELINE})
    dest = cache / "extracted" / "abc"
    extract_archive(zip_path, dest, LIMITS)
    marker = dest / "marker"
    marker.write_text("kept")
    assert extract_archive(zip_path, dest, LIMITS) == dest
    assert marker.read_text() == "kept"


def test_concurrent_extractions_keep_one_copy(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    members: dict[str, bytes | str] = {"pipeline.json": PIPELINE}
    members.update({f"f{i}.bin": os.urandom(2000) for i in range(50)})
    zip_path = _build(tmp_path / "a.mpta", members)
    dest = cache / "extracted" / "abc"
    results: list[Path] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(extract_archive(zip_path, dest, LIMITS))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [dest] * 6
    assert [p.name for p in (cache / "extracted").iterdir()] == ["abc"]
    assert len(list(dest.iterdir())) == 51


def test_permissions_normalised_and_setuid_dropped(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = tmp_path / "perm.mpta"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("pipeline.json", PIPELINE)
        info = zipfile.ZipInfo("bin/tool")
        info.create_system = 3
        info.external_attr = (stat.S_IFREG | stat.S_ISUID | stat.S_ISGID | 0o777) << 16
        zf.writestr(info, b"#!/bin/sh\n")
        folder = zipfile.ZipInfo("open/")
        folder.create_system = 3
        folder.external_attr = (stat.S_IFDIR | 0o777) << 16 | 0x10
        zf.writestr(folder, b"")
    old_umask = os.umask(0o077)
    try:
        root = extract_archive(zip_path, cache / "extracted" / "abc", LIMITS)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((root / "bin" / "tool").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "pipeline.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "bin").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "open").stat().st_mode) == 0o755
    assert stat.S_IMODE(root.stat().st_mode) == 0o755


# ------------------------------------------------------------------- zip-slip


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil", r"'\.\.' component"),
        ("models/../../evil", r"'\.\.' component"),
        ("/abs/evil", "absolute path"),
        ("C:/evil", "drive letter"),
        ("..\\evil", "backslash"),
        ("models\\..\\..\\evil", "backslash"),
    ],
)
def test_zip_slip_rejected(env: tuple[Path, Path], name: str, why: str) -> None:
    tmp_path, cache = env
    zip_path = tmp_path / "slip.mpta"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("pipeline.json", PIPELINE)
        zf.writestr(zipfile.ZipInfo(name), b"pwned")
    assert zipfile.ZipFile(zip_path).namelist()[1] == name  # zipfile kept the raw name
    message = _expect_failure(tmp_path, cache, zip_path, why)
    assert repr(name) in message
    assert "zip-slip" in message
    assert not (tmp_path / "evil").exists()
    assert not (cache / "evil").exists()


def test_symlink_member_rejected(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = tmp_path / "link.mpta"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("pipeline.json", PIPELINE)
        info = zipfile.ZipInfo("m.onnx")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    message = _expect_failure(tmp_path, cache, zip_path, "symbolic link")
    assert "'m.onnx'" in message


def test_device_member_rejected(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = tmp_path / "fifo.mpta"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("pipeline.json", PIPELINE)
        info = zipfile.ZipInfo("pipe")
        info.create_system = 3
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(info, b"")
    _expect_failure(tmp_path, cache, zip_path, "not a regular file")


def test_duplicate_member_rejected(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = tmp_path / "dup.mpta"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("pipeline.json", PIPELINE)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("pipeline.json", "{}")
    _expect_failure(tmp_path, cache, zip_path, "more than once")


def test_file_and_directory_with_same_name_rejected(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(
        tmp_path / "clash.mpta", {"pipeline.json": PIPELINE, "a": b"file", "a/b": b"inner"}
    )
    _expect_failure(tmp_path, cache, zip_path, "cannot")


# ----------------------------------------------------------------------- bombs


def test_too_many_members(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    members: dict[str, bytes | str] = {f"f{i}": b"" for i in range(20)}
    members["pipeline.json"] = PIPELINE
    zip_path = _build(tmp_path / "many.mpta", members)
    message = _expect_failure(tmp_path, cache, zip_path, "21 members", ArchiveLimits(max_files=20))
    assert "limit of 20" in message


def test_declared_size_over_limit_50mb_of_zeros(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(
        tmp_path / "zeros.mpta", {"pipeline.json": PIPELINE, "zeros.bin": bytes(50 * 1024 * 1024)}
    )
    assert zip_path.stat().st_size < 1024 * 1024  # highly compressible
    message = _expect_failure(
        tmp_path,
        cache,
        zip_path,
        "declared uncompressed size",
        ArchiveLimits(max_uncompressed_bytes=1024 * 1024),
    )
    assert "zip bomb" in message


def test_archive_file_over_limit(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(tmp_path / "big.mpta", {"pipeline.json": PIPELINE, "r": os.urandom(5000)})
    _expect_failure(
        tmp_path, cache, zip_path, "over the limit", ArchiveLimits(max_archive_bytes=1000)
    )


def _patch_central_directory(zip_path: Path, member: str, *, crc: int, size: int) -> None:
    """Rewrite the CRC and uncompressed size a central-directory entry declares."""
    data = bytearray(zip_path.read_bytes())
    encoded = member.encode()
    offset = data.find(b"PK\x01\x02")
    while offset != -1:
        name_len = struct.unpack_from("<H", data, offset + 28)[0]
        if bytes(data[offset + 46 : offset + 46 + name_len]) == encoded:
            struct.pack_into("<I", data, offset + 16, crc)
            struct.pack_into("<I", data, offset + 24, size)
            zip_path.write_bytes(bytes(data))
            return
        offset = data.find(b"PK\x01\x02", offset + 4)
    raise AssertionError(f"{member} not in central directory")


def test_lying_header_with_wrong_crc_fails_cleanly(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(
        tmp_path / "liar.mpta", {"pipeline.json": PIPELINE, "bomb.bin": bytes(20 * 1024 * 1024)}
    )
    _patch_central_directory(zip_path, "bomb.bin", crc=0, size=1000)
    _expect_failure(
        tmp_path, cache, zip_path, "corrupt", ArchiveLimits(max_uncompressed_bytes=1024 * 1024)
    )


def test_lying_header_never_writes_more_than_declared(env: tuple[Path, Path]) -> None:
    # The header claims 1000 bytes (with the CRC of 1000 zeros) but the deflate
    # stream holds 20 MB: extraction stops at the declared size.
    tmp_path, cache = env
    zip_path = _build(
        tmp_path / "liar.mpta", {"pipeline.json": PIPELINE, "bomb.bin": bytes(20 * 1024 * 1024)}
    )
    _patch_central_directory(zip_path, "bomb.bin", crc=zlib.crc32(bytes(1000)), size=1000)
    limits = ArchiveLimits(max_uncompressed_bytes=1024 * 1024)
    root = extract_archive(zip_path, cache / "extracted" / "abc", limits)
    assert (root / "bomb.bin").stat().st_size == 1000
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= limits.max_uncompressed_bytes


# ------------------------------------------------------------------- corruption


def test_not_a_zip(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = tmp_path / "junk.mpta"
    zip_path.write_bytes(os.urandom(4096))
    _expect_failure(tmp_path, cache, zip_path, "not a valid zip archive")


def test_missing_file(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    _expect_failure(tmp_path, cache, tmp_path / "nope.mpta", "cannot read archive")


def test_truncated_zip(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(tmp_path / "t.mpta", {"pipeline.json": PIPELINE, "r": os.urandom(20000)})
    data = zip_path.read_bytes()
    zip_path.write_bytes(data[: len(data) // 2])
    _expect_failure(tmp_path, cache, zip_path, "not a valid zip archive")


def test_bad_crc_leaves_nothing_behind(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = tmp_path / "crc.mpta"
    payload = b"A" * 4000
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("pipeline.json", PIPELINE)  # extracted before the corrupt member
        zf.writestr("m.onnx", payload)
    data = bytearray(zip_path.read_bytes())
    index = data.find(payload)
    data[index + 100] = ord("B")
    zip_path.write_bytes(bytes(data))
    message = _expect_failure(tmp_path, cache, zip_path, "corrupt archive")
    assert "CRC" in message


def test_corrupt_deflate_stream(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = tmp_path / "deflate.mpta"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pipeline.json", PIPELINE)
        zf.writestr("m.onnx", b"hello world " * 5000)
    data = bytearray(zip_path.read_bytes())
    start = data.find(b"m.onnx") + len("m.onnx")  # local header name, data follows
    for i in range(start + 10, start + 60):
        data[i] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    _expect_failure(tmp_path, cache, zip_path, "corrupt archive")


def test_encrypted_member_rejected(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(tmp_path / "enc.mpta", {"pipeline.json": PIPELINE, "m.onnx": b"secret"})
    data = bytearray(zip_path.read_bytes())
    for signature, flags_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        offset = data.find(signature)
        while offset != -1:
            data[offset + flags_offset] |= 0x1  # "encrypted" general purpose flag
            offset = data.find(signature, offset + 4)
    zip_path.write_bytes(bytes(data))
    _expect_failure(tmp_path, cache, zip_path, "encrypted")


# ------------------------------------------------------------- pipeline.json


def test_missing_pipeline_json(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(tmp_path / "x.mpta", {"model.onnx": b"x", "docs/readme.txt": b"hi"})
    message = _expect_failure(tmp_path, cache, zip_path, "no pipeline.json")
    assert "found: docs/, model.onnx" in message
    assert issubclass(ArchiveError, MptaError)


def test_two_top_level_folders_are_ambiguous_unless_one_is_named_like_the_archive(
    env: tuple[Path, Path],
) -> None:
    tmp_path, cache = env
    zip_path = _build(
        tmp_path / "x.mpta", {"a/pipeline.json": PIPELINE, "b/pipeline.json": PIPELINE}
    )
    message = _expect_failure(tmp_path, cache, zip_path, "exactly one top-level folder")
    assert "found: a/, b/" in message
    # ... unless one is named like the archive: the original looked there first.
    dest = cache / "extracted" / "named"
    assert extract_archive(zip_path, dest, LIMITS, archive_stem="b") == dest / "b"
    assert find_pipeline_root(dest, "a") == dest / "a"  # a reused extraction, another name


def test_pipeline_json_too_deep(env: tuple[Path, Path]) -> None:
    tmp_path, cache = env
    zip_path = _build(tmp_path / "x.mpta", {"a/b/pipeline.json": PIPELINE})
    _expect_failure(tmp_path, cache, zip_path, r"no pipeline\.json .*\(found: a/\)")


def _layout_flat(root: Path) -> None:
    (root / "pipeline.json").write_text("{}")


def _layout_folder(root: Path) -> None:
    (root / "x").mkdir()
    (root / "x" / "pipeline.json").write_text("{}")


def _layout_folder_with_junk(root: Path) -> None:
    _layout_folder(root)
    (root / "__MACOSX").mkdir()
    (root / ".hidden").mkdir()
    (root / "notes.txt").write_text("")


def _layout_folder_beside_others(root: Path) -> None:
    # The original worker took the folder holding pipeline.json, whatever else is there.
    _layout_folder(root)
    (root / "extras").mkdir()
    (root / "extras" / "readme.txt").write_text("")


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (_layout_flat, "."),
        (_layout_folder, "x"),
        (_layout_folder_with_junk, "x"),
        (_layout_folder_beside_others, "x"),
    ],
)
def test_find_pipeline_root(tmp_path: Path, layout: Callable[[Path], None], expected: str) -> None:
    layout(tmp_path)
    assert find_pipeline_root(tmp_path) == (tmp_path if expected == "." else tmp_path / expected)


def test_find_pipeline_root_empty(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"\(found: nothing\)"):
        find_pipeline_root(tmp_path)
