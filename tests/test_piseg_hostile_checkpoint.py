"""A checkpoint from someone else is data, nothing more (issue 27): its tokenizer files are written only into
a private temporary folder under the known CLIP tokenizer names, and a payload of the wrong shape is refused
with one `error:` line naming the file and the entry, before anything is written anywhere."""

from __future__ import annotations

import dataclasses
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel
from typer.testing import CliRunner

from piseg.checkpoint import CheckpointError, load_model, save_checkpoint
from piseg.cli import app
from piseg.modeling import clip_backbone
from piseg.modeling.clip_backbone import MAX_TOKENIZER_FILE_CHARS, byte_level_tokenizer, clip_config
from piseg.modeling.model import build_model
from piseg.training.synthetic import SYNTHETIC_NAMES, tiny_config

runner = CliRunner()
Change = Callable[[dict[str, Any], Path], None]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint made by the project's own code: a tiny Pi-Seg whose CLIP and tokenizer come from a
    local folder (so the checkpoint carries tokenizer files, as one from real weights does), saved by
    `save_checkpoint`; the folder is then gone."""
    folder = tmp_path_factory.mktemp("good")
    config = tiny_config()
    clip_folder = folder / "clip"
    CLIPModel(clip_config(config.model.architecture)).save_pretrained(clip_folder)
    byte_level_tokenizer().save_pretrained(clip_folder)
    config.model = dataclasses.replace(config.model, clip=str(clip_folder))
    path = folder / "good.pt"
    save_checkpoint(path, build_model(config.model), config, SYNTHETIC_NAMES, "v")
    for file in clip_folder.iterdir():
        file.unlink()
    clip_folder.rmdir()
    return path


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the whole world a load may touch: temporary folders are made in ROOT/tmp (so `../../x`
    from one lands at ROOT/x), and ROOT/outside and ROOT/site-packages exist as targets."""
    for name in ("tmp", "outside", "site-packages"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


def add_tokenizer_file(name: Callable[[Path], object], text: object) -> Change:
    """A change that adds one entry to the checkpoint's (good) tokenizer files."""
    return lambda payload, root: payload["tokenizer_files"].__setitem__(name(root), text)


def set_entry(key: str, value: object) -> Change:
    return lambda payload, root: payload.__setitem__(key, value)


def set_text_setting(key: str, value: object) -> Change:
    return lambda payload, root: payload["clip_settings"]["text_config"].__setitem__(key, value)


def add_architecture_field(payload: dict[str, Any], root: Path) -> None:
    payload["config"]["model"]["architecture"]["exploit"] = 1


PTH = "import os; os.makedirs('/tmp/piseg-pwned')\n"
# (id, change, what the error names)
HOSTILE: list[tuple[str, Change, str]] = [
    ("absolute-name", add_tokenizer_file(lambda root: str(root / "outside" / "x.json"), "{}"), "path separator"),
    ("dotdot-name", add_tokenizer_file(lambda root: "../../escaped.json", "{}"), "'../../escaped.json'"),
    ("pth-in-site-packages", add_tokenizer_file(lambda root: str(root / "site-packages" / "a.pth"), PTH), "a.pth"),
    ("pth-name", add_tokenizer_file(lambda root: "evil.pth", PTH), "'evil.pth' is not a CLIP tokenizer file"),
    ("nested-name", add_tokenizer_file(lambda root: "a/b", "{}"), "'a/b' holds a path separator"),
    ("name-not-str", add_tokenizer_file(lambda root: 7, "{}"), "tokenizer_files entry is not a string"),
    ("value-not-str", add_tokenizer_file(lambda root: "vocab.json", b"{}"), "'vocab.json' is a bytes, not text"),
    (
        "huge-value",
        add_tokenizer_file(lambda root: "merges.txt", "x" * (MAX_TOKENIZER_FILE_CHARS + 1)),
        "'merges.txt' holds 16,777,217 characters",
    ),
    ("tokenizer-files-not-dict", set_entry("tokenizer_files", [["vocab.json", "{}"]]), "tokenizer_files is a list"),
    (
        "clip-setting-not-plain",
        set_text_setting("hidden_size", torch.tensor(32)),
        "clip_settings.text_config.hidden_size is a Tensor, not plain data",
    ),
    ("clip-settings-not-dict", set_entry("clip_settings", ["hidden_size", 32]), "'clip_settings' is a list"),
    ("config-not-dict", set_entry("config", "tiny"), "'config' is a str, not a mapping"),
    ("clip-setting-unbuildable", set_text_setting("hidden_size", "wide"), "its settings do not build a model"),
    ("remote-code", set_text_setting("auto_map", {"AutoModel": "evil.Model"}), "auto_map names code to load"),
    (
        "private-attention-kernel",
        set_text_setting("_attn_implementation", "kernels-community/flash-attn"),
        "_attn_implementation names code to load",
    ),
    (
        "attention-not-a-string",
        set_text_setting("attn_implementation", {"": "kernels-community/x"}),
        "attn_implementation names code to load",
    ),
    (
        "hub-attention-kernel",
        set_text_setting("attn_implementation", "kernels-community/flash-attn"),
        "attn_implementation names code to load",
    ),
    ("config-unknown-field", add_architecture_field, "its configuration is not usable"),
]
IDS = [case[0] for case in HOSTILE]


def hostile_copy(good: Path, root: Path, change: Change) -> Path:
    """ROOT/evil.pt: the good checkpoint's payload with one hostile change."""
    payload = torch.load(good, map_location="cpu", weights_only=True)
    change(payload, root)
    path = root / "evil.pt"
    torch.save(payload, path)
    return path


def everything_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize(("case", "change", "named"), HOSTILE, ids=IDS)
def test_loading_a_hostile_checkpoint_is_refused_and_writes_nothing(good, root, case, change, named):
    evil = hostile_copy(good, root, change)
    before = everything_under(root)
    with pytest.raises(CheckpointError) as refused:
        load_model(evil)
    assert str(refused.value).startswith(f"{evil}: ") and named in str(refused.value)
    assert everything_under(root) == before  # nothing outside, nothing left in the temporary folder


@pytest.mark.parametrize(("case", "change", "named"), HOSTILE, ids=IDS)
def test_piseg_predict_on_a_hostile_checkpoint_exits_2_with_one_error_line(good, root, case, change, named):
    evil = hostile_copy(good, root, change)
    picture = root / "scene.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(picture)
    before = everything_under(root)
    out = root / "predictions"
    result = runner.invoke(
        app, ["predict", str(picture), "--checkpoint", str(evil), "--classes", "a, b", "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {evil}: ") and named in lines[0], result.output
    assert everything_under(root) == before


def test_a_good_checkpoint_writes_its_tokenizer_only_into_a_private_folder(good, root, monkeypatch):
    """The files go to a fresh 0700 folder inside the temporary folder, under the names they were saved with,
    and the loaded tokenizer is the saved one."""
    seen: list[tuple[Path, int, set[str]]] = []
    original = clip_backbone.CLIPTokenizer.from_pretrained

    def spy(folder: str, **options: Any) -> Any:
        seen.append((Path(folder), stat.S_IMODE(Path(folder).stat().st_mode), {p.name for p in Path(folder).iterdir()}))
        return original(folder, **options)

    monkeypatch.setattr(clip_backbone.CLIPTokenizer, "from_pretrained", staticmethod(spy))
    model, _, payload = load_model(good)
    [(folder, mode, names)] = seen
    assert folder.parent == root / "tmp" and mode == 0o700 and names == set(payload["tokenizer_files"])
    assert not folder.exists() and everything_under(root) == {root / "tmp", root / "outside", root / "site-packages"}
    expected = byte_level_tokenizer()(["a photo of a tree"])["input_ids"]
    assert model.backbone.tokenizer(["a photo of a tree"])["input_ids"] == expected
