"""Captions from any transformers image-text-to-text model that can `generate()`.

Florence-2 with its `<MORE_DETAILED_CAPTION>` task is the default for real builds (the paper uses a
VLM's detailed captions); BLIP and others work by configuration, with or without a prompt. The
transformers-native Florence-2 checkpoints are the `florence-community/` ones: the `microsoft/`
repositories need `trust_remote_code` and their own modelling code, which this project never runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from pipeline.models import quiet_transformers
from pipeline.models.device import pick_device
from pipeline.models.protocols import Captioner  # noqa: F401  (re-exported: the captioner contract)
from pipeline.models.spec import BackendSpec

DEFAULT_CAPTIONER = "florence-community/Florence-2-large"
FLORENCE_DETAILED_PROMPT = "<MORE_DETAILED_CAPTION>"


class ImageTextToTextSpec(BackendSpec):
    backend: Literal["image-text-to-text"] = "image-text-to-text"
    model: str = DEFAULT_CAPTIONER
    revision: str | None = None
    prompt: str | None = None  # None: Florence-2's detailed-caption task, else no prompt
    max_new_tokens: int = 96
    num_beams: int = 1


class TransformersCaptioner:
    def __init__(
        self,
        model: str = DEFAULT_CAPTIONER,
        prompt: str | None = None,
        max_new_tokens: int = 96,
        num_beams: int = 1,
        revision: str | None = None,
        device: str | None = None,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        quiet_transformers()
        self.device = device or pick_device()
        self.processor = AutoProcessor.from_pretrained(model, revision=revision)
        self.model = AutoModelForImageTextToText.from_pretrained(model, revision=revision).to(self.device).eval()
        self.model_id = model
        is_florence = getattr(self.model.config, "model_type", "") == "florence2"
        self.prompt = prompt if prompt is not None else (FLORENCE_DETAILED_PROMPT if is_florence else None)
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams

    @classmethod
    def from_spec(cls, spec: ImageTextToTextSpec) -> TransformersCaptioner:
        return cls(
            spec.model,
            prompt=spec.prompt,
            max_new_tokens=spec.max_new_tokens,
            num_beams=spec.num_beams,
            revision=spec.revision,
        )

    @torch.inference_mode()
    def caption(self, images: Sequence[np.ndarray]) -> list[str]:
        if not images:
            return []
        kwargs = {"images": list(images), "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(images)
        inputs = self.processor(**kwargs).to(self.device)
        generated = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False
        )
        texts = self.processor.batch_decode(generated, skip_special_tokens=True)
        return [_strip_prompt(text, self.prompt) for text in texts]


def _strip_prompt(text: str, prompt: str | None) -> str:
    """Conditional captioners echo their text prompt; task tokens like Florence's are not echoed."""
    text = " ".join(text.split())
    if prompt and text.lower().startswith(prompt.lower()):
        text = text[len(prompt) :]
    return text.strip()
