"""The released training recipe (issue 15, items 1-3): ColorAugSSD, fp32/TF32 precision, sample order."""

import dataclasses

import numpy as np
import pytest
import torch

from piseg.training.batches import color_aug_ssd, hsv8_to_rgb, rgb_to_hsv8


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
    from piseg.modeling.model import build_model
    from piseg.training.train import precision

    model = build_model(preset("tiny").model).train()
    seen: list[torch.dtype] = []
    model.aggregator.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    images, text = torch.rand(1, 3, 64, 64) * 255, model.encode_classes(["building", "tree"])
    for config in (TrainConfig(), dataclasses.replace(TrainConfig(), amp=True)):
        with precision(config, torch.device("cpu")):
            model(images, text)
    assert seen == [torch.float32, torch.bfloat16]


def clustered_shards(out, rasters: int = 12, tiles: int = 8):
    """Tiles of one raster share a key prefix (as `ovrsis annotate` names them) and so sit side by side when
    sorted by key; the writer's seeded order must scatter them."""
    from pipeline.dataset.shards import ShardConfig, write_shards
    from piseg.training.synthetic import tile_record

    records = [tile_record(f"raster{r:02d}__r{t}_c0", 8) for r in range(rasters) for t in range(tiles)]
    sample = (np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((8, 8), dtype=np.uint8))
    write_shards(
        out,
        records,
        lambda record: sample,
        ["building"],
        "sha256:order",
        ShardConfig(max_samples=tiles, val_fraction=0),
    )
    return out


def test_sample_order_is_close_to_a_full_permutation(tmp_path):
    """Shards hold samples in a seeded random order, and the default buffer holds the whole split: an epoch
    is a permutation. Even a buffer of one batch (a split far larger than memory) mixes rasters within
    batches about as a permutation does, where key-sorted shards gave one raster per batch."""
    import tarfile

    from pipeline.dataset.shards import ShardReader
    from piseg.config import TrainConfig
    from piseg.training.batches import TrainingStream

    shards = clustered_shards(tmp_path / "build")
    with tarfile.open(shards / "shards" / "train-000000.tar") as tar:
        written = [name.split(".")[0] for name in tar.getnames()[::3]]
    assert len({key[:8] for key in written}) >= 5 and written != sorted(written)
    reader = ShardReader(shards)
    assert TrainingStream(reader, TrainConfig(taxonomy=None)).buffer == 96
    assert TrainingStream(reader, TrainConfig(taxonomy=None, shuffle_memory_gb=1e-6)).buffer < 96

    def rasters_per_batch(buffer: int) -> float:
        stream = TrainingStream(reader, TrainConfig(taxonomy=None, shuffle_buffer=buffer))
        keys = [raw["__key__"][:8] for raw in stream.epoch_samples(0, [])]
        assert len(keys) == 96
        return float(np.mean([len(set(keys[i : i + 8])) for i in range(0, 96, 8)]))

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 8)
    permutation = np.mean([len(set(rng.permutation(labels)[i : i + 8])) for _ in range(200) for i in range(0, 96, 8)])
    assert rasters_per_batch(8) > 0.85 * permutation and rasters_per_batch(96) > 0.85 * permutation  # ~5.9 rasters


