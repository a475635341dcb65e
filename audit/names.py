"""What Label Studio data may name: a tile key, a queue, the proposal a reviewer was shown.

Why: task data and project titles are written by whoever can edit the Label Studio server, and they
end up in file names (`audit/shown/DIGEST.png`, `report/iou-QUEUE.png`), in the audit's files and
on the terminal. Each is checked where it is pulled (a task that fails is set aside with its reason)
and again where it is read back from the audit's files (the pydantic types below). A line read back
is never refused for a name: an older pull or a hand edit may have written one, and refusing it would
stop every audit command and build until someone deleted a review. Instead such a value is made
harmless: a key becomes `unsafe-key-DIGEST` (no tile has it: tile keys end in `__rN_cN`, so the
review applies to nothing), a queue `queue-DIGEST`, a digest None (the proposal shown is unknown).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

import numpy as np
from pydantic import BeforeValidator

from pipeline.files.safe_names import MAX_NAME_BYTES, UnsafeName, confined_name, hex_digest
from pipeline.raster.outputs import mask_digest

# Proposals are named by pipeline.raster.outputs.mask_digest: lowercase hex of its length (measured: cannot drift).
DIGEST_CHARS = len(mask_digest(np.zeros((1, 1), np.uint8)))
# A queue names its report charts (`iou-QUEUE.png`, `rates-QUEUE.png`): those must stay file names too.
MAX_QUEUE_BYTES = MAX_NAME_BYTES - len("rates-.png")


def tile_key(value: object) -> str:
    """A task's tile key: one plain file-name component (keys name `masks/KEY.png`)."""
    return confined_name(value, "tile key")


def queue_name(value: object) -> str:
    """A queue's name (a task's `data.queue`, or NAME in a project titled `TITLE (NAME)`)."""
    name = confined_name(value, "queue name")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_QUEUE_BYTES:
        raise UnsafeName(f"queue name {name[:40]!r}... is longer than {MAX_QUEUE_BYTES} bytes (it names report files)")
    return name


def proposal_digest(value: object) -> str | None:
    """The digest of the proposal a task showed (None: not recorded), as `mask_digest` makes it."""
    return None if value is None else hex_digest(value, DIGEST_CHARS, "proposal digest")


def _digest_of(value: object) -> str:
    return hashlib.sha256(json.dumps(value, default=repr).encode("utf-8", "surrogateescape")).hexdigest()[:12]


def readable_key(value: object) -> str:
    """A key read back from the audit's files: itself when it is a safe name, else `unsafe-key-DIGEST`."""
    try:
        return tile_key(value)
    except UnsafeName:
        return f"unsafe-key-{_digest_of(value)}"


def readable_queue(value: object) -> str | None:
    """A queue read back (None stays None: a refused project's line): itself, else `queue-DIGEST`."""
    if value is None:
        return None
    try:
        return queue_name(value)
    except UnsafeName:
        return f"queue-{_digest_of(value)}"


def readable_digest(value: object) -> str | None:
    """A proposal digest read back: itself when it is one `mask_digest` makes, else None (unknown)."""
    try:
        return proposal_digest(value)
    except UnsafeName:
        return None


TileKey = Annotated[str, BeforeValidator(readable_key)]
QueueName = Annotated[str, BeforeValidator(readable_queue)]
ProposalDigest = Annotated[str | None, BeforeValidator(readable_digest)]
