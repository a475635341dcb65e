"""The base of every backend's configuration class, and what `ovrsis models fetch` needs from it."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict


class HubWeights(NamedTuple):
    repo_id: str
    revision: str | None


class BackendSpec(BaseModel):
    """One backend's settings in a models YAML; subclasses fix `backend` to their registry name."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    backend: str

    def weights(self) -> list[HubWeights]:
        """Hub repositories this spec loads from (local folders and files need no fetching)."""
        model, revision = getattr(self, "model", None), getattr(self, "revision", None)
        return [HubWeights(model, revision)] if model and is_hub_id(model) else []


def is_hub_id(name: str) -> bool:
    """`org/name` that is not a folder here: what `from_pretrained` would download."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()
