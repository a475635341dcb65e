"""The base of every backend's configuration class, and what `ovrsis models fetch` needs from it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

Precision = Literal["float32", "bfloat16", "float16"]
# Settings every stage has, left out of a dump while they hold their default: a spec's dump is in the
# stage cache keys and in each record's provenance, which must not change for a YAML that sets neither.
RUN_DEFAULTS = {"batch_size": None, "precision": "float32"}


class HubWeights(NamedTuple):
    repo_id: str
    revision: str | None


class BackendSpec(BaseModel):
    """One backend's settings in a models YAML; subclasses fix `backend` to their registry name.

    `batch_size` and `precision` are how the stage runs its model (pipeline/models/stage_run.py): at
    most `batch_size` tiles a forward (unset: every tile the stage is given, a build's whole batch), and
    autocast at `precision` (bfloat16 or float16: faster on a GPU, the masks may differ slightly, so the
    stage's cache key holds it)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    backend: str
    batch_size: int | None = Field(None, ge=1)
    precision: Precision = "float32"

    @model_serializer(mode="wrap")
    def _without_run_defaults(self, handler: SerializerFunctionWrapHandler) -> dict:
        dumped = handler(self)
        return {k: v for k, v in dumped.items() if k not in RUN_DEFAULTS or v != RUN_DEFAULTS[k]}

    def weights(self) -> list[HubWeights]:
        """Hub repositories this spec loads from (local folders and files need no fetching)."""
        model, revision = getattr(self, "model", None), getattr(self, "revision", None)
        return [HubWeights(model, revision)] if model and is_hub_id(model) else []


def is_hub_id(name: str) -> bool:
    """`org/name` that is not a folder here: what `from_pretrained` would download."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()
