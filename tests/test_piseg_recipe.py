"""The released training recipe (issue 15, items 1-3): ColorAugSSD, fp32/TF32 precision, sample order."""

import dataclasses

import numpy as np
import pytest
import torch

from piseg.data import color_aug_ssd, hsv8_to_rgb, rgb_to_hsv8


def test_hsv_conversions_match_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 256, 3), dtype=np.uint8)
    assert np.array_equal(rgb_to_hsv8(image), cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    hsv = np.stack([rng.integers(0, 180, (64, 256)), *rng.integers(0, 256, (2, 64, 256))], axis=-1).astype(np.uint8)
    ours, theirs = hsv8_to_rgb(hsv).astype(int), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(int)
    assert np.abs(ours - theirs).max() <= 1 and (ours == theirs).mean() > 0.999  # width 256: OpenCV's vector path only


def test_color_aug_ssd_statistics_over_many_draws():
    """On grey only brightness and contrast act: a quarter of the draws leave it untouched, brightness shifts
    by at most 32, contrast scales by 0.5-1.5. On a saturated colour the hue moves by at most 18 (of 180) and
    only in about half the draws (brightness and contrast keep the hue)."""
    rng = np.random.default_rng(0)
    grey = np.full((4, 4, 3), 100, dtype=np.uint8)
    values = np.array([color_aug_ssd(grey, rng)[0, 0, 0] for _ in range(4000)], dtype=int)
    assert abs((values == 100).mean() - 0.25) < 0.03
    assert values.min() >= 34 and values.max() <= 198 and values.min() < 45 and values.max() > 185
    assert abs(values.mean() - 100) < 3  # the additive and multiplicative steps are centred
    red = np.tile(np.array([150, 80, 60], dtype=np.uint8), (4, 4, 1))  # never clipped by the steps
    hue = int(rgb_to_hsv8(red)[0, 0, 0])
    shifts = np.array([(int(rgb_to_hsv8(color_aug_ssd(red, rng))[0, 0, 0]) - hue + 90) % 180 - 90 for _ in range(4000)])
    assert np.abs(shifts).max() <= 19 and np.abs(shifts).max() >= 16
    assert abs((np.abs(shifts) >= 2).mean() - 0.5 * 34 / 37) < 0.04


def test_training_forward_is_fp32_by_default_and_bf16_with_amp():
    from piseg.config import TrainConfig, preset
    from piseg.model import build_model
    from piseg.train import precision

    model = build_model(preset("tiny").model).train()
    seen: list[torch.dtype] = []
    model.aggregator.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    images, text = torch.rand(1, 3, 64, 64) * 255, model.encode_classes(["building", "tree"])
    for config in (TrainConfig(), dataclasses.replace(TrainConfig(), amp=True)):
        with precision(config, torch.device("cpu")):
            model(images, text)
    assert seen == [torch.float32, torch.bfloat16]