def test_figure_10_before_uses_the_perturbed_text():
    """The released "before" cost volume pairs the clean image features with the perturbed text: with only the
    Text-SPM on, nothing changes the image, so delta is zero; with both on, before = cos(V, T_hat) exactly."""
    from piseg.config import SPMConfig, preset
    from piseg.modeling.model import build_model, cost_volume

    config = preset("tiny").model
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(config, spm=SPMConfig(image=False))).train()
    images, text = torch.rand(2, 3, 64, 64) * 255, model.encode_classes(["building", "tree", "water"]).detach()
    output = model(images, text, torch.Generator().manual_seed(1))
    assert torch.equal(output.clean_cost, output.cost)
    model = build_model(config).train()
    output = model(images, text, torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense, _ = model.backbone.encode_image(images)
        perturbed_text = model.text_spm(text, torch.Generator().manual_seed(1))
    assert torch.allclose(output.clean_cost, cost_volume(dense, perturbed_text), atol=1e-6)
    assert not torch.allclose(output.clean_cost, cost_volume(dense, text), atol=1e-3)


class ImageEcho(torch.nn.Module):
    """A stand-in model whose two 'class' logits are its input's red and green channels pooled 4x, so an
    inference scheme's views can be read back from its output. Like CLIP in Pi-Seg, it first resizes what it is
    given to its input size (`backbone.resolution`: 336 for ViT-L, whose crops are 384)."""

    def __init__(self, resolution: int = 64) -> None:
        from types import SimpleNamespace

        super().__init__()
        self.backbone = SimpleNamespace(resolution=resolution)

    def forward(self, images: torch.Tensor, text: torch.Tensor):
        from types import SimpleNamespace

        size = self.backbone.resolution
        if images.shape[-2:] != (size, size):
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return SimpleNamespace(logits=torch.nn.functional.avg_pool2d(images[:, :2] / 64 - 2, 4))


def test_sliding_window_global_view_and_whole_image_padding_as_released():
    """Global view: the shortest-edge image squashed to the crop (not the 640x640 squash). Whole image: padded
    to a multiple of 32 with CLIP's mean colour, squashed to one crop, stretched back padding included."""
    import torch.nn.functional as F

    from piseg.config import EvalConfig
    from piseg.inference.scheme import (
        crop_offsets,
        shortest_edge_resize,
        sliding_window_probabilities,
        whole_image_probabilities,
    )
    from piseg.modeling.clip_backbone import CLIP_MEAN

    settings = EvalConfig(resize=96, crop=64, stride=32)
    rng = torch.Generator().manual_seed(0)
    image = torch.rand(3, 50, 130, generator=rng) * 255  # wide, so squashing twice and once differ
    model, text = ImageEcho(), torch.zeros(2, 1, 4)

    def resize(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    shortest = shortest_edge_resize(image[None], 96)  # 96 x 250
    square = resize(shortest, (96, 96))
    offsets = crop_offsets(96, 64, 32)
    local, count = torch.zeros(2, 96, 96), torch.zeros(1, 96, 96)
    for top in offsets:
        for left in offsets:
            local[:, top : top + 64, left : left + 64] += resize(
                model(square[..., top : top + 64, left : left + 64], text).logits, (64, 64)
            ).sigmoid()[0]
            count[:, top : top + 64, left : left + 64] += 1
    overall = resize(resize(model(resize(shortest, (64, 64)), text).logits, (64, 64)).sigmoid(), (96, 96))[0]
    expected = resize(((local / count + overall) / 2)[None], (50, 130))[0]
    assert torch.allclose(sliding_window_probabilities(model, image, text, settings), expected, atol=1e-5)

    padded = torch.empty(1, 3, 96, 256)
    padded[:] = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    padded[..., :96, :250] = shortest
    expected = resize(model(resize(padded, (64, 64)), text).logits.sigmoid(), (50, 130))[0]
    assert torch.allclose(whole_image_probabilities(model, image, text, settings), expected, atol=1e-5)
    unpadded = resize(model(resize(shortest, (64, 64)), text).logits.sigmoid(), (50, 130))[0]
    assert torch.allclose(
        whole_image_probabilities(model, image, text, dataclasses.replace(settings, whole_pad=0)), unpadded, atol=1e-5
    )


def test_whole_image_view_is_resized_once_to_the_models_input_size():
    """ViT-L (crops of 384, CLIP at 336): the released no-slide view goes from the padded image straight to 336;
    resizing to the crop first and then to the input size blurs it twice."""
    import torch.nn.functional as F

    from piseg.config import EvalConfig
    from piseg.inference.scheme import pad_to_multiple, shortest_edge_resize, whole_image_probabilities

    settings = EvalConfig(resize=96, crop=64, stride=32)  # as ViT-L's 640 / 384, with an input of 48 (336)
    image = torch.rand(3, 50, 130, generator=torch.Generator().manual_seed(1)) * 255
    model, text = ImageEcho(resolution=48), torch.zeros(2, 1, 4)

    def resize(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    padded = pad_to_multiple(shortest_edge_resize(image[None], 96), 32)
    once = resize(model(resize(padded, (48, 48)), text).logits.sigmoid(), (50, 130))[0]
    twice = resize(model(resize(resize(padded, (64, 64)), (48, 48)), text).logits.sigmoid(), (50, 130))[0]
    assert not torch.allclose(once, twice, atol=1e-3)
    assert torch.allclose(whole_image_probabilities(model, image, text, settings), once, atol=1e-5)


def test_released_training_defaults():
    """The released configs' SEED 42; Student-t noise with df 3 (when that family is chosen)."""
    from piseg.config import SPMConfig, TrainConfig

    assert TrainConfig().seed == 42 and SPMConfig().student_t_df == 3


def test_shuffle_buffer_is_sized_from_memory_and_says_whether_an_epoch_is_a_full_permutation(tmp_path, monkeypatch):
    """Rule: half the machine's memory over the buffers on it (processes x loader workers); the whole split when
    it fits. At OVRSIS95K scale (here: 85,000 samples in 30 GiB of shards) a 128 GiB machine holds the split
    in each of 1 process x 2 workers' buffers, where the former fixed 2 GB held 7 %. The start-of-training
    statement says which case holds, from the manifest's bytes."""
    from types import SimpleNamespace

    from pipeline.dataset.shards import ShardReader
    from piseg.config import TrainConfig
    from piseg.training import batches
    from piseg.training.batches import TrainingStream, buffer_budget, data_sized_buffer, order_statement

    monkeypatch.setattr(batches, "physical_memory", lambda: 128 * 2**30)
    recipe = TrainConfig(workers=2)
    assert buffer_budget(recipe, local_processes=1) == 32 * 2**30
    assert buffer_budget(recipe, local_processes=4) == 8 * 2**30
    assert buffer_budget(TrainConfig(workers=0), local_processes=1) == 64 * 2**30  # one buffer, in the process
    assert buffer_budget(TrainConfig(shuffle_memory_gb=2.0), local_processes=1) == 2 * 2**30  # explicit cap
    ovrsis95k = SimpleNamespace(sample_count=lambda split: 85_000, split_bytes=lambda split: 30 * 2**30)
    assert data_sized_buffer(ovrsis95k, buffer_budget(recipe, 1)) == 85_000
    assert data_sized_buffer(ovrsis95k, 2 * 2**30) == 5_666  # the old default: an epoch was not a permutation

    reader = ShardReader(clustered_shards(tmp_path / "build"))
    whole = TrainingStream(reader, TrainConfig(taxonomy=None))
    assert whole.buffer == 96 and order_statement(whole, reader).endswith("each epoch is a full random permutation")
    part = TrainingStream(reader, TrainConfig(taxonomy=None, shuffle_memory_gb=reader.split_bytes("train") / 2 / 2**30))
    statement = order_statement(part, reader)
    assert part.buffer == 48 and "holds 48 of 96 training samples" in statement
    assert "an epoch is NOT a full random permutation" in statement and "(~6.0 of 12 shards)" in statement
