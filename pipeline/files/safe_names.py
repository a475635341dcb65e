"""Names that come from data, confined to the folder they are meant for.

Why: a checkpoint entry, a Label Studio queue name or project title, a proposal digest, a tile key or a
tar member name is written by someone else. Joined to a folder unchecked, `../x` or `/etc/x` lands
outside the folder the user named (and a `.pth` file in site-packages runs code at the next start).
Every such name goes through `confined_name` (one path component, nothing else) or `confined_path`
(that component inside a folder) before it touches the file system; `hex_digest` checks digests.
Standard library only, so every layer can use it.
"""

from __future__ import annotations

import re
from pathlib import Path

from ovrsis.errors import UnsafeName

# One path component of at most 255 bytes (the common file-name limit) with no control characters.
MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX = re.compile(r"[0-9a-f]+")


def confined_name(name: object, what: str = "name") -> str:
    """`name` itself when it is one plain path component; UnsafeName (saying why, with `what` naming
    where it came from) when it is not a string, empty, `.`/`..`, absolute, holds a separator
    (`/` or `\\`), a control character, or is longer than 255 bytes."""
    if not isinstance(name, str):
        raise UnsafeName(f"{what} is not a string: {name!r}")
    if name in ("", ".", ".."):
        raise UnsafeName(f"{what} {name!r} is not a file name")
    shown = _shown(name)
    if "/" in name or "\\" in name:
        raise UnsafeName(f"{what} {shown} holds a path separator")
    if _CONTROL.search(name):
        raise UnsafeName(f"{what} {shown} holds a control character")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise UnsafeName(f"{what} {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    return name


def _shown(name: str) -> str:
    """The name for a message: whole up to 200 characters, else its start and end (a hostile name can be
    megabytes long, and messages end up in the audit's files)."""
    return repr(name) if len(name) <= 200 else f"{name[:150]!r}...{name[-40:]!r}"


def confined_path(folder: Path, name: object, what: str = "name") -> Path:
    """`folder / name` for a name that `confined_name` accepts, checked again after resolving symbolic
    links in `folder` (a name can never point the path elsewhere)."""
    path = folder / confined_name(name, what)
    if path.resolve(strict=False).parent != folder.resolve(strict=False):
        raise UnsafeName(f"{what} {_shown(str(name))} leaves {folder}")
    return path


def hex_digest(value: object, length: int, what: str = "digest") -> str:
    """`value` when it is lowercase hex of exactly `length` characters (a digest the project made);
    UnsafeName otherwise, so a digest can be used in a file name without further checks."""
    if not isinstance(value, str) or len(value) != length or not _HEX.fullmatch(value):
        raise UnsafeName(f"{what} {_shown(str(value))} is not {length} lowercase hex characters")
    return value
