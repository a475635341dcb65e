"""How a stage runs its model: in chunks of the spec's `batch_size` tiles, under autocast at its
`precision`. A wrapper around the loaded model, so no backend repeats it and a spec that sets neither
gets the bare model (nothing changes for it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from pipeline.models.device import pick_device
from pipeline.models.spec import BackendSpec

STAGE_METHODS = {"captioner": "caption", "detector": "detect", "segmenter": "segment"}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class StageRun:
    """The stage's model, its one method (`caption`, `detect` or `segment`) called per chunk of tiles
    under autocast; every other attribute (`model_id`, `image_encoder_calls`) is the model's."""

    def __init__(self, model: Any, method: str, batch_size: int | None, precision: str) -> None:
        self._model, self._method = model, method
        self._batch_size = batch_size
        self._dtype = DTYPES.get(precision)
        self._device_type = str(getattr(model, "device", pick_device())).split(":")[0]

    def __getattr__(self, name: str) -> Any:
        if name == self._method:
            return self._run
        return getattr(self._model, name)

    def _run(self, images: Sequence, *per_tile: Sequence) -> list:
        call: Callable[..., list] = getattr(self._model, self._method)
        if not images:
            return call(images, *per_tile)
        size = self._batch_size or len(images)
        results: list = []
        for start in range(0, len(images), size):
            chunk = (part[start : start + size] for part in (images, *per_tile))
            with self._autocast():
                results.extend(call(*chunk))
        return results

    def _autocast(self):
        if self._dtype is None:
            return nullcontext()
        return torch.autocast(self._device_type, dtype=self._dtype)


def with_run_settings(model: Any, stage: str, spec: BackendSpec) -> Any:
    """MODEL as the stage should call it: wrapped when SPEC sets a batch size or a lower precision."""
    if spec.batch_size is None and spec.precision == "float32":
        return model
    return StageRun(model, STAGE_METHODS[stage], spec.batch_size, spec.precision)
