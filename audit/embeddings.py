"""SAM image embeddings cached on disk, so a task's image goes through the image encoder once.

The encoder is the expensive part of SAM (a ViT over 1024x1024: seconds on a CPU); the prompt
encoder and mask decoder that turn a click into a mask take tens of milliseconds. A reviewer
clicks many times on one tile, and may come back to it after the backend restarted: so the
embedding is kept on disk, keyed by the image's content digest and the model's identity (a
changed image or other weights can never reuse a stale embedding), plus a small in-memory LRU
so repeated clicks skip even the disk read. Stored as float16 (half the disk, 2 MiB per ViT-B
tile); decoding from it gives the same masks to within rounding.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np


def image_digest(image: np.ndarray) -> str:
    """Content digest of the decoded pixels (so a re-encoded file with the same pixels still hits)."""
    digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()[:32]


class EmbeddingCache:
    """`get(image, compute)`: the embedding from memory, else disk, else `compute(image)` (stored)."""

    def __init__(self, folder: Path, model_key: str, memory_items: int = 8) -> None:
        self.folder = folder / model_key
        self.memory_items = memory_items
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self.computed = 0  # encoder runs, counted so tests can prove one per image

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.npy"

    def has(self, image: np.ndarray) -> bool:
        digest = image_digest(image)
        return digest in self._memory or self.path(digest).is_file()

    def get(self, image: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        digest = image_digest(image)
        with self._lock:
            if digest in self._memory:
                self._memory.move_to_end(digest)
                return self._memory[digest]
        embedding = self._load(digest)
        if embedding is None:
            with self._compute_lock:  # a click and the warming thread on one image: encode it once
                embedding = self._load(digest)
                if embedding is None:
                    embedding = np.asarray(compute(image), dtype=np.float32)
                    self.computed += 1
                    self._store(digest, embedding)
        with self._lock:
            self._memory[digest] = embedding
            while len(self._memory) > self.memory_items:
                self._memory.popitem(last=False)
        return embedding

    def _load(self, digest: str) -> np.ndarray | None:
        try:
            return np.load(self.path(digest)).astype(np.float32)
        except (OSError, ValueError):  # absent, or torn by a crash: recompute
            return None

    def _store(self, digest: str, embedding: np.ndarray) -> None:
        """Written whole (temporary file, then rename): a crash never leaves a half embedding."""
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{digest}.{os.getpid()}.{threading.get_ident()}.npy"
        np.save(temporary, embedding.astype(np.float16))
        os.replace(temporary, self.path(digest))
