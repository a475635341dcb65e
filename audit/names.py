"""What Label Studio data may name: a tile key, a queue, the proposal a reviewer was shown.

Why: task data and project titles are written by whoever can edit the Label Studio server, and they
end up in file names (`audit/shown/DIGEST.png`, `report/iou-QUEUE.png`), in the audit's files and
on the terminal. Each is checked where it is pulled and again where it is read back from the audit's
files (the pydantic types below), so a value that could leave its folder is refused with a reason,
never used as a path.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import AfterValidator

from pipeline.outputs import mask_digest
from pipeline.safe_names import MAX_NAME_BYTES, UnsafeName, confined_name, hex_digest

# Proposals are named by pipeline.outputs.mask_digest: lowercase hex of its length (measured, so it cannot drift).
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


TileKey = Annotated[str, AfterValidator(tile_key)]
QueueName = Annotated[str, AfterValidator(queue_name)]
ProposalDigest = Annotated[str | None, AfterValidator(proposal_digest)]
