"""A Label Studio SDK client that survives restarts and says clearly what went wrong.

Every call goes through `call`: connection errors, timeouts and 5xx answers are retried with
exponential backoff; a 401/403 becomes a clear "wrong token" error that never shows the token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from audit.settings import AuditError, ServerSettings

T = TypeVar("T")
RETRIES = 6


class AuditClient:
    def __init__(
        self, settings: ServerSettings, timeout: float = 120.0, retries: int = RETRIES, backoff: float = 0.5
    ) -> None:
        self.settings = settings
        self.retries = retries
        self.backoff = backoff
        self.sdk = LabelStudio(base_url=settings.url, api_key=settings.token, timeout=timeout)

    def call(self, what: str, function: Callable[[], T]) -> T:
        """Run one SDK call with retries; `what` names it in errors ("importing tasks")."""
        for attempt in range(self.retries):
            try:
                return function()
            except ApiError as error:
                if error.status_code in (401, 403):
                    raise AuditError(
                        f"Label Studio at {self.settings.safe_url} refused the API token {self.settings.masked_token} "
                        f"while {what} (HTTP {error.status_code}): check LABEL_STUDIO_USER_TOKEN"
                    ) from None
                if error.status_code is None or error.status_code < 500 or attempt == self.retries - 1:
                    raise AuditError(
                        f"Label Studio answered HTTP {error.status_code} while {what}: "
                        f"{_short(self.settings.redact(str(error.body)))}"
                    ) from None
            except (httpx.TransportError, httpx.TimeoutException) as error:
                if attempt == self.retries - 1:
                    raise AuditError(
                        f"Label Studio at {self.settings.safe_url} unreachable while {what} after {self.retries} tries "
                        f"({type(error).__name__}); is the server running? (`ovrsis audit server`)"
                    ) from None
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def check(self) -> None:
        """Fail early with a clear message if the server is down or the token wrong."""
        self.call("checking the connection", lambda: self.sdk.users.whoami())


def find_project(client: AuditClient, title: str) -> int | None:
    """The id of the project titled exactly `title`, or None."""
    for project in client.call("listing projects", lambda: list(client.sdk.projects.list(title=title))):
        if project.title == title:
            return project.id
    return None


def _short(text: str) -> str:
    return text if len(text) < 300 else text[:300] + "…"
