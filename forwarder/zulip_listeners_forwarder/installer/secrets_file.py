"""The signing secret: read from the file the administrator gives, checked, and kept in
``/etc/zulip/zulip-secrets.conf`` as ``zulip_listeners_forwarder_secret`` in ``[secrets]``.

The line is the installer's only edit to that file; ``uninstall`` removes it and leaves every
other byte as it was.  The value is one ``whsec_…`` secret, or several separated by spaces
while keys are rotated (what the forwarder's ``settings.parse_secrets`` reads).  Secrets are
never printed.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from .files import InstallerError, insert_lines, newline_of, remove_lines, split_lines

#: The key the forwarder reads (``settings.SECRET_NAME``; a test checks they agree).
SECRET_NAME = "zulip_listeners_forwarder_secret"
SECTION = "secrets"
#: The shortest key the zulip-listeners server accepts (``verification::MIN_KEY_BYTES``).
MIN_KEY_BYTES = 24

_HEADER = re.compile(r"^\s*\[([^\]]*)\]\s*$")
_KEY = re.compile(rf"^\s*{SECRET_NAME}\s*[=:]\s*(.*?)\s*$")


def check_secret(text: str, origin: str) -> str:
    """The secret(s) in ``text``, space-separated, after checking each is ``whsec_<base64>``."""
    parts = text.split()
    if not parts:
        raise InstallerError(
            f"{origin} holds no secret; put the `zulip-listeners gen-secret` value in it"
        )
    for number, part in enumerate(parts, start=1):
        name = f"secret #{number} in {origin}" if len(parts) > 1 else f"the secret in {origin}"
        if not part.startswith("whsec_"):
            raise InstallerError(
                f"{name} does not start with whsec_: use a secret as `zulip-listeners"
                " gen-secret` prints it"
            )
        try:
            key = base64.b64decode(part[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            raise InstallerError(f"{name} is not base64 after the whsec_ prefix") from None
        if len(key) < MIN_KEY_BYTES:
            raise InstallerError(
                f"{name} is too short ({len(key)} bytes; at least {MIN_KEY_BYTES}): create one"
                " with `zulip-listeners gen-secret`"
            )
    return " ".join(parts)


def read_secret_file(path: Path) -> str:
    """The checked secret(s) from the administrator's file (``-``: standard input)."""
    if str(path) == "-":
        import sys

        return check_secret(sys.stdin.read(), "standard input")
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InstallerError(f"cannot read the secret file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InstallerError(f"the secret file {path} is not UTF-8 text") from None
    return check_secret(raw, str(path))


def _section(lines: list[str], path: Path) -> tuple[int, int]:
    """0-based index of the ``[secrets]`` header, and of the line after its last line."""
    header = None
    for index, line in enumerate(lines):
        match = _HEADER.match(line)
        if match is None:
            continue
        if header is not None:
            return header, index
        if match.group(1).strip() == SECTION:
            header = index
    if header is None:
        raise InstallerError(f"{path} has no [{SECTION}] section: is it Zulip's secrets file?")
    return header, len(lines)


def _find(lines: list[str], path: Path) -> tuple[int, int, int | None]:
    header, end = _section(lines, path)
    found = [index for index in range(header + 1, end) if _KEY.match(lines[index])]
    if len(found) > 1:
        raise InstallerError(
            f"{path}: {SECRET_NAME} is set {len(found)} times in [{SECTION}] (lines"
            f" {', '.join(str(i + 1) for i in found)}); Zulip refuses that; keep one"
        )
    return header, end, found[0] if found else None


def current_secret(text: str, path: Path) -> str | None:
    """The value set in the file, or None."""
    lines = split_lines(text)
    _, _, index = _find(lines, path)
    if index is None:
        return None
    match = _KEY.match(lines[index])
    return match.group(1) if match else None


def with_secret(text: str, path: Path, secret: str) -> str:
    """The file with the secret set: its line rewritten in place, or added to ``[secrets]``."""
    lines = split_lines(text)
    header, end, index = _find(lines, path)
    line = f"{SECRET_NAME} = {secret}"
    if index is not None:
        ending = lines[index][len(lines[index].rstrip("\r\n")) :]
        lines[index] = line + ending
        return "".join(lines)
    after = header + 1
    for position in range(header + 1, end):
        if lines[position].strip():
            after = position + 1
    return insert_lines(text, after, [line + newline_of(text)])


def without_secret(text: str, path: Path) -> str:
    """The file with the secret's line removed (unchanged if there is none)."""
    lines = split_lines(text)
    _, _, index = _find(lines, path)
    if index is None:
        return text
    return remove_lines(text, index, index)
