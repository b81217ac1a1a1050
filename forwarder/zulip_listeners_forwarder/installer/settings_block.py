"""The forwarder's block in ``/etc/zulip/settings.py``: written, found, read back and removed.

The block is the installer's only edit to the file: whole lines between a ``# BEGIN`` and an
``# END`` marker, so that ``uninstall`` removes exactly those and leaves every other byte as it
was.  It holds README's lines: ``sys.path.append`` of the package directory, the
``EXTRA_INSTALLED_APPS`` that keeps ``"analytics"``, ``ZULIP_LISTENERS_URL`` and, when asked,
``ZULIP_LISTENERS_REALMS``.

Where it goes: at the top (after a docstring or ``__future__`` imports), as README says, unless
the file sets ``EXTRA_INSTALLED_APPS`` itself.  Then the block goes right after the last
top-level statement that does, and extends that value instead of replacing it.  The file is
read with :mod:`ast`, never run.  The installer refuses, saying why, when it cannot edit
safely: the file does not parse, ``EXTRA_INSTALLED_APPS`` is set inside an ``if``/``try``/
function, or the forwarder is already configured by hand outside the block.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from .files import InstallerError, insert_lines, newline_of, remove_lines, split_lines

BEGIN = "# BEGIN zulip-listeners-forwarder"
END = "# END zulip-listeners-forwarder"
APP = "zulip_listeners_forwarder"
APPS_SETTING = "EXTRA_INSTALLED_APPS"
URL_SETTING = "ZULIP_LISTENERS_URL"
REALMS_SETTING = "ZULIP_LISTENERS_REALMS"
#: What README's step 2 sets when the file does not set EXTRA_INSTALLED_APPS itself.
DEFAULT_APPS = ["analytics", APP]


@dataclass(frozen=True)
class BlockValues:
    """The values an installed block holds (re-install keeps those it is not given)."""

    target: str
    url: str
    realms: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Edit:
    """The file's text after the edit, and where the block is (1-based lines), if anywhere."""

    text: str
    first_line: int | None = None
    last_line: int | None = None
    extends_existing_apps: bool = False


def find_block(text: str, path: Path) -> tuple[int, int] | None:
    """0-based line indexes of the BEGIN and END markers, or None; refuses a damaged block."""
    begins: list[int] = []
    ends: list[int] = []
    for index, line in enumerate(split_lines(text)):
        stripped = line.rstrip("\r\n")
        if stripped.startswith(BEGIN):
            begins.append(index)
        elif stripped == END:
            ends.append(index)
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise InstallerError(
            f"{path}: the zulip-listeners-forwarder block is damaged ({len(begins)} BEGIN and"
            f" {len(ends)} END marker line(s)); fix it by hand so there is one BEGIN line"
            " followed by one END line, or none"
        )
    return begins[0], ends[0]


def without_block(text: str, path: Path) -> str:
    """The file's text with the installer's block removed (unchanged if there is none)."""
    found = find_block(text, path)
    if found is None:
        return text
    return remove_lines(text, *found)


def read_block(text: str, path: Path) -> BlockValues | None:
    """The values of the installed block, read back without running it."""
    found = find_block(text, path)
    if found is None:
        return None
    lines = split_lines(text)[found[0] : found[1] + 1]
    values: dict[str, object] = {}
    target = ""
    try:
        tree = ast.parse("".join(lines))
    except SyntaxError:
        raise InstallerError(
            f"{path}: the zulip-listeners-forwarder block does not parse"
        ) from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = node.targets[0]
            if isinstance(name, ast.Name):
                try:
                    values[name.id] = ast.literal_eval(node.value)
                except ValueError:
                    continue
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            args = node.value.args
            if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                target = args[0].value
    url = values.get(URL_SETTING)
    realms = values.get(REALMS_SETTING, [])
    return BlockValues(
        target=target,
        url=url if isinstance(url, str) else "",
        realms=[str(realm) for realm in realms] if isinstance(realms, list) else [],
    )


def _mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(child, ast.Name) and child.id == name for child in ast.walk(node))


