"""CLIP encoders for Pi-Seg: dense image features, decoder guidance and class-name embeddings.

Built on transformers' CLIP because its attention has separate query/key/value projections, so the
"train only q and v" rule is a plain `requires_grad` switch instead of a mask over a packed matrix.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from pipeline.files.safe_names import UnsafeName, confined_name, confined_path
from piseg.config import ClipArchitecture, ModelConfig

CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)  # on 0-255, as docs/piseg.md
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)
BYTE_VOCAB_LIMIT = 1000  # vocabularies this small are the byte-level one below
# The files a checkpoint's tokenizer may hold: what CLIPTokenizer.save_pretrained writes (transformers 5.24:
# tokenizer.json, tokenizer_config.json) and what earlier versions wrote beside them. Nothing else is written.
TOKENIZER_FILE_NAMES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "added_tokens.json",
    }
)
# OpenAI's CLIP tokenizer.json is a few million characters; several times that is no CLIP tokenizer.
MAX_TOKENIZER_FILE_CHARS = 16 * 2**20


def clip_config(arch: ClipArchitecture) -> CLIPConfig:
    text = {
        "hidden_size": arch.text_hidden,
        "num_hidden_layers": arch.text_layers,
        "num_attention_heads": arch.text_heads,
        "intermediate_size": arch.text_intermediate,
        "vocab_size": arch.vocab_size,
        "max_position_embeddings": arch.max_text_length,
        "hidden_act": "quick_gelu",
    }
    if arch.vocab_size < BYTE_VOCAB_LIMIT:  # the byte-level tokenizer's special tokens
        text.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = {
        "hidden_size": arch.vision_hidden,
        "num_hidden_layers": arch.vision_layers,
        "num_attention_heads": arch.vision_heads,
        "intermediate_size": arch.vision_intermediate,
        "patch_size": arch.patch_size,
        "image_size": arch.pretrained_image_size,
        "hidden_act": "quick_gelu",
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=arch.projection_dim)


def is_trainable_clip_parameter(name: str, last_vision_layer: int) -> bool:
    """Only the attention query and value projection weights of both encoders train (docs/piseg.md; the released
    code keeps q/k/v biases packed in one frozen tensor). The last vision block's query is excluded: the
    dense path reads only its value path, so it gets no gradient."""
    if name == f"vision_model.encoder.layers.{last_vision_layer}.self_attn.q_proj.weight":
        return False
    return name.endswith((".self_attn.q_proj.weight", ".self_attn.v_proj.weight"))


class ClipBackbone(nn.Module):
    """Wraps a transformers CLIPModel; exposes the pieces Pi-Seg needs and nothing else."""

    def __init__(self, clip: CLIPModel, tokenizer: CLIPTokenizer, config: ModelConfig) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.guidance_layers = tuple(config.guidance_layers)
        self.resolution = config.clip_resolution
        self.patch_size = clip.config.vision_config.patch_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        last = clip.config.vision_config.num_hidden_layers - 1
        for name, parameter in self.clip.named_parameters():
            parameter.requires_grad = is_trainable_clip_parameter(name, last)

    @property
    def grid(self) -> int:
        return self.resolution // self.patch_size

    @property
    def embed_dim(self) -> int:
        return self.clip.config.projection_dim

    @property
    def vision_width(self) -> int:
        return self.clip.config.vision_config.hidden_size

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        length = self.clip.config.text_config.max_position_embeddings
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) tokens -> (N, C) projected text embeddings (not normalised)."""
        return self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 3, H, W) pixels on 0-255 -> dense features (B, C, g, g) and the guidance blocks' tokens
        as maps (B, width, g, g). Dense features: the last block's value path (docs/piseg.md)."""
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(
                images, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False
            )
        pixels = (images - self.mean) / self.std
        vision = self.clip.vision_model
        tokens = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=True))
        layers = vision.encoder.layers
        guidance = []
        for index, layer in enumerate(layers[:-1]):
            tokens = layer(tokens, None)
            if index in self.guidance_layers:
                guidance.append(self._to_map(tokens[:, 1:]))
        last = layers[-1]
        values = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(tokens))) + tokens[:, :1]
        values = values + last.mlp(last.layer_norm2(values))
        dense = self.clip.visual_projection(vision.post_layernorm(values[:, 1:]))
        return self._to_map(dense), guidance

    def _to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, channels = tokens.shape
        side = int(count**0.5)
        return tokens.transpose(1, 2).reshape(batch, channels, side, side)


