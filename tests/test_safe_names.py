"""pipeline.files.safe_names: every name that comes from data stays one component inside its folder."""

from __future__ import annotations

import pytest

from pipeline.files.safe_names import UnsafeName, confined_name, confined_path, hex_digest

HOSTILE = [
    "",
    ".",
    "..",
    "../x",
    "a/../../x",
    "/etc/passwd",
    "x/y",
    "a\\b",
    "x\x00y",
    "line\nbreak",
    "a" * 256,
    7,
    None,
]


@pytest.mark.parametrize("name", HOSTILE, ids=repr)
def test_hostile_names_are_refused_with_a_reason(name):
    with pytest.raises(UnsafeName, match="queue name"):
        confined_name(name, "queue name")


@pytest.mark.parametrize("name", ["x.png", "odd&name #1+%.tif", "a..b", "ünïcode", "a" * 255])
def test_plain_names_pass_unchanged(name, tmp_path):
    assert confined_name(name) == name
    assert confined_path(tmp_path, name) == tmp_path / name


def test_a_symbolic_link_inside_the_folder_cannot_lead_out(tmp_path):
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "escape").symlink_to(tmp_path)
    with pytest.raises(UnsafeName, match="leaves"):
        confined_path(tmp_path / "inside", "escape")


def test_digests_must_be_hex_of_the_right_length():
    assert hex_digest("ab" * 8, 16) == "ab" * 8
    for bad in ["AB" * 8, "ab" * 7, "../" + "a" * 13, 12, "g" * 16]:
        with pytest.raises(UnsafeName):
            hex_digest(bad, 16)
