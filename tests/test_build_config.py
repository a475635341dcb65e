import pytest
import yaml

from pipeline.build.config import BuildConfigError, check_before_models, load_build_config


def write(tmp_path, **settings):
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump({"inputs": ["imagery"], "output": "out", "models": "default", **settings}))
    return path


def test_relative_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "imagery").mkdir()
    config = load_build_config(write(tmp_path, captions="caps.jsonl"))
    assert config.inputs == [tmp_path / "imagery"] and config.output == tmp_path / "out"
    assert config.storage_dir == tmp_path / "out" / ".cache" and config.captions == tmp_path / "caps.jsonl"
    assert "output" not in config.fingerprint() and config.fingerprint()["tiling"]["tile_size"] == 1024


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tiling": {"tile_size": "big"}}, "tiling.tile_size"),
        ({"runner": {"kind": "spark"}}, "runner.kind"),
        ({"shards": {"val_fraction": 1.5}}, "shards.val_fraction"),
        ({"shards": {"jpeg_quality": 101}}, "shards.jpeg_quality"),
        ({"shards": {"max_sample": 5}}, "shards.max_sample"),
        ({"selection": {"target_tiles": 0}}, "selection.target_tiles"),
        ({"merge": {"min_aera": 4}}, "merge.min_aera"),
        ({"colour": 1}, "colour"),
        ({"inputs": []}, "inputs"),
    ],
)
def test_invalid_settings_name_the_field(tmp_path, settings, message):
    with pytest.raises(BuildConfigError, match=message):
        load_build_config(write(tmp_path, **settings))


def test_checks_fail_before_any_model_loads(tmp_path):
    with pytest.raises(BuildConfigError, match="does not exist"):
        check_before_models(load_build_config(write(tmp_path)))
    (tmp_path / "imagery").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildConfigError, match="cannot create"):
        check_before_models(load_build_config(write(tmp_path, output="file/out")))
    with pytest.raises(BuildConfigError, match="neither a file nor a bundled taxonomy"):
        check_before_models(load_build_config(write(tmp_path, taxonomy="nope")))
    with pytest.raises(BuildConfigError, match="models configuration not found"):
        check_before_models(load_build_config(write(tmp_path, models="missing.yaml")))
    with pytest.raises(BuildConfigError, match="overlap"):
        check_before_models(load_build_config(write(tmp_path, tiling={"tile_size": 64, "overlap": 64})))
    with pytest.raises(BuildConfigError, match="configuration file not found"):
        load_build_config(tmp_path / "none.yaml")


@pytest.mark.parametrize("preset", ["default", "fast", "best", "tiny"])
def test_model_presets_are_names_not_paths(tmp_path, preset):
    (tmp_path / "build.yaml").write_text(yaml.safe_dump({"inputs": ["in"], "output": "out", "models": preset}))
    assert load_build_config(tmp_path / "build.yaml").models == preset


def test_sections_are_the_pipeline_configs_with_every_field(tmp_path):
    """merge/selection/shards are the pipeline's own dataclasses: a field they gain is a YAML setting."""
    from pipeline.dataset.selection import SelectionConfig
    from pipeline.dataset.shards import ShardConfig
    from pipeline.stages.merge import MergeConfig

    settings = {"shards": {"jpeg_quality": 80, "lossless": False}, "selection": {"pixel_weight": 0.5}}
    config = load_build_config(write(tmp_path, merge={"fill_holes": True}, **settings))
    assert config.shards == ShardConfig(jpeg_quality=80, lossless=False)
    assert config.selection == SelectionConfig(pixel_weight=0.5)
    assert config.annotate_config().merge == MergeConfig(fill_holes=True)
    assert config.fingerprint()["shards"]["jpeg_quality"] == 80
