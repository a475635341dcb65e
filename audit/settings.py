"""Where the Label Studio server is and how to reach it: from the environment or a `.env` file.

The API token never comes from code and is never printed: messages show it masked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ovrsis.errors import AuditError

DEFAULT_URL = "http://127.0.0.1:8089"


@dataclass(frozen=True)
class ServerSettings:
    url: str
    token: str

    @property
    def masked_token(self) -> str:
        return f"(hidden, {len(self.token)} characters)" if self.token else "(none)"

    @property
    def safe_url(self) -> str:
        """The URL as it may be printed: a `user:password@` part has its password hidden."""
        return redact(self.url)

    def redact(self, text: str) -> str:
        return redact(text, [self.token])


# user:password@host, the password may itself hold '@' or '/': up to the last '@' before the host
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*:)\S+(?=@[^@\s/]+(?:[/\s'\"]|$))", re.IGNORECASE)
_SECRET_FIELDS = (
    r"authorization|x-api-key|api[ _-]?key|[a-z_]*token|access|refresh|password|passwd|secret|sessionid|"
    r"csrftoken|cookie"
)
_AUTH_VALUE = re.compile(
    rf"(?P<head>\b(?:{_SECRET_FIELDS})['\"]?\s*[:=]\s*['\"]?(?:token\s+|bearer\s+|basic\s+)?)[^\s'\",;}}]+",
    re.IGNORECASE,
)
_SCHEME_VALUE = re.compile(r"(?P<head>\b(?:token|bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with secrets hidden: the given values, URL passwords, and the values of
    authorization headers and token-like fields (as an error body from a server may echo them)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in (_URL_PASSWORD, _AUTH_VALUE, _SCHEME_VALUE):
        text = pattern.sub(lambda match: match.group("head") + "***", text)
    return text


def read_dotenv(path: Path = Path(".env")) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments and blank lines skipped, quotes stripped)."""
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


def server_settings(url: str | None = None, env_file: Path = Path(".env")) -> ServerSettings:
    dotenv = read_dotenv(env_file)

    def get(name: str) -> str | None:
        return os.environ.get(name) or dotenv.get(name)

    token = get("LABEL_STUDIO_API_KEY") or get("LABEL_STUDIO_USER_TOKEN")
    if not token:
        raise AuditError(
            "no Label Studio token: set LABEL_STUDIO_USER_TOKEN (or LABEL_STUDIO_API_KEY) in the environment or .env"
        )
    return ServerSettings(url=(url or get("LABEL_STUDIO_URL") or DEFAULT_URL).rstrip("/"), token=token)
