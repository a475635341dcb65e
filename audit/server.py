"""Start and stop a local Label Studio server from its own virtual environment (`.venv-ls`).

Label Studio lives in a venv of its own because installing it beside Prefect downgrades Prefect's
dependencies (see the README). The recipe: SQLite data folder, admin user and API token from the
environment, legacy tokens enabled on the first start, version check off, loopback only,
local-files serving rooted at the dataset folder. It is started no weaker than Label Studio's own
defaults, and stricter where they are open (`HARDENING`): SSRF protection stays on with every
reserved network banned except the one loopback address the ML backend listens on (`BACKEND_HOST`,
not 127.0.0.1 where Label Studio and other local services listen), sign-up only by invitation,
Sentry error reporting (with PII) off, and its data folder and database private to the user.

The ML backend is started the same way: detached, its PID in the data folder, stopped by PID.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from audit.settings import AuditError

LS_VENV_NAME = ".venv-ls"  # what `make setup` creates beside pyproject.toml
LS_VENV_ENV = "OVRSIS_LABEL_STUDIO_VENV"  # names Label Studio's venv where it is not beside the project
# The ML backend's own loopback address: Linux answers on all of 127.0.0.0/8, so Label Studio can reach
# the backend here while everything bound to 127.0.0.1 (Label Studio itself included) stays banned.
BACKEND_HOST = "127.0.0.2"

# Label Studio's default banned networks (core/utils/io.py, 1.23): the reserved IPv4 and IPv6 ranges.
RESERVED_NETWORKS = (
    "0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.0.0.0/24 192.0.2.0/24 "
    "192.88.99.0/24 192.168.0.0/16 198.18.0.0/15 198.51.100.0/24 203.0.113.0/24 224.0.0.0/4 233.252.0.0/24 "
    "240.0.0.0/4 255.255.255.255/32 ::/128 ::1/128 ::ffff:0:0/96 ::ffff:0:0:0/96 64:ff9b::/96 64:ff9b:1::/48 "
    "100::/64 2001:0000::/32 2001:20::/28 2001:db8::/32 2002::/16 fc00::/7 fe80::/10 ff00::/8"
).split()

# What differs from Label Studio's defaults (besides the admin user, token and served folder), and why.
HARDENING = {
    "DISABLE_SIGNUP_WITHOUT_LINK": ("true", "sign-up only with an invitation link (default: anyone can sign up)"),
    "SENTRY_DSN": ("", "no error reports with personal data sent to Label Studio's Sentry (default: on)"),
    "FRONTEND_SENTRY_DSN": ("", "no browser error reports either (default: on)"),
    "LATEST_VERSION_CHECK": ("false", "no version look-up at start (default: on)"),
    "COLLECT_ANALYTICS": ("false", "no usage analytics (default: on)"),
}


def banned_networks(allowed: str | None) -> list[str]:
    """Label Studio's reserved networks less exactly one address (the ML backend's), so its SSRF and ML
    protections stay on while that one address is reachable. None bans them all."""
    if allowed is None:
        return list(RESERVED_NETWORKS)
    address = ipaddress.ip_address(allowed)
    banned: list[str] = []
    for text in RESERVED_NETWORKS:
        network = ipaddress.ip_network(text)
        if network.version == address.version and address in network:
            banned += [
                str(part)
                for part in network.address_exclude(ipaddress.ip_network(f"{address}/{network.max_prefixlen}"))
            ]
        else:
            banned.append(text)
    return banned


def hardened_environment(backend_host: str | None) -> dict[str, str]:
    """The Label Studio settings `start_server` adds: `HARDENING`, plus SSRF and ML-backend protection on
    with every reserved network banned but `backend_host`."""
    return {name: value for name, (value, _) in HARDENING.items()} | {
        "SSRF_PROTECTION_ENABLED": "true",
        "ML_BLOCK_LOCAL_IP": "true",
        "USE_DEFAULT_BANNED_SUBNETS": "false",  # replaced by the same list less the backend's address
        "USER_ADDITIONAL_BANNED_SUBNETS": ",".join(banned_networks(backend_host)),
    }


def changed_defaults(backend_host: str | None) -> list[str]:
    """One line per setting that differs from Label Studio's defaults, for `ovrsis audit server` to print."""
    lines = [f"{name}={value or '(empty)'}: {why}" for name, (value, why) in HARDENING.items()]
    reachable = f"only {backend_host} (the ML backend's address)" if backend_host else "none"
    lines.append(f"SSRF protection on (as by default); local and private addresses reachable: {reachable}")
    lines.append("data folder 0700, database and files 0600 (default: readable by every local user)")
    return lines


@dataclass
class LocalServer:
    url: str
    pid: int
    log: Path


def project_root() -> Path | None:
    """The folder holding pyproject.toml above this package (a source checkout or editable install),
    where `make setup` puts `.venv-ls`; None for an installed copy in site-packages."""
    folder = Path(__file__).resolve().parents[1]
    return folder if (folder / "pyproject.toml").is_file() else None


