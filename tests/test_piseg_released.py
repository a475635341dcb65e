"""Converting the authors' released (detectron2) checkpoints.

The released CLIP is OpenAI's layout; open_clip builds the same layout, so a random tiny open_clip model,
stored the way the released code stores it (q/k/v weights split, biases packed), is the independent
reference: after conversion our encoders must give open_clip's outputs. The head's released names are
written out below from the released source, separately from the converter's rules."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from PIL import Image
from typer.testing import CliRunner

from piseg.checkpoint import load_model
from piseg.cli import app
from piseg.config import preset
from piseg.modeling.clip_backbone import CLIP_MEAN, CLIP_STD, byte_level_tokenizer
from piseg.modeling.model import build_model
from piseg.released.convert import (
    CLIP_PREFIX,
    ReleasedCheckpointError,
    convert_released,
    convert_state_dict,
    infer_architecture,
    read_released,
)

NAMES = ["background", "building", "road"]
runner = CliRunner()

# Released head tensor -> ours, transcribed from the released source (cat_seg_model.py, Decoder_Head.py,
# Cost_Aggregation.py, OriAggregator/*, pini_vpn.py), for one aggregation layer; {i} = layer.
RELEASED_HEAD = {
    "upsample1.weight": "guidance_up1.weight",
    "upsample2.bias": "guidance_up2.bias",
    "sem_seg_head.predictor.transformer.conv1.weight": "aggregator.embed.weight",
    "sem_seg_head.predictor.transformer.guidance_projection.0.weight": "aggregator.appearance_projection.0.weight",
    "sem_seg_head.predictor.transformer.text_guidance_projection.0.bias": "aggregator.text_projection.0.bias",
    "sem_seg_head.predictor.transformer.decoder_guidance_projection.1.0.weight": (
        "aggregator.decoder_guidance_projection.1.0.weight"
    ),
    "sem_seg_head.predictor.transformer.layers.{i}.sptial_agg.block_1.attn.q.weight": (
        "aggregator.layers.{i}.spatial.block_1.attn.q.weight"
    ),
    "sem_seg_head.predictor.transformer.layers.{i}.sptial_agg.block_2.attn.proj.bias": (
        "aggregator.layers.{i}.spatial.block_2.attn.proj.bias"
    ),
    "sem_seg_head.predictor.transformer.layers.{i}.sptial_agg.block_2.mlp.fc1.weight": (
        "aggregator.layers.{i}.spatial.block_2.mlp.0.weight"
    ),
    "sem_seg_head.predictor.transformer.layers.{i}.sptial_agg.block_1.mlp.fc2.bias": (
        "aggregator.layers.{i}.spatial.block_1.mlp.2.bias"
    ),
    "sem_seg_head.predictor.transformer.layers.{i}.sptial_agg.guidance_norm.weight": (
        "aggregator.layers.{i}.spatial.guidance_norm.weight"
    ),
    "sem_seg_head.predictor.transformer.layers.{i}.class_agg.attention.k.weight": (
        "aggregator.layers.{i}.classes.k.weight"
    ),
    "sem_seg_head.predictor.transformer.layers.{i}.class_agg.MLP.2.weight": (
        "aggregator.layers.{i}.classes.mlp.2.weight"
    ),
    "sem_seg_head.predictor.transformer.layers.{i}.class_agg.norm2.bias": "aggregator.layers.{i}.classes.norm2.bias",
    "sem_seg_head.predictor.transformer.layers.{i}.class_agg.padding_guidance": (
        "aggregator.layers.{i}.classes.padding_guidance"
    ),
    "sem_seg_head.predictor.transformer.decoder1.up.weight": "aggregator.decoder1.up.weight",
    "sem_seg_head.predictor.transformer.decoder2.conv.double_conv.4.weight": "aggregator.decoder2.conv.layers.4.weight",
    "sem_seg_head.predictor.transformer.head.weight": "aggregator.head.weight",
    "sem_seg_head.predictor.image_vpn.cross_attn.fc_k.weight": "image_spm.k.weight",
    "sem_seg_head.predictor.image_vpn.fc_mean.bias": "image_spm.mu.bias",
    "sem_seg_head.predictor.image_vpn.fc_variance.weight": "image_spm.sigma.weight",
    "sem_seg_head.predictor.text_vpn.var": "text_spm.sigma",
}


def tiny_open_clip() -> CLIP:
    """OpenAI-layout CLIP with the tiny preset's depths, 64-wide towers (OpenAI's rule: width // 64 heads)."""
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        quick_gelu=True,
        vision_cfg=CLIPVisionCfg(layers=3, width=64, head_width=64, patch_size=8, image_size=32, mlp_ratio=2.0),
        text_cfg=CLIPTextCfg(
            context_length=32,
            vocab_size=515,
            width=64,
            heads=1,
            layers=2,
            mlp_ratio=2.0,
            pool_type="eos",
            eos_id=byte_level_tokenizer().eos_token_id,
        ),
    )
    with torch.no_grad():
        for parameter in model.parameters():  # no zero biases or unit norms: every tensor must matter
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def released_clip_state(model: CLIP) -> dict[str, torch.Tensor]:
    """open_clip's state dict as the released code stores it: q/k/v weights split (its Attention class)."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key.endswith("attn.in_proj_weight"):
            for part, chunk in zip("qkv", tensor.chunk(3), strict=True):
                state[CLIP_PREFIX + key.replace("in_proj_weight", f"{part}_proj_weight")] = chunk.clone()
        else:
            state[CLIP_PREFIX + key] = tensor.clone()
    return state


def head_config():
    config = preset("tiny")
    return dataclasses.replace(config, model=dataclasses.replace(config.model, clip_resolution=32))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released-layout checkpoint: full CLIP from open_clip, full head from a template Pi-Seg."""
    folder = tmp_path_factory.mktemp("released")
    reference = tiny_open_clip()
    state = released_clip_state(reference)
    template = build_model(dataclasses.replace(head_config().model, architecture=infer_architecture(state)))
    inverse = {ours: name for name, ours in _expanded_table(2).items()}
    torch.manual_seed(1)
    for our_name, tensor in template.state_dict().items():
        if our_name.startswith("backbone."):
            continue
        released_name = inverse.get(our_name) or _released_name(our_name)
        value = torch.randn(tensor.shape) * 0.1
        state[released_name] = (
            value.view(1, 1, 1, -1) if released_name.endswith(("text_vpn.mu", "text_vpn.var")) else value
        )
    state["sem_seg_head.predictor.transformer.layers.0.sptial_agg.block_2.attn_mask"] = torch.zeros(4, 4, 4)
    path = folder / "model_final.pth"
    torch.save({"model": state, "iteration": 40000}, path)
    return path, reference, state


