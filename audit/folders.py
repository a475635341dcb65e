"""Which Label Studio projects belong to which build output folder.

Why: a project used to be matched by its title alone, and the default title names only the folder's
last component (`ovrsis audit: out`), so a pull into `/b/out` took the reviews of `/a/out`. A push now
writes the line `ovrsis-folder: DIGEST` (a digest of the folder's resolved path) into the project's
description, and a push or pull uses a project only when its description holds the folder's line.
A project may hold several such lines: add one by hand to let a moved or copied folder (or a queue
project made by hand) pull it; a refusal prints the line to add.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from audit.client import AuditClient
from audit.settings import AuditError

FOLDER_LINE = "ovrsis-folder: "
_FOLDER_LINES = re.compile(rf"^{FOLDER_LINE}([0-9a-f]{{16}})\s*$", re.MULTILINE)


def folder_line(out_dir: Path) -> str:
    """The description line that marks a project as the audit of `out_dir`."""
    digest = hashlib.sha256(str(out_dir.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return FOLDER_LINE + digest


# What pushes before the folder line wrote: `ovrsis audit of PATH (TAXONOMY VERSION)`, PATH as typed.
_LEGACY_DESCRIPTION = re.compile(r"\Aovrsis audit of (.+) \([^()\n]*\)\s*\Z")


def belongs_to(project: Any, out_dir: Path) -> bool:
    """Whether the project's description holds the folder's line; for a project an older push made (no
    folder line at all), whether the folder it names resolves, from here, to `out_dir`, so existing audits
    go on without a by-hand step while another folder of the same basename still cannot take them."""
    description = project.description or ""
    marked = set(_FOLDER_LINES.findall(description))
    if marked:
        return folder_line(out_dir).removeprefix(FOLDER_LINE) in marked
    legacy = _LEGACY_DESCRIPTION.match(description)
    return legacy is not None and Path(legacy.group(1)).resolve() == out_dir.resolve()


def not_ours(project: Any, out_dir: Path) -> str:
    """Why a project with a matching title is not used for `out_dir`, and how to claim it."""
    return (
        f"project {project.title!r} (id {project.id}) is not the audit of {out_dir.resolve()}: its description "
        f"lacks the line '{folder_line(out_dir)}' (if it is this folder's audit, moved here or made by hand, "
        "add that line to its description in Label Studio; a project an older push made names its folder as "
        "it was typed then, so running from the folder it was pushed from also finds it)"
    )


def folder_project(client: AuditClient, title: str, out_dir: Path) -> int | None:
    """The id of the project titled exactly `title` that belongs to `out_dir`; None when no project has
    that title. AuditError when only other folders' projects have it, or several of this folder's do."""
    titled = [
        p
        for p in client.call("listing projects", lambda: list(client.sdk.projects.list(title=title)))
        if p.title == title
    ]
    ours = [p for p in titled if belongs_to(p, out_dir)]
    if len(ours) > 1:
        raise AuditError(
            f"{len(ours)} projects titled {title!r} are the audit of {out_dir.resolve()} "
            f"(ids {', '.join(str(p.id) for p in ours)}): delete or rename all but one"
        )
    if not ours and titled:
        raise AuditError(f"{not_ours(titled[0], out_dir)}; or pass --project to give this folder's audit its own title")
    return ours[0].id if ours else None


def project_description(out_dir: Path, what: str) -> str:
    """A new project's description: what it audits, then the folder's line."""
    return f"ovrsis audit of {out_dir.resolve()} ({what})\n{folder_line(out_dir)}"
