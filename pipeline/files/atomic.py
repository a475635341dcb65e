"""Files written whole or not at all, and the output folder's lock: the light part of writing
outputs (no numpy, no GDAL), so that readers of records, ledgers and shards import nothing heavy.

A crash mid-write leaves a `.NAME.*.part` file that no reader mistakes for a finished output;
`remove_stale_parts` clears them when the next run starts. Finished files get the mode a plain
write would give (0666 less the umask), not mkstemp's private 0600.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from ovrsis.errors import OutputBusy
from pipeline.files.layout import LOCK


@contextmanager
def output_lock(folder: Path, wait: bool = True) -> Iterator[None]:
    """Exclusive use of an output folder while its masks are (re)written: a build or annotate run
    holds it from start to end, so an `ovrsis audit pull` can never apply reviews to masks a running
    build is rewriting. With `wait=False` a held lock raises OutputBusy at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise OutputBusy(f"{folder} is being written by another process (a build or annotate run)") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` that is renamed to it when the block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.fchmod(descriptor, 0o666 & ~process_umask())
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@cache
def process_umask() -> int:
    """The umask, read once: setting it to read it is not thread-safe, so it is not read per file."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_parts(folder: Path) -> list[Path]:
    """Delete the temporaries (`.NAME.*.part`) an interrupted run left in `folder`; returns them."""
    stale = sorted(folder.glob(".*.part")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