def _expanded_table(layers: int) -> dict[str, str]:
    table = {}
    for released_name, our_name in RELEASED_HEAD.items():
        for i in range(layers) if "{i}" in released_name else [None]:
            table[released_name.format(i=i)] = our_name.format(i=i)
    return table


def _released_name(our_name: str) -> str:
    """The released name of a head tensor the table does not list (same module, released spelling)."""
    replacements = [
        ("guidance_up", "upsample"),
        ("aggregator.embed", "transformer.conv1"),
        ("aggregator.appearance_projection", "transformer.guidance_projection"),
        ("aggregator.text_projection", "transformer.text_guidance_projection"),
        ("aggregator.", "transformer."),
        (".spatial.", ".sptial_agg."),
        (".mlp.0.", ".mlp.fc1."),
        (".mlp.2.", ".mlp.fc2."),
        (".classes.mlp.fc1.", ".class_agg.MLP.0."),
        (".classes.mlp.fc2.", ".class_agg.MLP.2."),
        (".classes.q.", ".class_agg.attention.q."),
        (".classes.k.", ".class_agg.attention.k."),
        (".classes.v.", ".class_agg.attention.v."),
        (".classes.", ".class_agg."),
        ("conv.layers.", "conv.double_conv."),
        ("image_spm.q.", "image_vpn.cross_attn.fc_q."),
        ("image_spm.k.", "image_vpn.cross_attn.fc_k."),
        ("image_spm.v.", "image_vpn.cross_attn.fc_v."),
        ("image_spm.mu.", "image_vpn.fc_mean."),
        ("image_spm.sigma.", "image_vpn.fc_variance."),
        ("text_spm.mu", "text_vpn.mu"),
        ("text_spm.sigma", "text_vpn.var"),
    ]
    name = our_name
    for old, new in replacements:
        name = name.replace(old, new)
    return name if name.startswith("upsample") else "sem_seg_head.predictor." + name


