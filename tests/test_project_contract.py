"""The README's two commands exist in the Makefile, and CI runs exactly the test command."""

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))


def test_readme_commands_are_make_targets():
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"`make ([a-z][\w-]*)`", readme))
    assert {"demo", "test"} <= named
    assert named <= make_targets(), f"README names targets the Makefile lacks: {named - make_targets()}"


def test_ci_runs_make_test_and_what_it_leaves_out():
    ci = (REPO / ".ci" / "run").read_text()
    steps = re.findall(r"^make ([a-z][\w-]*)\s*$", ci, flags=re.M)
    assert "set -e" in ci and {"lint", "test", "test-clusters", "test-benchmarks"} <= set(steps), steps
    makefile = (REPO / "Makefile").read_text()
    assert '-m "not cluster and not bench_smoke"' in makefile
    assert "-m cluster" in makefile and "-m bench_smoke" in makefile


def test_setup_installs_exactly_the_locks():
    """make setup installs the hash-pinned locks (nothing resolves at install time), and so does the image."""
    makefile = (REPO / "Makefile").read_text()
    for lock in ("requirements/main.lock", "requirements/label-studio.lock"):
        assert lock in makefile
    assert makefile.count("--require-hashes --no-deps -r") == 2 and "lockcheck.py" in makefile
    assert "install -q --no-deps --no-build-isolation -e ." in makefile
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--require-hashes --no-deps -r requirements/main.lock" in dockerfile


def test_distribution_installs_the_packages_and_both_commands():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(project["project"]["scripts"]) == {"ovrsis", "piseg"}
    for package in ("ovrsis", "taxonomy", "pipeline", "flows", "audit", "piseg"):
        assert (REPO / package / "__init__.py").is_file()
    assert "torch==2.14.1" in (REPO / "constraints.txt").read_text()


def test_dependency_direction():
    """ovrsis (the error root) <- taxonomy <- pipeline <- flows; pipeline <- audit; only flows imports prefect,
    only audit the LS SDK. audit imports piseg only in its ML backend, on use (Pi-Seg pre-annotations), never at
    module level."""
    forbidden = {
        "ovrsis": ("taxonomy", "pipeline", "flows", "audit", "piseg", "numpy", "torch", "rasterio", "pydantic"),
        "taxonomy": ("pipeline", "flows", "audit", "piseg", "prefect", "label_studio_sdk", "spacy"),
        "pipeline": ("flows", "audit", "piseg", "prefect", "label_studio_sdk"),
        "audit": ("flows", "prefect"),
        "piseg": ("flows", "audit", "prefect", "label_studio_sdk"),
        "flows": ("label_studio_sdk",),
    }
    for package, banned in forbidden.items():
        for source in (REPO / package).rglob("*.py"):
            text = source.read_text()
            for name in banned:
                assert not re.search(rf"^\s*(from|import) {name}\b", text, flags=re.M), f"{source} imports {name}"
    for source in (REPO / "audit").rglob("*.py"):
        text = source.read_text()
        assert not re.search(r"^(from|import) piseg\b", text, flags=re.M), f"{source} imports piseg at module level"
        if re.search(r"^\s+(from|import) piseg\b", text, flags=re.M):
            assert source.name == "backend.py", f"{source}: only the ML backend may use piseg"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside a function (`from a import b` may name a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_no_import_circle_anywhere_in_the_house():
    """No module reaches itself through imports, lazy ones inside functions included (a package's
    modules may import its __init__). Two circles once hid here: annotate <-> stage_cache (through
    TileState) and the model registry <-> its tiny twins."""
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for package in ("ovrsis", "taxonomy", "pipeline", "flows", "audit", "piseg")
        for path in (REPO / package).rglob("*.py")
    }
    graph = {
        name: {m for m in _imports(path) if m in modules and m != name and not name.startswith(m + ".")}
        for name, path in modules.items()
    }
    assert "pipeline.models.registry" in graph["pipeline.models.tiny"]  # tiny walks the registry, never back
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        for target in sorted(graph[name]):
            assert target not in stack, "import circle: " + " -> ".join([*stack[stack.index(target) :], target])
            if target not in done:
                visit(target, [*stack, target])
        done.add(name)

    for name in sorted(graph):
        visit(name, [name])