def venv_places(venv: Path | None = None) -> list[tuple[Path, str]]:
    """Where Label Studio's venv is looked for, in order, each with why it is looked at. A venv named
    by `--venv` or OVRSIS_LABEL_STUDIO_VENV is the only place: a typo there must fail, not start some
    other Label Studio. Else `.venv-ls` beside the project comes first, so the command works from any
    working directory, then `./.venv-ls` (an installed copy run from a checkout)."""
    if venv is not None:
        return [(venv, "--venv")]
    if named := os.environ.get(LS_VENV_ENV):
        return [(Path(named), LS_VENV_ENV)]
    places: list[tuple[Path, str]] = []
    root = project_root()
    if root is not None:
        places.append((root / LS_VENV_NAME, "beside the project"))
    here = Path.cwd() / LS_VENV_NAME
    if root is None or here.resolve() != (root / LS_VENV_NAME).resolve():
        places.append((here, "in the working directory"))
    return places


def label_studio_binary(venv: Path | None = None) -> Path:
    """The `label-studio` command of the first venv of `venv_places` that has one."""
    places = venv_places(venv)
    for folder, _ in places:
        binary = folder / "bin" / "label-studio"
        if binary.is_file():
            return binary
    looked = "; ".join(f"{folder / 'bin' / 'label-studio'} ({why})" for folder, why in places)
    raise AuditError(
        f"Label Studio not found; looked at {looked}. `make setup` creates its venv {LS_VENV_NAME} beside "
        f"the project; name another with --venv or {LS_VENV_ENV}"
    )


def start_server(
    data_dir: Path,
    document_root: Path,
    token: str,
    username: str,
    password: str,
    port: int = 8089,
    venv: Path | None = None,
    timeout: float = 180.0,
    backend_host: str | None = BACKEND_HOST,
) -> LocalServer:
    """Start Label Studio on 127.0.0.1:`port` and wait until it answers /health. Of all local and private
    addresses, Label Studio may reach only `backend_host` (the ML backend; None: not even that). Its
    venv is `venv`, else found as `venv_places` says; a missing one fails before the data folder is made."""
    if len(token) != 40 or any(c not in "0123456789abcdef" for c in token.lower()):
        raise AuditError("LABEL_STUDIO_USER_TOKEN must be 40 hexadecimal characters")
    binary = label_studio_binary(venv)
    private_folder(data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    for bare in ("USERNAME", "PASSWORD", "PORT", "HOST"):  # Label Studio reads these unprefixed too
        env.pop(bare, None)
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir.resolve()),
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root.resolve()),
        **hardened_environment(backend_host),
    )
    command = [
        str(binary),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # umask 077: the SQLite database (admin token included), uploads and logs are the user's alone
    url = f"http://127.0.0.1:{port}"
    return _start_detached("Label Studio", command, url, data_dir, "label-studio", env, timeout, poll=0.5, umask=0o077)


def private_folder(folder: Path) -> None:
    """Create `folder` 0700 and make the SQLite database an older start left there 0600 (it holds the admin
    token). Nothing else is touched: `--data` may name a folder that holds other things, and with the
    folder itself private nothing below it is reachable by another user (new files come with umask 077)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for database in folder.glob("*.sqlite3*"):
        if database.is_file() and not database.is_symlink():
            database.chmod(0o600)


def start_backend(
    data_dir: Path,
    root: Path,
    records: Path | None,
    models: str,
    secret: str,
    piseg: Path | None = None,
    port: int = 9090,
    warm: bool = False,
    timeout: float = 120.0,
    host: str = BACKEND_HOST,
) -> LocalServer:
    """Start `ovrsis audit backend` detached on `host`:`port` (PID in DATA/ml-backend.pid) and wait for /health.
    The secret goes through the environment: a command line is visible to every local user."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "audit.cli",
        "backend",
        "--root",
        str(root.resolve()),
        "--models",
        models,
        "--port",
        str(port),
        "--host",
        host,
    ]
    command += ["--records", str(records.resolve())] if records else []
    command += ["--piseg", str(piseg.resolve())] if piseg else []
    command += ["--warm"] if warm else []
    env = os.environ | {"OVRSIS_BACKEND_SECRET": secret}
    url, cwd = f"http://{host}:{port}", Path(__file__).resolve().parents[1]
    return _start_detached("the ML backend", command, url, data_dir, "ml-backend", env, timeout, poll=0.3, cwd=cwd)


def _start_detached(
    what: str,
    command: list[str],
    url: str,
    data_dir: Path,
    name: str,
    env: dict[str, str],
    timeout: float,
    *,
    poll: float,
    cwd: Path | None = None,
    umask: int = -1,
) -> LocalServer:
    """Start `command` detached, in a session (and process group) of its own that `stop_server` ends whole:
    output appended to DATA/NAME.log (made 0600 first), PID in DATA/NAME.pid. Wait, polling every `poll`
    seconds, until `url`/health answers; `what` names the server in the error if it exits first or does
    not answer within `timeout` seconds (then it is stopped). `umask` -1 keeps this process's."""
    log = data_dir / f"{name}.log"
    log.touch(mode=0o600)
    with open(log, "a") as output:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, umask=umask
        )
    (data_dir / f"{name}.pid").write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AuditError(f"{what} exited with status {process.returncode}; see {log}")
        if _healthy(url):
            return LocalServer(url=url, pid=process.pid, log=log)
        time.sleep(poll)
    stop_server(process.pid)
    raise AuditError(f"{what} did not answer on {url} within {timeout:.0f} s (is the port taken?); see {log}")


def stop_server(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
