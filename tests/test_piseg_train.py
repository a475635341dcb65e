"""Pi-Seg training from shards the tests write: streaming order, resume, DDP, faults, overfitting real tiles."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.dataset.shards import ShardError, ShardReader
from piseg.checkpoint import CheckpointError, read_checkpoint
from piseg.training.batches import TrainingStream, training_batches
from piseg.training.synthetic import SYNTHETIC_NAMES, tiny_config, write_synthetic_shards
from piseg.training.train import TrainingError, train
from tests.piseg_helpers import write_config, write_road_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(tmp_path_factory.mktemp("shards") / "build")


def keys_of(stream, count, workers=0):
    batches = training_batches(stream, workers)
    return [next(batches).keys for _ in range(count)]


def test_stream_is_deterministic_resumable_and_split_over_processes(shards):
    config = tiny_config(batch_size=2, shuffle_buffer=4).train
    reader = ShardReader(shards)
    whole = keys_of(TrainingStream(reader, config), 14)  # 12 training samples: 6 batches per epoch
    assert whole == keys_of(TrainingStream(reader, config), 14)
    assert keys_of(TrainingStream(reader, config, start_batch=5), 9) == whole[5:]
    assert keys_of(TrainingStream(reader, config), 14, workers=2) == whole
    epoch_one, epoch_two = [k for b in whole[:6] for k in b], [k for b in whole[6:12] for k in b]
    assert sorted(epoch_one) == sorted(epoch_two) and epoch_one != epoch_two and len(set(epoch_one)) == 12
    assert keys_of(TrainingStream(reader, dataclasses.replace(config, seed=1)), 6) != whole[:6]
    ranks = [keys_of(TrainingStream(reader, config, rank=r, world=2), 6) for r in (0, 1)]  # one sample each per batch
    for step in range(6):
        assert not set(ranks[0][step]) & set(ranks[1][step])
    assert sorted(k for r in ranks for b in r[:6] for k in b) == sorted(epoch_one)


def state(path: Path) -> dict:
    return read_checkpoint(path)["model"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(shards, tmp_path):
    config = tiny_config(iters=6, checkpoint_every=3)
    straight = train(shards, config, tmp_path / "straight")

    def stop_at_three(step, total, values):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(shards, config, tmp_path / "interrupted", progress=stop_at_three)
    assert read_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")["training"]["step"] == 3
    resumed = train(shards, config, tmp_path / "interrupted", resume=True)
    a, b = state(straight), state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    steps = [entry for entry in log if "loss" in entry]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert {"gt_in_mean", "non_gt_mean", "gap", "align_ratio"} <= set(steps[0])
    assert steps[0]["gap"] == pytest.approx(steps[0]["gt_in_mean"] - steps[0]["non_gt_mean"])
    assert any("val_miou" in entry for entry in log)  # validation at the end, sliding window


def test_resume_refuses_another_configuration(shards, tmp_path):
    train(shards, tiny_config(iters=3), tmp_path / "run")
    other = tiny_config(iters=6)
    other.model = dataclasses.replace(other.model, hidden_dim=16)
    with pytest.raises(CheckpointError, match="another configuration.*hidden_dim"):
        train(shards, other, tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        train(shards, tiny_config(), tmp_path / "elsewhere", resume=True)


def test_shard_faults(shards, tmp_path):
    with pytest.raises(ShardError, match="taxonomy.*2 classes configured"):
        train(shards, tiny_config(taxonomy="road"), tmp_path / "a")
    broken = write_synthetic_shards(tmp_path / "broken")
    first = sorted((broken / "shards").glob("train-*.tar"))[0]
    data = bytearray(first.read_bytes())
    data[700:720] = b"\xff" * 20  # inside the first member's bytes
    first.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256 differs"):
        train(broken, tiny_config(), tmp_path / "b")
    train(broken, tiny_config(on_corrupt_shard="skip", iters=2), tmp_path / "c")
    first_log = json.loads((tmp_path / "c" / "log.jsonl").read_text().splitlines()[0])
    assert first_log["corrupt_shards"] == 1 and str(first) in first_log["corrupt"]
    # masks with a value outside the training classes: shards of 3 classes read as 2
    wrong = write_synthetic_shards(tmp_path / "wrong")
    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["taxonomy"]["names"] = SYNTHETIC_NAMES[:2]
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"sample scene_\d+: mask values \[2\] outside the 2 training classes"):
        train(wrong, tiny_config(), tmp_path / "d")


def test_nan_loss_stops_with_the_step_and_batch(shards, tmp_path):
    with pytest.raises(TrainingError, match=r"loss is nan at step 2; this process's batch: \['scene_"):
        train(shards, tiny_config(lr=float("inf"), grad_clip=float("inf")), tmp_path / "nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_with_two_cpu_processes(shards, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_config(iters=3, batch_size=4))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "piseg.cli",
        "train",
        "--shards",
        str(shards),
        "--config",
        str(config),
        "--out",
        str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3]
    assert read_checkpoint(tmp_path / "ddp" / "checkpoints" / "final.pt")["class_names"] == SYNTHETIC_NAMES


def test_tiny_model_overfits_real_road_tiles(shared_real, tmp_path):
    shards = write_road_shards(tmp_path / "roads", shared_real / "spacenet")
    config = tiny_config(
        iters=80,
        batch_size=4,
        lr=2e-3,
        crop=64,
        resize_short=64,
        log_every=1,
        val_every=80,
        color_jitter=False,
        checkpoint_every=1000,
    )
    config.model = dataclasses.replace(config.model, clip_resolution=64, window_size=4)
    config.eval = dataclasses.replace(config.eval, resize=96, crop=64, stride=32)
    train(shards, config, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    start, end = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert end < 0.5 * start, (start, end)
    assert next(e for e in log if "val_miou" in e)["val_samples"] == 4


def test_perturbation_statistics_follow_the_released_definition():
    """Figure 10: per image and present class c, delta of class c inside c's region vs on the image's other
    labelled pixels (written here as the released code's loops), pooled over the batch."""
    import torch.nn.functional as F

    from piseg.modeling.model import PiSegOutput
    from piseg.training.train import perturbation_statistics

    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 1, 4, 3, 3, generator=generator)
    perturbed = clean + torch.randn(2, 1, 4, 3, 3, generator=generator)
    masks = torch.randint(0, 3, (2, 12, 12), generator=generator)  # class 3 never present
    masks[0, :2] = 255
    masks[1] = torch.where(masks[1] == 2, 255, masks[1])
    output = PiSegOutput(logits=torch.zeros(2, 4, 12, 12), cost=perturbed, clean_cost=clean)
    delta = F.interpolate((perturbed - clean).mean(dim=1), size=(12, 12), mode="bilinear", align_corners=False)
    inside, outside = [], []
    for b in range(2):
        valid = masks[b] != 255
        for c in masks[b][valid].unique().tolist():
            inside.append(delta[b, c][(masks[b] == c) & valid])
            outside.append(delta[b, c][(masks[b] != c) & valid])
    gt_in, non_gt = torch.cat(inside).mean().item(), torch.cat(outside).mean().item()
    stats = perturbation_statistics(output, masks)
    assert stats["gt_in_mean"] == pytest.approx(gt_in, abs=1e-6) and stats["non_gt_mean"] == pytest.approx(
        non_gt, abs=1e-6
    )
    assert stats["gap"] == pytest.approx(gt_in - non_gt, abs=1e-6)
    assert stats["align_ratio"] == pytest.approx(gt_in / (abs(non_gt) + 1e-6), rel=1e-5)
    assert perturbation_statistics(output, torch.full_like(masks, 255)) == {}
    assert perturbation_statistics(PiSegOutput(logits=output.logits, cost=perturbed), masks) == {}


def test_training_states_at_start_whether_an_epoch_is_a_full_permutation(shards, tmp_path):
    lines: list[str] = []
    train(shards, tiny_config(iters=1), tmp_path / "run", notice=lines.append)
    assert len(lines) == 1 and lines[0].startswith("sample order: the shuffle buffer holds")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    stated = next(entry for entry in log if "sample_order" in entry)
    assert stated["sample_order"] == lines[0] and stated["step"] == 0
    assert stated["full_permutation"] == ("NOT a full" not in lines[0])