def reference_dense(
    model: CLIP, pixels: torch.Tensor, blocks: tuple[int, int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The released dense path, written against open_clip's modules: the last block's value path through
    out_proj, plus the block input's CLS token, plus the MLP; then ln_post and proj. Guidance = block outputs."""
    visual = model.visual
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    guidance = []
    resblocks = visual.transformer.resblocks
    for index, block in enumerate(resblocks[:-1]):
        x = block(x)
        if index in blocks:
            guidance.append(x[:, 1:])
    last = resblocks[-1]
    width = x.shape[-1]
    v = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width :], last.attn.in_proj_bias[2 * width :])
    v = last.attn.out_proj(v) + x[:, :1]
    v = v + last.mlp(last.ln_2(v))
    return visual.ln_post(v[:, 1:]) @ visual.proj, guidance


def test_released_weights_give_open_clip_outputs_and_the_head_tensors(released, tmp_path):
    path, reference, state = released
    out = tmp_path / "converted.pt"
    summary = convert_released(path, out, NAMES, "v-test", head_config(), tokenizer_source=None)
    assert summary["text_spm"] and summary["image_spm"] and summary["reduction"] == 1 and summary["layers"] == 2
    model, config, _ = load_model(out)
    assert config.model.architecture.vision_hidden == 64 and config.model.architecture.vision_heads == 1

    tokens = model.backbone.tokenize(["a photo of a road in the scene", "bareland"])
    ours = model.backbone.encode_text(tokens["input_ids"], tokens["attention_mask"])
    with torch.no_grad():
        theirs = reference.encode_text(tokens["input_ids"])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)

    images = torch.rand(2, 3, 32, 32) * 255
    pixels = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(
            model.backbone.clip.get_image_features(pixel_values=pixels).pooler_output,
            reference.encode_image(pixels),
            atol=1e-5,
            rtol=1e-4,
        )
        dense, guidance = model.backbone.encode_image(images)
        expected_dense, expected_guidance = reference_dense(reference, pixels, config.model.guidance_layers)
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), expected_dense, atol=1e-5, rtol=1e-4)
    for got, expected in zip(guidance, expected_guidance, strict=True):
        torch.testing.assert_close(got.flatten(2).transpose(1, 2), expected, atol=1e-5, rtol=1e-4)

    weights = model.state_dict()
    for released_name, our_name in _expanded_table(2).items():
        assert torch.equal(weights[our_name], state[released_name].reshape(weights[our_name].shape)), released_name
    assert weights["text_spm.mu"].shape == (32,)
    with torch.no_grad():
        logits = model(images, model.encode_classes(NAMES)).logits
    assert logits.shape == (2, 3, 16, 16) and torch.isfinite(logits).all()


def test_clip_query_and_value_biases_come_from_the_packed_bias(released):
    _, reference, state = released
    converted = convert_state_dict(state)
    packed = reference.visual.transformer.resblocks[1].attn.in_proj_bias.detach()
    layer = "backbone.clip.vision_model.encoder.layers.1.self_attn."
    for part, chunk in zip("qkv", packed.chunk(3), strict=True):
        assert torch.equal(converted[layer + f"{part}_proj.bias"], chunk)
    assert torch.equal(converted["backbone.clip.visual_projection.weight"], reference.visual.proj.detach().T)


def test_a_baseline_checkpoint_converts_without_spms(released, tmp_path):
    _, _, state = released
    baseline = {k: v for k, v in state.items() if "_vpn." not in k}
    source = tmp_path / "catseg.pth"
    torch.save(baseline, source)  # a bare state dict, as some releases ship
    summary = convert_released(source, tmp_path / "catseg.pt", NAMES, "v", head_config(), tokenizer_source=None)
    assert not summary["text_spm"] and not summary["image_spm"]
    model, config, _ = load_model(tmp_path / "catseg.pt")
    assert model.text_spm is None and model.image_spm is None and not config.model.spm.text


