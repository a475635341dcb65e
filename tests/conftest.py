"""Shared fixtures: the real samples beside the checkout, and models loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = Path(os.environ.get("OVRSIS_SHARED_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def shared_real() -> Path:
    if not SHARED_REAL.is_dir():
        pytest.skip(f"real samples absent: {SHARED_REAL} (a fresh clone has no ../shared)")
    return SHARED_REAL


@pytest.fixture(scope="session")
def lemmatize():
    from pipeline.stages.categories import spacy_lemmatize

    return spacy_lemmatize


@pytest.fixture(scope="session")
def embedder():
    from taxonomy.embedding import load_text_embedder

    return load_text_embedder()


@pytest.fixture(scope="session")
def tiny_models_yaml(tmp_path_factory) -> Path:
    """Tiny random-weight captioner, detector and segmenters, saved like real weights."""
    from pipeline.models.tiny import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_models(tiny_models_yaml):
    from pipeline.models.config import ModelSet, load_models_config

    return ModelSet(load_models_config(tiny_models_yaml))
