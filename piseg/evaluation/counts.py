"""Parameter and FLOP counts built from a configuration alone (meta tensors: no weights, no download)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from piseg.config import EvalConfig, ModelConfig
from piseg.inference.scheme import sliding_window_probabilities
from piseg.modeling.model import PiSeg, build_model, parameter_counts

# Paper Table XII (r = 1 in every released config): total parameters.
PAPER_PARAMETERS = {
    ("vit-b", True): 155.60e6,
    ("vit-b", False): 154.29e6,
    ("vit-l", True): 436.68e6,
    ("vit-l", False): 433.73e6,
}
PAPER_EVAL_GFLOPS = {"vit-b": 608.62}
FLOP_RULE = (
    "torch.utils.flop_counter: one multiply-add = 2 FLOPs, counting matmul/conv/attention ops; "
    "GMACs (fvcore / detectron2's rule, 1 per multiply-add) = GFLOPs / 2"
)


@dataclass
class ModelInfo:
    name: str
    total: int
    trainable: int
    paper_total: float | None


def variant(config: ModelConfig, perturbation: bool) -> ModelConfig:
    """The same model with both SPMs on (Pi-Seg) or off (the CAT-Seg baseline), random CLIP weights."""
    spm = dataclasses.replace(config.spm, text=perturbation, image=perturbation)
    return dataclasses.replace(config, clip=None, spm=spm)


def meta_model(config: ModelConfig) -> PiSeg:
    with torch.device("meta"):
        return build_model(config)


def parameter_table(config: ModelConfig) -> list[ModelInfo]:
    rows = []
    for perturbation, name in ((True, "Pi-Seg"), (False, "CAT-Seg baseline")):
        total, trainable = parameter_counts(meta_model(variant(config, perturbation)))
        rows.append(ModelInfo(name, total, trainable, PAPER_PARAMETERS.get((config.backbone, perturbation))))
    return rows


def eval_flops(model: PiSeg, settings: EvalConfig, height: int = 600, width: int = 800, classes: int = 35) -> int:
    """FLOPs of one sliding-window prediction of a (height x width) image; text embeddings are cached at
    evaluation, so the text encoder is not counted."""
    model.eval()
    device = next(model.parameters()).device
    text = torch.zeros(classes, 1, model.backbone.embed_dim, device=device)
    image = torch.zeros(3, height, width, device=device)
    with FlopCounterMode(display=False) as counter:
        sliding_window_probabilities(model, image, text, settings)
    return counter.get_total_flops()


def gmacs(flops: int) -> float:
    """Multiply-adds in billions, the unit of the paper's counter (fvcore), from torch's FLOPs (2 per
    multiply-add): why a separate unit, a GFLOPs figure beside the paper's reads twice as costly."""
    return flops / 2e9


def train_flops(model: PiSeg, crop: int, classes: int = 35, batch: int = 1) -> int:
    """FLOPs of one training forward of BATCH crops (a step's total batch gives the per-step cost), the text
    encoder on every class included once (training re-encodes the prompts once per step) and the SPMs on."""
    model.train()
    device = next(model.parameters()).device
    names = [f"class {index}" for index in range(classes)]
    tokens = model.backbone.tokenize(model.prompts(names))
    with FlopCounterMode(display=False) as counter:  # no padding mask: same op shapes, and meta tensors allow it
        text = model.backbone.encode_text(tokens["input_ids"].to(device), None).unsqueeze(1)
        model(torch.zeros(batch, 3, crop, crop, device=device), text)
    return counter.get_total_flops()