def _assigned_names(node: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for child in ast.walk(node):
        if isinstance(child, ast.Assign):
            targets = child.targets
        elif isinstance(child, (ast.AnnAssign, ast.AugAssign)):
            targets = [child.target]
        else:
            continue
        found += [(t.id, child.lineno) for t in targets if isinstance(t, ast.Name)]
    return found


def _has_app(node: ast.AST) -> bool:
    return any(isinstance(c, ast.Constant) and c.value == APP for c in ast.walk(node))


SIMPLE_STATEMENTS = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr)


def _placement(tree: ast.Module, lines: list[str], path: Path, realms: bool) -> tuple[int, bool]:
    """The 0-based line the block goes before, and whether it extends an existing setting."""
    ours = {URL_SETTING} | ({REALMS_SETTING} if realms else set())
    for name, lineno in _assigned_names(tree):
        if name in ours:
            raise InstallerError(
                f"{path}:{lineno}: {name} is already set outside the installer's block (a"
                " manual install?); remove the forwarder's lines you added by hand, then run"
                " install again"
            )
    mentions = [node for node in tree.body if _mentions(node, APPS_SETTING)]
    for node in mentions:
        if not isinstance(node, SIMPLE_STATEMENTS):
            raise InstallerError(
                f"{path}:{node.lineno}: {APPS_SETTING} is set inside a compound statement"
                f" ({type(node).__name__.lower()}), which the installer cannot extend safely;"
                f' add "{APP}" to it by hand as forwarder/README.md says, or make it one plain'
                f" `{APPS_SETTING} = [...]` line"
            )
        if _has_app(node):
            raise InstallerError(
                f'{path}:{node.lineno}: {APPS_SETTING} already lists "{APP}" outside the'
                " installer's block (a manual install?); remove the forwarder's lines you added"
                " by hand, then run install again"
            )
    if mentions:
        last = mentions[-1]
        end = last.end_lineno or last.lineno
        if any(node.lineno == end and node is not last for node in tree.body):
            raise InstallerError(
                f"{path}:{end}: another statement follows {APPS_SETTING} on the same line;"
                " put it on a line of its own"
            )
        return end, True
    index = 0
    for position, node in enumerate(tree.body):
        docstring = (
            position == 0
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if not (docstring or future):
            break
        index = node.end_lineno or node.lineno
    if index == 0:
        # a "#!" line and an encoding cookie must stay first
        while (
            index < min(2, len(lines))
            and lines[index].startswith("#")
            and (lines[index].startswith("#!") or "coding" in lines[index])
        ):
            index += 1
    return index, False


def render(values: BlockValues, *, extends_existing_apps: bool, newline: str) -> list[str]:
    """The block's lines."""
    lines = [
        f"{BEGIN}: written by `python3 -m zulip_listeners_forwarder.installer`",
        "# (install rewrites these lines, uninstall removes them; change them with the installer)",
        "import sys",
        "",
        f"sys.path.append({_string(values.target)})",
    ]
    if extends_existing_apps:
        lines += [
            "# The apps set above, and the forwarder.",
            f'{APPS_SETTING} = [*{APPS_SETTING}, "{APP}"]',
        ]
    else:
        lines += [
            '# Keep "analytics": this setting replaces Zulip\'s default, which is ["analytics"].',
            f"{APPS_SETTING} = {_list(DEFAULT_APPS)}",
        ]
    lines.append(f"{URL_SETTING} = {_string(values.url)}")
    if values.realms:
        lines.append(f"{REALMS_SETTING} = {_list(values.realms)}")
    lines.append(END)
    return [line + newline for line in lines]


def _string(value: str) -> str:
    # Python string literal in double quotes, as Zulip's settings file writes them
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_string(value) for value in values) + "]"


def _parse(text: str, path: Path) -> ast.Module:
    try:
        return ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise InstallerError(
            f"{path}:{exc.lineno}: does not parse as Python ({exc.msg}); fix it first"
        ) from None


def with_block(text: str, path: Path, values: BlockValues) -> Edit:
    """The file with the block (re)written; an existing block is replaced, never duplicated."""
    base = without_block(text, path)
    tree = _parse(base, path)
    lines = split_lines(base)
    index, extends = _placement(tree, lines, path, bool(values.realms))
    block = render(values, extends_existing_apps=extends, newline=newline_of(base))
    new_text = insert_lines(base, index, block)
    _parse(new_text, path)
    return Edit(new_text, index + 1, index + len(block), extends)
