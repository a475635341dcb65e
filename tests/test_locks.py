"""Only the locks decide versions: both venvs hold exactly their lock, and the locks cover the project.

A package installed by hand, a drifted install or a lock that no longer matches pyproject.toml fails here,
so `make lock` + `make test` is the one upgrade path (see README, "Set-up").
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "requirements"))
from lockcheck import differences, installed, locked, normalize  # noqa: E402

MAIN_LOCK = REPO / "requirements" / "main.lock"
LS_LOCK = REPO / "requirements" / "label-studio.lock"
VENVS = {
    "main": (REPO / ".venv" / "bin" / "python", MAIN_LOCK),
    "label-studio": (REPO / ".venv-ls" / "bin" / "python", LS_LOCK),
}


@pytest.mark.parametrize("venv", sorted(VENVS))
def test_each_venv_holds_exactly_its_lock(venv):
    python, lock = VENVS[venv]
    if not python.is_file():
        pytest.fail(f"{python.parent.parent} is missing: `make setup` creates it from {lock.name}")
    problems, _ = differences(locked(lock), installed(python))
    assert not problems, f"{python.parent.parent} differs from {lock.name} (run `make setup`):\n" + "\n".join(problems)


def test_every_locked_distribution_is_pinned_with_hashes():
    for lock in (MAIN_LOCK, LS_LOCK):
        entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n", 2)[2])
        for entry in entries:
            if entry.strip() and not entry.startswith("#"):
                assert "==" in entry.split()[0] and "--hash=sha256:" in entry, (
                    f"{lock.name}: unpinned or unhashed: {entry[:80]}"
                )


def test_the_main_lock_covers_pyproject_and_keeps_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [dep for extra in project["optional-dependencies"].values() for dep in extra]
    pins = locked(MAIN_LOCK)
    for requirement in declared:
        name = normalize(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))
        assert name in pins, f"{requirement} is declared in pyproject.toml but not in {MAIN_LOCK.name}: run `make lock`"
        exact = re.search(r"==([^\s,;]+)", requirement)
        if exact:
            assert pins[name] == exact.group(1), f"{requirement}: the lock has {pins[name]}; run `make lock`"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_label_studio_lock_keeps_a_sentry_it_can_start_with():
    pins = locked(LS_LOCK)
    assert pins["label-studio"] == "1.23.2"
    assert int(pins["sentry-sdk"].split(".")[0]) < 3, "Label Studio 1.23.2 cannot start with sentry-sdk 3"


def test_a_hand_installed_package_is_reported(tmp_path):
    """The check can fail: a venv with one package the lock lacks, and one it pins differently."""
    lock = tmp_path / "x.lock"
    lock.write_text("# lock\nsix==1.16.0 \\\n    --hash=sha256:00\n")
    problems, extras = differences(locked(lock), {"six": "1.17.0", "left-behind": "0.1"})
    assert problems == ["drifted: six 1.17.0 installed, 1.16.0 locked", "not in the lock: left-behind==0.1"]
    assert extras == ["left-behind"]
