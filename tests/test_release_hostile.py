"""Release folders made elsewhere are data: a damaged or foreign one is refused with one error line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from flows.cli import app
from pipeline.cli.terminal import EXIT_REFUSED

runner = CliRunner()


def fake_release(folder, tiles: str, taxonomy: dict | None = None):
    folder.mkdir(parents=True)
    taxonomy = taxonomy or {"names": ["a", "b"], "version": "sha256:1"}
    release = {"schema_version": 1, "version": folder.name, "taxonomy": taxonomy}
    (folder / "release.json").write_text(json.dumps(release))
    (folder / "tiles.jsonl").write_text(tiles)
    (folder / "reviews.jsonl").write_text("")
    (folder / "shards").mkdir()
    return folder


def test_damaged_release_files_are_refused_not_crashed(tmp_path):
    good = fake_release(tmp_path / "a", json.dumps({"key": "t", "mask_digest": "x", "pixels": {"a": 4}}) + "\n")
    damaged = fake_release(tmp_path / "b", "{not json\n")
    missing = fake_release(tmp_path / "c", json.dumps({"key": "t"}) + "\n")  # no mask digest
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "release.json").write_text("[1, 2")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "release.json").write_text("[]")  # JSON, but no release description
    other_taxonomy = fake_release(tmp_path / "f", "", {"names": ["a"], "version": "elsewhere"})
    for other in (damaged, missing, tmp_path / "d", tmp_path / "e", other_taxonomy, tmp_path / "nowhere"):
        result = runner.invoke(app, ["release", "diff", str(good), str(other)])
        assert result.exit_code == EXIT_REFUSED, (other, result.stderr, result.exception)
        assert result.stderr.strip().splitlines()[-1].startswith("error: ") and str(other) in result.stderr


def test_a_release_version_is_one_file_name(tmp_path):
    for version in ("../escape", "a/b", ""):
        result = runner.invoke(app, ["release", "create", str(tmp_path), version])
        assert result.exit_code == EXIT_REFUSED and "release version" in result.stderr, (version, result.stderr)
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "releases").exists()
