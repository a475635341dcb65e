"""Label Studio as `ovrsis audit server` starts it is no weaker than its own defaults: a real server, probed as
an outsider would. Task imports cannot reach local services (only the ML backend's own address), nobody
signs up without an invitation, no Sentry reporting, and the data folder (the admin token's database) is
private to the user."""

from __future__ import annotations

import http.server
import re
import stat
import threading
from collections.abc import Iterator

import pytest
import requests

from audit.server import BACKEND_HOST, banned_networks, changed_defaults
from tests.servers import PASSWORD, TOKEN

pytestmark = [pytest.mark.slow, pytest.mark.server]
SECRET = "TOP-SECRET-42"


@pytest.fixture
def secret_servers(tmp_path) -> Iterator[dict[str, list[str]]]:
    """Two plain HTTP servers with the same tasks file holding a secret: one on 127.0.0.1 (where local
    services listen), one on the backend's address. Yields host -> the paths each was asked for."""
    (tmp_path / "secret.json").write_text(f'[{{"data": {{"text": "{SECRET}"}}}}]')
    asked: dict[str, list[str]] = {}
    servers = []
    for host in ("127.0.0.1", BACKEND_HOST):
        asked[host] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, log=asked[host], **kwargs):
                self.log = log
                super().__init__(*args, directory=str(tmp_path), **kwargs)

            def do_GET(self):
                self.log.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        asked[f"{host}:url"] = [f"http://{host}:{server.server_address[1]}/secret.json"]
    yield asked
    for server in servers:
        server.shutdown()


def import_url(url: str, project: int, source: str) -> requests.Response:
    return requests.post(
        f"{url}/api/projects/{project}/import", headers={"Authorization": f"Token {TOKEN}"}, data={"url": source}
    )


def new_project(url: str, title: str) -> int:
    response = requests.post(
        f"{url}/api/projects/",
        headers={"Authorization": f"Token {TOKEN}"},
        json={"title": title, "label_config": '<View><Text name="t" value="$text"/></View>'},
    )
    response.raise_for_status()
    return response.json()["id"]


def test_task_imports_reach_only_the_backend_address(label_studio, secret_servers):
    url = label_studio.url
    project = new_project(url, "ssrf")
    refused = import_url(url, project, secret_servers["127.0.0.1:url"][0])
    assert refused.status_code == 400 and SECRET not in refused.text
    assert "reserved network" in refused.text and secret_servers["127.0.0.1"] == []
    allowed = import_url(url, project, secret_servers[f"{BACKEND_HOST}:url"][0])  # the control: the check is real
    assert allowed.status_code == 201 and secret_servers[BACKEND_HOST] == ["/secret.json"]


def signup(url: str, email: str, query: str = "") -> int:
    session = requests.Session()
    session.get(f"{url}/user/signup/{query}")
    form = {"email": email, "password": "outsider-pw-1234", "csrfmiddlewaretoken": session.cookies.get("csrftoken")}
    headers = {"Referer": f"{url}/user/signup/"}
    return session.post(f"{url}/user/signup/{query}", data=form, headers=headers, allow_redirects=False).status_code


def users(url: str) -> set[str]:
    answer = requests.get(f"{url}/api/users", headers={"Authorization": f"Token {TOKEN}"})
    return {user["email"] for user in answer.json()}


def test_nobody_signs_up_without_an_invitation(label_studio):
    url = label_studio.url
    assert signup(url, "outsider@example.com") == 403
    assert "outsider@example.com" not in users(url)
    invite = requests.get(f"{url}/api/invite", headers={"Authorization": f"Token {TOKEN}"}).json()["token"]
    assert signup(url, "invited@example.com", f"?token={invite}") == 302  # the control: the form itself works
    assert "invited@example.com" in users(url)


def test_no_sentry_reporting_in_the_pages(label_studio):
    url = label_studio.url
    session = requests.Session()
    session.get(f"{url}/user/login/")
    session.post(
        f"{url}/user/login/",
        data={
            "email": "admin@example.com",
            "password": PASSWORD,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": f"{url}/user/login/"},
    )
    page = session.get(f"{url}/projects/").text
    assert re.search(r"sentry_dsn:\s*null", page), "the page configures Sentry reporting"


def test_the_data_folder_and_database_are_private(label_studio):
    data = label_studio.data
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    database = data / "label_studio.sqlite3"
    assert database.is_file() and stat.S_IMODE(database.stat().st_mode) == 0o600
    # uploads keep Django's 0644, but nothing below a 0700 folder is reachable by another user
    shared = [p for p in data.rglob("*") if p.is_dir() and stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert shared == [], f"folders open to other users: {shared}"


def test_only_the_backend_address_leaves_the_banned_networks():
    import ipaddress

    banned = [ipaddress.ip_network(text) for text in banned_networks(BACKEND_HOST)]
    assert not any(ipaddress.ip_address(BACKEND_HOST) in net for net in banned)
    for address in ("127.0.0.1", "127.0.0.3", "127.255.255.255", "10.1.2.3", "::1", "169.254.169.254"):
        assert any(ipaddress.ip_address(address) in net for net in banned), address
    assert any("SSRF protection on" in line and BACKEND_HOST in line for line in changed_defaults(BACKEND_HOST))
