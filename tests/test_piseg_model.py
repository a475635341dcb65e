"""Pi-Seg's modules: shapes, parameter counts against the paper, the SPMs and the trainability rule."""

import dataclasses

import numpy as np
import pytest
import torch

from piseg.config import ConfigError, load_config, preset
from piseg.evaluation.counts import meta_model, parameter_table, variant
from piseg.modeling.aggregator import ClassAggregation, SwinBlock
from piseg.modeling.model import build_model, cost_volume
from piseg.modeling.spm import ImageSPM, TextSPM, unit_noise
from piseg.training.train import parameter_groups, segmentation_loss

NAMES = ["building", "road", "vehicle, car"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(preset("tiny").model)


@pytest.mark.parametrize(
    "backbone, pi_seg, baseline, channels",
    [
        ("vit-b", 155_603_682, 154_289_378, 512),
        ("vit-l", 436_681_442, 433_726_946, 768),
    ],
)
def test_parameter_counts_match_the_paper(backbone, pi_seg, baseline, channels):
    rows = parameter_table(preset(backbone).model)
    assert [r.total for r in rows] == [pi_seg, baseline]
    for row in rows:  # paper Table XII, within 0.1 %
        assert abs(row.total - row.paper_total) / row.paper_total < 1e-3
    assert pi_seg - baseline == 5 * (channels**2 + channels) + 2 * channels  # Image-SPM (r = 1) + Text-SPM


def test_reduction_ratio_shrinks_the_image_spm():
    config = preset("vit-b").model
    halved = dataclasses.replace(config, spm=dataclasses.replace(config.spm, reduction=2))
    c, inner = 512, 256
    full = sum(p.numel() for p in meta_model(variant(config, True)).parameters())
    small = sum(p.numel() for p in meta_model(variant(halved, True)).parameters())
    assert full - small == 5 * (c * c + c) - (3 * (c * inner + inner) + 2 * (inner * c + c))


def test_shapes_through_every_module(tiny):
    config = tiny.config
    images = torch.rand(2, 3, 64, 64) * 255
    dense, blocks = tiny.backbone.encode_image(images)
    grid, width = tiny.backbone.grid, tiny.backbone.vision_width
    assert dense.shape == (2, 32, grid, grid) and [b.shape for b in blocks] == [(2, width, grid, grid)] * 2
    text = tiny.encode_classes(NAMES)
    assert text.shape == (3, 1, 32)
    assert cost_volume(dense, text).shape == (2, 1, 3, grid, grid)
    assert TextSPM(32, 0.02, "gaussian", 5)(text).shape == text.shape
    assert ImageSPM(32, 2, "laplace", 5)(dense, text).shape == dense.shape
    block = SwinBlock(16, 8, heads=2, window=4, shift=2)
    assert block(torch.rand(6, 64, 16), torch.rand(6, 64, 8), side=8).shape == (6, 64, 16)
    classes = ClassAggregation(16, 8, heads=2, pad_len=4)
    for count in (3, 6):  # padded, and more classes than pad_len
        assert classes(torch.rand(2, 16, count, 8, 8), torch.rand(count, 8), pool=2).shape == (2, 16, count, 8, 8)
    tiny.eval()
    assert tiny(images, text).logits.shape == (2, 3, 4 * grid, 4 * grid)
    # a different input size is resized to the CLIP resolution inside the model
    assert tiny(torch.rand(1, 3, 80, 80) * 255, text).logits.shape == (1, 3, 4 * grid, 4 * grid)
    assert config.pad_len == 64


def test_shifted_window_mask_blocks_wrapped_neighbours():
    mask = SwinBlock(8, 0, heads=1, window=4, shift=2)._mask(8, torch.device("cpu"), torch.float32)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region
    assert torch.isinf(mask[3]).any()  # the bottom-right window mixes wrapped regions


def test_spms_perturb_in_training_only(tiny):
    images = torch.rand(2, 3, 64, 64) * 255
    text = tiny.encode_classes(NAMES).detach()
    tiny.train()
    draw = lambda seed: tiny(images, text, torch.Generator().manual_seed(seed))  # noqa: E731
    first, again, other = draw(1), draw(1), draw(2)
    assert torch.equal(first.logits, again.logits) and not torch.allclose(first.logits, other.logits)
    assert first.clean_cost is not None and not torch.allclose(first.cost, first.clean_cost)
    tiny.eval()
    evaluated = tiny(images, text, torch.Generator().manual_seed(1))
    assert evaluated.clean_cost is None and torch.equal(
        evaluated.cost, cost_volume(tiny.backbone.encode_image(images)[0], text)
    )
    # eval output = the CAT-Seg baseline with the same weights
    baseline_config = variant(tiny.config, False)
    baseline = build_model(dataclasses.replace(baseline_config, clip=None)).eval()
    missing, unexpected = baseline.load_state_dict(tiny.state_dict(), strict=False)
    assert not missing and all(k.startswith(("text_spm.", "image_spm.")) for k in unexpected)
    assert torch.equal(baseline(images, text).logits, evaluated.logits)


@pytest.mark.parametrize(
    "family, df, kurtosis",
    [
        ("gaussian", 5, 3.0),
        ("uniform", 5, 1.8),
        ("laplace", 5, 6.0),
        ("student-t", 5, None),
        ("student-t", 10, 4.0),
        ("student-t", 3, None),
    ],
)
def test_noise_families_have_unit_variance(family, df, kurtosis):
    z = unit_noise((1_000_000,), family, df, torch.Generator().manual_seed(0)).double()
    assert abs(z.mean()) < 0.01
    assert abs(z.var() - 1) < (0.08 if df == 3 else 0.02)  # df 3: infinite fourth moment, slow convergence
    if kurtosis is not None:  # the family really is the named one
        measured = float(((z - z.mean()) ** 4).mean() / z.var() ** 2)
        assert abs(measured - kurtosis) < 0.15 * kurtosis


def test_noise_family_and_other_settings_are_validated(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  spm:\n    text_noise: cauchy\n")
    with pytest.raises(ConfigError, match="cauchy"):
        load_config(path)
    path.write_text("train:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(path)


def test_only_query_and_value_projections_of_clip_train(tiny):
    last = tiny.backbone.clip.config.vision_config.num_hidden_layers - 1
    for name, parameter in tiny.backbone.clip.named_parameters():
        projection_weight = name.endswith((".self_attn.q_proj.weight", ".self_attn.v_proj.weight"))
        expected = projection_weight and not name.startswith(f"vision_model.encoder.layers.{last}.self_attn.q_proj")
        assert parameter.requires_grad == expected, name
    assert all(p.requires_grad for n, p in tiny.named_parameters() if not n.startswith("backbone."))
    model = build_model(preset("tiny").model).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(parameter_groups(model, preset("tiny")))
    masks = torch.randint(0, 3, (2, 64, 64))
    loss = segmentation_loss(
        model(torch.rand(2, 3, 64, 64) * 255, model.encode_classes(NAMES)).logits, masks, "negative"
    )
    loss.backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter)
        assert changed == parameter.requires_grad, name


def test_ignore_pixels_are_negatives_or_left_out():
    logits = torch.zeros(1, 2, 4, 4)
    masks = torch.full((1, 4, 4), 255)
    masks[0, 0, 0] = 1
    negative, excluded = segmentation_loss(logits, masks, "negative"), segmentation_loss(logits, masks, "exclude")
    assert torch.isclose(negative, torch.tensor(np.log(2), dtype=torch.float32))
    assert torch.isclose(excluded, torch.tensor(np.log(2), dtype=torch.float32))
    logits[0, 1] = 5.0  # confident "class 1" everywhere: wrong on the 15 ignore pixels only if they are negatives
    softplus = lambda x: float(np.log1p(np.exp(x)))  # noqa: E731
    expected_negative = (16 * np.log(2) + softplus(-5) + 15 * softplus(5)) / 32
    expected_excluded = (np.log(2) + softplus(-5)) / 2
    assert segmentation_loss(logits, masks, "negative").item() == pytest.approx(expected_negative, rel=1e-5)
    assert segmentation_loss(logits, masks, "exclude").item() == pytest.approx(expected_excluded, rel=1e-5)


def test_pretrained_clip_loads_from_a_local_folder_and_checkpoints_need_no_folder(tmp_path):
    """The real-weights path: CLIP weights + tokenizer from a folder (as from the hub), then a
    self-contained checkpoint that loads after the folder is gone."""
    import shutil

    from transformers import CLIPModel

    from piseg.checkpoint import load_model, save_checkpoint
    from piseg.modeling.clip_backbone import byte_level_tokenizer, clip_config

    config = preset("tiny")
    folder = tmp_path / "clip"
    torch.manual_seed(3)
    saved = CLIPModel(clip_config(config.model.architecture))
    saved.save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    config.model = dataclasses.replace(config.model, clip=str(folder))
    model = build_model(config.model)
    assert torch.equal(
        model.backbone.clip.vision_model.encoder.layers[0].self_attn.q_proj.weight,
        saved.vision_model.encoder.layers[0].self_attn.q_proj.weight,
    )
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, config, NAMES, "v")
    shutil.rmtree(folder)
    loaded, loaded_config, payload = load_model(path)
    assert payload["tokenizer_files"] and loaded_config.model.clip == str(folder)
    model.eval()
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        expected = model(images, model.encode_classes(NAMES)).logits
        assert torch.equal(loaded(images, loaded.encode_classes(NAMES)).logits, expected)
    with pytest.raises(OSError, match="cannot load CLIP from"):
        build_model(dataclasses.replace(config.model, clip=str(tmp_path / "nowhere")))
