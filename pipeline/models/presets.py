"""Named model sets with pinned hub ids and revisions: `models: default | fast | best`.

default  Florence-2-large + GroundingDINO-base + SAM ViT-B: the models the paper's pipeline names.
fast     Florence-2-base + MM-Grounding-DINO-T + SAM 2.1 small: a third of the captioner, a smaller
         detector that beats GroundingDINO-T zero-shot, SAM 2's cheaper Hiera encoder.
best     Florence-2-large + MM-Grounding-DINO-B + SAM 2.1 large.

Revisions are "main" until they are pinned to commit hashes on a machine with network access
(`ovrsis models fetch PRESET` prints the commit each one resolved to); a hash never guessed.
"""

from __future__ import annotations

PRESETS: dict[str, dict[str, dict]] = {
    "default": {
        "captioner": {
            "backend": "image-text-to-text",
            "model": "florence-community/Florence-2-large",
            "revision": "main",
        },
        "detector": {"backend": "grounding-dino", "model": "IDEA-Research/grounding-dino-base", "revision": "main"},
        "segmenter": {"backend": "sam", "model": "facebook/sam-vit-base", "revision": "main"},
    },
    "fast": {
        "captioner": {
            "backend": "image-text-to-text",
            "model": "florence-community/Florence-2-base",
            "revision": "main",
        },
        "detector": {
            "backend": "mm-grounding-dino",
            "model": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
            "revision": "main",
        },
        "segmenter": {"backend": "sam2", "model": "facebook/sam2.1-hiera-small", "revision": "main"},
    },
    "best": {
        "captioner": {
            "backend": "image-text-to-text",
            "model": "florence-community/Florence-2-large",
            "revision": "main",
        },
        "detector": {
            "backend": "mm-grounding-dino",
            "model": "openmmlab-community/mm_grounding_dino_base_all",
            "revision": "main",
        },
        "segmenter": {"backend": "sam2", "model": "facebook/sam2.1-hiera-large", "revision": "main"},
    },
}
