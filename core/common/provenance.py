"""Provenance and safe file output: versions, content hashes, atomic writes."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.common.errors import MemoScopeError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """One hash over several files (names and bytes), order as given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def sha256_array(array: np.ndarray, chunk_rows: int = 256) -> str:
    """Hex SHA-256 of an array's dtype, shape and C-ordered bytes (read ``chunk_rows`` rows at a time, so a
    memory-mapped set is hashed without loading it whole)."""
    digest = hashlib.sha256()
    digest.update(str(array.dtype).encode())
    digest.update(str(array.shape).encode())
    if array.ndim == 0:
        digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()
    for start in range(0, len(array), chunk_rows):
        digest.update(np.ascontiguousarray(array[start : start + chunk_rows]).tobytes())
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """Hex SHA-256 of a JSON value with sorted keys."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour decides a result."""
    import faiss
    import monai
    import torch

    from core import __version__

    return {
        "memoscope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "platform": platform.platform(),
    }


def now_utc() -> str:
    """The current time as an ISO-8601 UTC string."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only on success.

    A crash or exception leaves ``target`` as it was (absent or the previous version).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write text to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: str | os.PathLike[str], value: Any) -> None:
    """Write a JSON document (indented, sorted keys) to ``target`` atomically."""
    atomic_write_text(target, json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json_record(path: str | os.PathLike[str], what: str, remedy: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; an unreadable file, bad JSON or another JSON value is an error that names the
    file, ``what`` it should hold and the ``remedy`` (the counterpart of :func:`atomic_write_json`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MemoScopeError(f"{path}: not a readable {what} ({exc}){'; ' + remedy if remedy else ''}.") from exc
    if not isinstance(data, dict):
        raise MemoScopeError(f"{path}: a {what} is a JSON object{'; ' + remedy if remedy else ''}.")
    return data


def _remove_orphans(target: Path) -> None:
    """Remove the temporary folders a killed writer of ``target`` left beside it (their names carry the writer's
    process ID; a folder whose writer still runs is left alone)."""
    from core.common.processes import process_alive

    for left in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = left.name[len(target.name) + 2 :].split(".")[0]
        if left.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it to ``target`` only on success.

    Args:
        target: the folder to create.
        overwrite: replace an existing ``target``; otherwise an existing one is an error.
    """
    from core.common.errors import MemoScopeError

    target = Path(target)
    if target.exists() and not overwrite:
        raise MemoScopeError(f"{target} already exists; choose another folder or remove it first.")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
