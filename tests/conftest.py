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


# Real servers (tests/servers.py): one Label Studio per module that asks for `label_studio`, the ML backend
# beside it where the module overrides `ml_backend_models`, serving what the module overrides `served_root` with.
pytest.register_assert_rewrite("tests.servers")


@pytest.fixture(scope="module")
def served_root(tmp_path_factory) -> Path:
    """The folder the module's Label Studio serves (local-files document root): an empty one. A module whose
    tests push tasks overrides this fixture with the output it pushes."""
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def ml_backend_models() -> str | None:
    """The models the ML backend started beside the module's Label Studio runs: None, no backend. A module
    that needs the backend overrides this fixture."""
    return None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory, served_root, ml_backend_models):
    """A real Label Studio for the module (`tests.servers.LabelStudio`: url, pid, data, root, port, backend),
    started with `ovrsis audit server` from another working directory, and the ML backend beside it if
    `ml_backend_models` names models; both stopped by PID when the module is done."""
    from tests.servers import LABEL_STUDIO, running

    if not LABEL_STUDIO.is_file():
        pytest.fail(".venv-ls is missing: `make test` creates the Label Studio venv")
    data, elsewhere = tmp_path_factory.mktemp("lsdata"), tmp_path_factory.mktemp("elsewhere")
    with running(data, served_root, elsewhere, ml_backend_models) as started:
        yield started