def test_foreign_or_partial_checkpoints_fail_with_the_names(released, tmp_path):
    _, _, state = released
    with pytest.raises(ReleasedCheckpointError, match="no such file"):
        read_released(tmp_path / "absent.pth")
    torch.save({"model": {"backbone.res2.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ReleasedCheckpointError, match="no released Pi-Seg/CAT-Seg weights"):
        read_released(tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ReleasedCheckpointError, match="not a readable PyTorch checkpoint"):
        read_released(tmp_path / "text.pth")
    torch.save({"model": state, "extra": Image.new("L", (1, 1))}, tmp_path / "code.pth")  # needs unpickling code
    with pytest.raises(ReleasedCheckpointError, match="not a readable.*pass --trust-pickle"):
        read_released(tmp_path / "code.pth")
    assert read_released(tmp_path / "code.pth", trust_pickle=True).keys() == state.keys()

    unknown = dict(state, **{"sem_seg_head.predictor.transformer.extra_block.weight": torch.zeros(2)})
    with pytest.raises(ReleasedCheckpointError, match="extra_block"):
        convert_state_dict(unknown)
    partial = {k: v for k, v in state.items() if "decoder2.up" not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ReleasedCheckpointError, match="missing: aggregator.decoder2.up"):
        convert_released(tmp_path / "partial.pth", tmp_path / "p.pt", NAMES, "v", head_config(), tokenizer_source=None)
    assert not (tmp_path / "p.pt").exists()


def test_cli_converts_then_predicts(released, tmp_path):
    path, _, _ = released
    out = tmp_path / "converted.pt"
    result = runner.invoke(
        app, ["convert-released", str(path), "--out", str(out), "--backbone", "tiny", "--taxonomy", "ovrsis95k"]
    )
    assert result.exit_code == 0, result.output
    assert "Text-SPM + Image-SPM" in result.output and "35 classes of ovrsis95k" in result.output
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)
    result = runner.invoke(
        app, ["predict", str(image), "--checkpoint", str(out), "--classes", "road; tree", "--out", str(tmp_path / "p")]
    )
    assert result.exit_code == 0, result.output
    assert np.array(Image.open(tmp_path / "p" / "scene.png")).shape == (40, 50)
    result = runner.invoke(app, ["convert-released", str(path), "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 2 and "neither ViT-B/16 nor ViT-L/14@336" in result.output


def test_weights_of_one_backbone_refuse_another_backbones_configuration(tmp_path):
    """ViT-L/14@336 shapes (expanded views: a few bytes on disk) converted with the ViT-B preset."""
    shapes = {
        "visual.conv1.weight": (1024, 3, 14, 14),
        "visual.positional_embedding": (577, 1024),
        "visual.proj": (1024, 768),
        "visual.transformer.resblocks.0.mlp.c_fc.weight": (4096, 1024),
        "visual.transformer.resblocks.23.ln_1.weight": (1024,),
        "transformer.resblocks.0.mlp.c_fc.weight": (3072, 768),
        "transformer.resblocks.11.ln_1.weight": (768,),
        "ln_final.weight": (768,),
        "token_embedding.weight": (49408, 768),
        "positional_embedding": (77, 768),
    }
    state = {CLIP_PREFIX + name: torch.zeros(1).expand(*shape) for name, shape in shapes.items()}
    assert infer_architecture(state) == preset("vit-l").model.architecture
    torch.save({"model": state}, tmp_path / "vitl.pth")
    with pytest.raises(ReleasedCheckpointError, match="the weights are a vit-l CLIP but the configuration is vit-b"):
        convert_released(tmp_path / "vitl.pth", tmp_path / "x.pt", NAMES, "v", preset("vit-b"), tokenizer_source=None)


def test_reproduce_converts_evaluates_and_compares_every_run_resumably(released, tmp_path):
    """`piseg reproduce` end to end: a V2 and a V1 (DLRSD) run from one tiny released checkpoint, two tiny test
    sets; the paper's numbers are printed beside ours (not asserted against), the V1 mean leaves DLRSD out,
    and a rerun converts and evaluates nothing again."""
    import json
    import shutil

    path, _, _ = released
    weights = tmp_path / "weights"
    for folder in ("V2/vitb_384_OVRSIS95K", "V1/vitb_384_DLRSD"):
        (weights / folder).mkdir(parents=True)
        shutil.copy(path, weights / folder / "model_final.pth")
    rng, root = np.random.default_rng(0), tmp_path / "data" / "OVRSISBench_test"
    for name, extension, classes in (("iSAID", "png", [0, 3, 14]), ("DLRSD", "jpg", [0, 5, 16])):
        for index in range(2):
            (root / name / "imgs").mkdir(parents=True, exist_ok=True)
            (root / name / "D2masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                root / name / "imgs" / f"P{index}.{extension}"
            )
            Image.fromarray(rng.choice(classes, size=(40, 48)).astype(np.uint8)).save(
                root / name / "D2masks" / f"P{index}.png"
            )
    out = tmp_path / "reproduce"
    arguments = [
        "reproduce",
        "--weights",
        str(weights),
        "--data-root",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--backbone",
        "tiny",
        "--tokenizer",
        "none",
        "--paper-backbone",
        "vit-b",
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 1, result.output  # most test sets are absent here
    summary = json.loads((out / "report.json").read_text())
    v1, v2 = summary["runs"]["V1-vitb_384_DLRSD"], summary["runs"]["V2-vitb_384_OVRSIS95K"]
    # a V1 model is evaluated in both inference modes, as the released V1 scripts do; V2 by sliding window
    assert v1["taxonomy"] == "dlrsd" and list(v1["benchmarks"]) == [
        "ovrsisbench-v1-dlrsd",
        "ovrsisbench-v1-dlrsd-whole",
    ]
    assert [b["inference"] for b in v1["benchmarks"].values()] == ["sliding", "whole"]
    assert list(v2["benchmarks"]) == ["ovrsisbench-v2", "downstream"]
    # what ran (a tiny model) and the paper column it is compared with are recorded apart
    assert v1["backbone"] == "tiny" and v1["paper_backbone"] == "ViT-B"
    assert summary["max_images"] is None and summary["precision"]["tf32_matmul"] is False  # a CPU: no TF32
    dlrsd = v1["benchmarks"]["ovrsisbench-v1-dlrsd"]
    assert dlrsd["means_exclude"] == "dlrsd" and dlrsd["m_miou"] == pytest.approx(dlrsd["datasets"]["isaid"])
    text = (out / "report.md").read_text()
    assert "| V1-vitb_384_DLRSD | ovrsisbench-v1-dlrsd (III, w/o dlrsd) | sliding | 2 of 8 |" in text
    assert "| V1-vitb_384_DLRSD | ovrsisbench-v1-dlrsd (III, w/o dlrsd) | whole | 2 of 8 |" in text
    assert "| 37.28 ‡ | 29.58 |" in text and "Table III prints Pi-Seg mean 37.28 / 55.99" in text
    assert "| V2-vitb_384_OVRSIS95K | ovrsisbench-v2 (IV) | sliding | 2 of 10 |" in text and "| 39.48 | 37.88 |" in text
    assert "Subset run" not in text and "†" not in text
    assert "Table XIII" in text and (out / "V2-vitb_384_OVRSIS95K" / "ovrsisbench-v2" / "report.md").is_file()
    before = {
        p: p.stat().st_mtime_ns
        for p in [
            *out.glob("checkpoints/*.pt"),
            *out.glob("*/*/datasets/isaid.json"),
            *out.glob("*/*/datasets/dlrsd.json"),
        ]
    }
    assert len(before) == 2 + 6  # V2: isaid, dlrsd; V1: both, in each mode; the missing test sets are looked for again
    assert runner.invoke(app, arguments).exit_code == 1
    assert before == {p: p.stat().st_mtime_ns for p in before}
    assert (
        runner.invoke(app, [*arguments[:2], str(tmp_path / "data"), *arguments[3:]]).exit_code == 2
    )  # no weights there
    capped = [*arguments[:6], str(tmp_path / "capped"), *arguments[7:], "--max-images", "1", "--inference", "sliding"]
    assert runner.invoke(app, capped).exit_code == 1
    lines = (tmp_path / "capped" / "report.md").read_text().splitlines()
    assert lines[2].startswith("**Subset run (`--max-images 1`): at most 1 images per dataset were evaluated.**")
    assert any(
        line.startswith("| V2-vitb_384_OVRSIS95K | ovrsisbench-v2 (IV) | sliding | 2 of 10 |") and " † |" in line
        for line in lines
    )
    summary = json.loads((tmp_path / "capped" / "report.json").read_text())
    assert summary["max_images"] == 1 and list(summary["runs"]["V1-vitb_384_DLRSD"]["benchmarks"]) == [
        "ovrsisbench-v1-dlrsd"
    ]
