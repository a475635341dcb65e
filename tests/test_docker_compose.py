"""docker-compose.yml validated with Debian's docker-compose (no Docker engine runs here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from audit.server import HARDENING

REPO = Path(__file__).resolve().parents[1]
SECRETS = {
    "POSTGRES_USER": "ovrsis",
    "POSTGRES_PASSWORD": "pw-test",
    "LABEL_STUDIO_USERNAME": "admin@example.com",
    "LABEL_STUDIO_PASSWORD": "ls-test",
    "LABEL_STUDIO_USER_TOKEN": "0123456789abcdef0123456789abcdef01234567",
}


@pytest.fixture
def project(tmp_path):
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (make test installs Debian's docker-compose where apt-get works)")
    shutil.copy(REPO / "docker-compose.yml", tmp_path)
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    return tmp_path


def config(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin"},
    )


def test_compose_file_is_valid_with_secrets(project):
    result = config(project, SECRETS)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"postgres", "prefect-server", "build", "label-studio"}
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://ovrsis:pw-test@postgres:5432/prefect"
    )
    assert services["label-studio"]["environment"]["DJANGO_DB"] == "default"
    assert services["label-studio"]["environment"]["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == "/out"
    hardened = services["label-studio"]["environment"]
    for name, (value, _) in HARDENING.items():
        assert hardened[name] == value, f"docker-compose.yml: {name} differs from `ovrsis audit server`"
    assert hardened["SSRF_PROTECTION_ENABLED"] == hardened["ML_BLOCK_LOCAL_IP"] == "true"
    assert services["build"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"])
def test_compose_refuses_to_run_without_a_secret(project, secret):
    result = config(project, {k: v for k, v in SECRETS.items() if k != secret})
    assert result.returncode != 0 and f"set {secret} in .env" in result.stderr


def test_env_example_lists_every_secret_empty():
    lines = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    for secret in ("POSTGRES_PASSWORD", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        assert lines[secret] == ""
