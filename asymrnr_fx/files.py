"""Writing result files safely: checked before the work starts, written whole or not at all.

An interrupt or a full disk mid-write must never leave a half-written schedule, measurement or
video behind (nor destroy the previous one): every file is written to a temporary file in the
same folder and renamed over the target (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic", "check_writable"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path (same folder, same suffix) to write; renamed to ``path`` when the
    block ends without an exception, removed otherwise."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole, or leave ``path`` as it was."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """A ValueError naming ``flag`` unless a file can be created at ``path`` (its folder is
    created if missing), checked before any work is done."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {str(target)!r} is a folder: give a file path")
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{target.name}.", delete=True):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {str(target)!r} is not writable ({exc.strerror or exc}): "
                         "choose another path") from None
