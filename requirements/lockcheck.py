"""Compare a virtual environment with its lock file, and optionally remove what the lock does not name.

Why: `pip install -r LOCK` adds and replaces, but never removes, so a package installed by hand (or left by
an older lock) would stay in the venv and hide a missing dependency. `make setup` prunes with this script,
and `tests/test_locks.py` fails on any difference, so only the locks decide what runs.

Usage: python requirements/lockcheck.py VENV_PYTHON LOCK [--prune]
Exit 0 when the venv holds exactly the lock (the project itself, installed editable, and the installer
pip aside); exit 1 with one line per difference otherwise. Standard library only: it runs before the venv
is complete.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

# pip installs the locks; the project itself is installed editable from pyproject.toml, not from a lock.
NOT_LOCKED = {"pip", "ovrsis"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def normalize(name: str) -> str:
    """PEP 503 name normalization: `Foo_Bar.baz` and `foo-bar-baz` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a uv/pip-tools lock file."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    if not pins:
        raise SystemExit(f"{lock}: no `name==version` lines; is it a lock file?")
    return pins


def installed(python: Path) -> dict[str, str]:
    """name -> version of every distribution in the venv of `python`, as its own pip reports them."""
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "list", "--format=json"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"{python}: `pip list` failed:\n{result.stderr}")
    return {normalize(row["name"]): row["version"] for row in json.loads(result.stdout)}


def differences(pins: dict[str, str], present: dict[str, str]) -> tuple[list[str], list[str]]:
    """(problems, extras): each problem a readable line; extras the installed names the lock lacks."""
    problems = []
    for name, version in sorted(pins.items()):
        if name not in present:
            problems.append(f"missing: {name}=={version}")
        elif present[name] != version:
            problems.append(f"drifted: {name} {present[name]} installed, {version} locked")
    extras = sorted(name for name in present if name not in pins and name not in NOT_LOCKED)
    problems += [f"not in the lock: {name}=={present[name]}" for name in extras]
    return problems, extras


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] != "--prune"):
        print(__doc__, file=sys.stderr)
        return 2
    python, lock = Path(argv[0]), Path(argv[1])
    problems, extras = differences(locked(lock), installed(python))
    if extras and len(argv) == 3:
        print(f"removing from {python.parent.parent} what {lock} does not name: {' '.join(extras)}")
        subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", *extras], check=True)
        problems, extras = differences(locked(lock), installed(python))
    for problem in problems:
        print(f"{lock}: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
