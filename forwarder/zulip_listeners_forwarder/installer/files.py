"""What the installer changes, and how it writes files: whole, atomically, keeping mode and owner.

An edited file is written next to itself and renamed over the original, so Zulip never reads a
half-written ``settings.py`` or secrets file; the original's mode, owner and group are kept
(``zulip-secrets.conf`` is ``0640 root:zulip``).  A symbolic link is followed and its target
edited, the link left as it is.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


class InstallerError(Exception):
    """An expected problem: printed as one line, and the command exits non-zero."""


@dataclass(frozen=True)
class Change:
    """One file or directory the command created, changed or removed (or would)."""

    action: str  # "created", "changed", "replaced", "removed", "unchanged", "left"
    path: Path
    detail: str = ""

    def line(self, dry_run: bool) -> str:
        action = self.action
        if dry_run and action != "unchanged":
            action = {"created": "create", "changed": "change", "replaced": "replace"}.get(
                action, {"removed": "remove", "left": "leave"}.get(action, action)
            )
            action = f"would {action}"
        detail = f": {self.detail}" if self.detail else ""
        return f"  {action:<16} {self.path}{detail}"


def read_text(path: Path, what: str) -> str:
    """The file as text, or an :class:`InstallerError` naming it and what it should be."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InstallerError(f"{path} does not exist: {what}") from None
    except OSError as exc:
        raise InstallerError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InstallerError(f"{path} is not UTF-8 text (byte {exc.start}); fix it first") from None


def write_atomic(path: Path, text: str, *, new_mode: int = 0o644) -> None:
    """Replaces (or creates) ``path`` with ``text``, keeping an existing file's mode and owner."""
    real = Path(os.path.realpath(path))
    try:
        before = real.stat()
    except FileNotFoundError:
        before = None
    descriptor, temporary = tempfile.mkstemp(prefix=f".{real.name}.", dir=real.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        if before is None:
            os.chmod(temporary, new_mode)
        else:
            os.chmod(temporary, before.st_mode & 0o7777)
            if (before.st_uid, before.st_gid) != (os.geteuid(), os.getegid()):
                os.chown(temporary, before.st_uid, before.st_gid)
        os.replace(temporary, real)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def split_lines(text: str) -> list[str]:
    """Lines with their endings kept: ``"".join(split_lines(t)) == t``."""
    return text.splitlines(keepends=True)


def newline_of(text: str) -> str:
    """The file's own line ending, so that inserted lines match it."""
    return "\r\n" if "\r\n" in text else "\n"


def insert_lines(text: str, index: int, block: list[str]) -> str:
    """Inserts whole lines before line ``index``; :func:`remove_lines` undoes it byte for byte.

    ``block`` lines all end with a newline.  At the end of a file whose last line has none, the
    block goes after a newline added to that line and loses its own final newline instead.
    """
    lines = split_lines(text)
    if index == len(lines) and lines and not lines[-1].endswith(("\n", "\r")):
        last = block[-1].rstrip("\r\n")
        return text + newline_of(text) + "".join(block[:-1]) + last
    return "".join(lines[:index] + block + lines[index:])


def remove_lines(text: str, start: int, end: int) -> str:
    """Removes lines ``start..end`` (inclusive) as :func:`insert_lines` put them there."""
    lines = split_lines(text)
    kept_before = lines[:start]
    if end == len(lines) - 1 and not lines[end].endswith(("\n", "\r")) and kept_before:
        kept_before[-1] = kept_before[-1].rstrip("\r\n")
    return "".join(kept_before + lines[end + 1 :])