def load_clip(config: ModelConfig) -> ClipBackbone:
    """Pretrained weights from `config.clip` (hub id or local folder), or random weights when it is None."""
    if config.clip is None:
        return ClipBackbone(CLIPModel(clip_config(config.architecture)), byte_level_tokenizer(), config)
    try:
        clip = CLIPModel.from_pretrained(config.clip)
        tokenizer = CLIPTokenizer.from_pretrained(config.clip)
    except OSError as error:
        raise OSError(
            f"cannot load CLIP from {config.clip!r} (a hub id needs the model cached or a connection; "
            f"a local folder needs config.json, weights and tokenizer files): {error}"
        ) from error
    return ClipBackbone(clip.float(), tokenizer, config)


def saved_clip(clip_settings: dict, tokenizer_files: object, config: ModelConfig) -> ClipBackbone:
    """A CLIP with a checkpoint's shape and tokenizer; its weights are then loaded from the checkpoint."""
    files = checked_tokenizer_files(tokenizer_files)
    clip = CLIPModel(CLIPConfig(**clip_settings))
    tokenizer = saved_tokenizer(files) if files else byte_level_tokenizer()
    return ClipBackbone(clip, tokenizer, config)


def checked_tokenizer_files(files: object) -> dict[str, str]:
    """`files` when it maps known CLIP tokenizer file names to text of bounded size; a ValueError naming the
    entry otherwise. Why: a checkpoint may come from someone else, and these entries become files on disk,
    so a name may not choose where (`../x`, `/x`, a `.pth` for site-packages) and a value may not fill it."""
    if not isinstance(files, dict):
        raise ValueError(f"tokenizer_files is a {type(files).__name__}, not a mapping of file names to text")
    for name, text in files.items():
        confined_name(name, "tokenizer_files entry")
        if name not in TOKENIZER_FILE_NAMES:
            raise UnsafeName(
                f"tokenizer_files entry {name!r} is not a CLIP tokenizer file "
                f"(known: {', '.join(sorted(TOKENIZER_FILE_NAMES))})"
            )
        if not isinstance(text, str):
            raise ValueError(f"tokenizer_files entry {name!r} is a {type(text).__name__}, not text")
        if len(text) > MAX_TOKENIZER_FILE_CHARS:
            raise ValueError(
                f"tokenizer_files entry {name!r} holds {len(text):,} characters, "
                f"more than a CLIP tokenizer file's limit of {MAX_TOKENIZER_FILE_CHARS:,}"
            )
    return files


def saved_tokenizer(files: dict[str, str]) -> CLIPTokenizer:
    """The tokenizer a checkpoint carries, from files checked by `checked_tokenizer_files`. Why a fresh
    temporary folder: mkdtemp makes it private (0700) and empty, so nobody can plant a link in it, and the
    names (confined to it once more) are the project's known ones; nothing lands where the file says."""
    with tempfile.TemporaryDirectory(prefix="piseg-tokenizer-") as folder:
        for name, text in files.items():
            confined_path(Path(folder), name, "tokenizer_files entry").write_text(text, encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def tokenizer_files(backbone: ClipBackbone, config: ModelConfig) -> dict[str, str]:
    """The tokenizer's files as text, so a checkpoint needs no hub access to be used (empty = byte-level)."""
    if config.clip is None:
        return {}
    with tempfile.TemporaryDirectory() as folder:
        backbone.tokenizer.save_pretrained(folder)
        return {path.name: path.read_text(encoding="utf-8") for path in Path(folder).iterdir() if path.is_file()}


def byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer with no merges: one token per byte-level character. Lets random-weight
    models tokenise any class name offline; real models bring their own vocabulary."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(vocab=str(Path(folder) / "vocab.json"), merges=str(Path(folder) / "merges.txt"))
