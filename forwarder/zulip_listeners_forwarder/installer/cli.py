"""The command line: ``install``, ``uninstall`` and ``status``, and what they print.

Every check runs before the first change, so a refused install changes nothing.  Changes are
made in the order that keeps Zulip working at each step: the package directory first, then the
supervisor file and the secret, and ``settings.py`` (which makes Zulip load the app) last;
``uninstall`` takes ``settings.py`` out first.  At the end each file created, changed or
removed is listed, then the commands that make Zulip and supervisor pick it up.  Expected
problems are one line on standard error and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from . import packaging
from .files import Change, InstallerError, read_text, write_atomic
from .layout import (
    DEFAULT_ETC_ZULIP,
    DEFAULT_TARGET,
    DEFAULT_ZULIP_ROOT,
    Layout,
    check_python,
    check_zulip_version,
    find_zulip_python,
    pick_supervisor_dir,
    read_zulip_version,
)
from .secrets_file import SECRET_NAME, current_secret, read_secret_file, with_secret, without_secret
from .settings_block import BlockValues, find_block, read_block, with_block, without_block

PROGRAM = "zulip-listeners-forwarder installer"
PROGRAM_NAME = "zulip-listeners-forwarder"


@dataclass
class Plan:
    """The changes a command makes, each with the function that makes it."""

    steps: list[tuple[Change, Callable[[], None] | None]] = field(default_factory=list)

    def add(self, change: Change, apply: Callable[[], None] | None = None) -> None:
        self.steps.append((change, apply))

    @property
    def changed(self) -> bool:
        return any(change.action not in ("unchanged", "left") for change, _ in self.steps)

    def apply(self) -> None:
        for _, apply in self.steps:
            if apply is not None:
                apply()

    def print(self, dry_run: bool) -> None:
        for change, _ in self.steps:
            print(change.line(dry_run))


def supervisor_program(zulip_root: Path) -> str:
    """The shipped supervisor program file, for a Zulip home other than /home/zulip if asked."""
    text = (
        resources.files(__package__).joinpath("zulip-listeners-forwarder.conf").read_text("utf-8")
    )
    if zulip_root != DEFAULT_ZULIP_ROOT:
        text = text.replace(f"{DEFAULT_ZULIP_ROOT}/", f"{zulip_root}/").replace(
            f'"{DEFAULT_ZULIP_ROOT}"', f'"{zulip_root}"'
        )
    return text


def _layout(args: argparse.Namespace) -> Layout:
    """The paths; without ``--target``, the directory an installed block names, else the default."""
    target = args.target
    settings = args.etc_zulip / "settings.py"
    if target is None:
        try:
            block = read_block(settings.read_text(encoding="utf-8"), settings)
        except (OSError, UnicodeDecodeError, InstallerError):
            block = None
        target = Path(block.target) if block is not None and block.target else DEFAULT_TARGET
    return Layout(
        zulip_root=args.zulip_root,
        etc_zulip=args.etc_zulip,
        supervisor_dir=pick_supervisor_dir(args.supervisor_dir),
        target=target,
        python=getattr(args, "python", None),
    )


def _require_root(args: argparse.Namespace, layout: Layout) -> None:
    if args.no_root_check or os.geteuid() == 0:
        return
    raise InstallerError(
        f"run it as root (sudo): it reads and writes {layout.settings}, {layout.secrets},"
        f" {layout.supervisor_dir} and {layout.target}"
    )


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InstallerError(
            f"--url {url!r} is not an http(s) URL; give the zulip-listeners server's events URL,"
            " e.g. https://listeners.example.com/zulip/events"
        )
    return url


def _check_realms(realms: list[str]) -> list[str]:
    for realm in realms:
        if not realm or realm != realm.strip() or any(ch.isspace() for ch in realm):
            raise InstallerError(f"--realm {realm!r} is not a realm string_id or id")
    return list(dict.fromkeys(realms))


def _diff(path: Path, before: str, after: str) -> None:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), str(path), str(path)
    )
    for line in lines:
        sys.stdout.write("    " + line if line.endswith("\n") else "    " + line + "\n")


def _next_commands(layout: Layout, lines: list[str]) -> None:
    print("Next, as root:")
    for line in lines:
        print(f"  {line}")


def install(args: argparse.Namespace) -> int:
    layout = _layout(args)
    _require_root(args, layout)
    hint = "is this a Zulip server? pass --etc-zulip with the directory holding it"
    settings_text = read_text(layout.settings, hint)
    secrets_text = read_text(layout.secrets, hint)
    version = read_zulip_version(layout.deployment)
    warning = check_zulip_version(version, args.force)
    python = find_zulip_python(layout)
    python_version = check_python(python)

    previous = read_block(settings_text, layout.settings)
    url = args.url or (previous.url if previous else "")
    if not url:
        raise InstallerError(
            "--url is required: the zulip-listeners server's events URL, e.g."
            " https://listeners.example.com/zulip/events"
        )
    if args.all_realms:
        realms: list[str] = []
    else:
        realms = args.realm or (previous.realms if previous else [])
    values = BlockValues(str(layout.target), _check_url(url), _check_realms(realms))
    edit = with_block(settings_text, layout.settings, values)

    existing_secret = current_secret(secrets_text, layout.secrets)
    if args.secret_file is not None:
        new_secrets_text = with_secret(
            secrets_text, layout.secrets, read_secret_file(args.secret_file)
        )
    elif existing_secret is None:
        raise InstallerError(
            f"--secret-file is required: {layout.secrets} has no {SECRET_NAME} yet; give a file"
            " holding the `zulip-listeners gen-secret` value the server has too"
        )
    else:
        new_secrets_text = secrets_text

    program = supervisor_program(layout.zulip_root)
    try:
        old_program = layout.supervisor_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        old_program = None
    if not layout.supervisor_dir.is_dir():
        raise InstallerError(
            f"{layout.supervisor_dir} does not exist: is supervisor installed? (Zulip runs its"
            " services with it); pass --supervisor-dir with its conf.d directory"
        )

    sources = packaging.find_sources(args.wheels)
    manifest = packaging.read_manifest(layout.target)
    if layout.target.exists() and manifest is None:
        raise InstallerError(
            f"{layout.target} exists and was not made by this installer; remove it (a manual"
            " install?) or choose another --target"
        )
    package_current = manifest is not None and packaging.is_current(layout.target, sources)
    pip_python = (
        None if package_current else packaging.pick_pip([python, Path(sys.executable)], sources)
    )

    print(f"Zulip {version} in {layout.deployment}, Python {python_version} ({python})")
    if warning:
        print(warning)
    plan = Plan()
    if package_current:
        plan.add(Change("unchanged", layout.target, f"{sources.describe()} already installed"))
    else:

        def install_package() -> None:
            packaging.install(layout.target, sources, pip_python, python)

        action = "replaced" if manifest is not None else "created"
        plan.add(Change(action, layout.target, sources.describe()), install_package)

    if old_program == program:
        plan.add(Change("unchanged", layout.supervisor_file))
    else:
        plan.add(
            Change("created" if old_program is None else "replaced", layout.supervisor_file),
            lambda: write_atomic(layout.supervisor_file, program),
        )
    if new_secrets_text == secrets_text:
        plan.add(Change("unchanged", layout.secrets, f"{SECRET_NAME} kept"))
    else:
        what = "set" if existing_secret is None else "replaced"
        plan.add(
            Change("changed", layout.secrets, f"{SECRET_NAME} {what} in [secrets]"),
            lambda: write_atomic(layout.secrets, new_secrets_text),
        )
    where = f"lines {edit.first_line}-{edit.last_line}, the zulip-listeners-forwarder block"
    if edit.text == settings_text:
        plan.add(Change("unchanged", layout.settings, where))
    else:
        plan.add(
            Change("changed", layout.settings, where),
            lambda: write_atomic(layout.settings, edit.text),
        )

    if args.dry_run:
        print("Dry run; nothing is changed. The install would do:")
        plan.print(dry_run=True)
        if edit.text != settings_text:
            _diff(layout.settings, settings_text, edit.text)
        return 0
    plan.apply()
    if not plan.changed:
        print("Nothing to change: the forwarder is installed as asked.")
        plan.print(dry_run=False)
        return 0
    print("Installed the zulip-listeners forwarder:")
    plan.print(dry_run=False)
    commands = [
        f"su zulip -c '{layout.deployment}/scripts/restart-server'",
        "supervisorctl reread && supervisorctl update",
    ]
    if previous is not None:
        commands.append(f"supervisorctl restart {PROGRAM_NAME}")
    _next_commands(layout, commands)
    print(
        "Then check from the zulip-listeners server: zulip-listeners verify. Undo all of it"
        " with: python3 -m zulip_listeners_forwarder.installer uninstall"
    )
    return 0


def uninstall(args: argparse.Namespace) -> int:
    layout = _layout(args)
    _require_root(args, layout)
    plan = Plan()
    if layout.settings.exists():
        settings_text = read_text(layout.settings, "")
        new_settings = without_block(settings_text, layout.settings)
        if new_settings != settings_text:
            plan.add(
                Change("changed", layout.settings, "the zulip-listeners-forwarder block removed"),
                lambda: write_atomic(layout.settings, new_settings),
            )
    if layout.supervisor_file.exists():
        plan.add(Change("removed", layout.supervisor_file), layout.supervisor_file.unlink)
    if layout.secrets.exists():
        secrets_text = read_text(layout.secrets, "")
        new_secrets = without_secret(secrets_text, layout.secrets)
        if new_secrets != secrets_text:
            plan.add(
                Change("changed", layout.secrets, f"{SECRET_NAME} removed from [secrets]"),
                lambda: write_atomic(layout.secrets, new_secrets),
            )
    if packaging.read_manifest(layout.target) is not None:

        def remove_package() -> None:
            packaging.remove(layout.target)

        plan.add(Change("removed", layout.target), remove_package)
    elif layout.target.exists():
        plan.add(Change("left", layout.target, "not made by this installer; remove it yourself"))

    if not plan.steps:
        print("Nothing to remove: the forwarder is not installed by this installer.")
        return 0
    if args.dry_run:
        print("Dry run; nothing is changed. The uninstall would do:")
        plan.print(dry_run=True)
        return 0
    plan.apply()
    print("Removed the zulip-listeners forwarder:")
    plan.print(dry_run=False)
    _next_commands(
        layout,
        [
            "supervisorctl reread && supervisorctl update",
            f"su zulip -c '{layout.deployment}/scripts/restart-server'",
        ],
    )
    print(
        "The queue zulip_listeners_forwarder, the spool directory and the logs stay: drop the"
        f" queue with `{layout.deployment}/manage.py purge_queue zulip_listeners_forwarder`"
        " once its events are not needed."
    )
    return 0


def status(args: argparse.Namespace) -> int:
    layout = _layout(args)
    _require_root(args, layout)
    present = 0
    try:
        version = read_zulip_version(layout.deployment)
        support = (
            "supported" if check_zulip_version(version, force=True) is None else "NOT supported"
        )
        print(f"Zulip         {version} ({support}) in {layout.deployment}")
    except InstallerError as exc:
        print(f"Zulip         {exc}")
    manifest = packaging.read_manifest(layout.target)
    if manifest is not None:
        present += 1
        print(
            f"package       {layout.target}: zulip_listeners_forwarder"
            f" {manifest.get('forwarder_version')}, standardwebhooks"
            f" {manifest.get('standardwebhooks_version')}"
        )
    elif layout.target.exists():
        print(f"package       {layout.target} exists but was not made by this installer")
    else:
        print(f"package       not installed ({layout.target} does not exist)")
    if layout.settings.exists():
        text = read_text(layout.settings, "")
        found = find_block(text, layout.settings)
        values = read_block(text, layout.settings)
        if found is not None and values is not None:
            present += 1
            realms = ", ".join(values.realms) if values.realms else "all realms"
            print(
                f"settings      {layout.settings} lines {found[0] + 1}-{found[1] + 1}:"
                f" ZULIP_LISTENERS_URL {values.url}, {realms}"
            )
        else:
            print(f"settings      no zulip-listeners-forwarder block in {layout.settings}")
    else:
        print(f"settings      {layout.settings} does not exist")
    secret = None
    if layout.secrets.exists():
        secret = current_secret(read_text(layout.secrets, ""), layout.secrets)
    if secret:
        present += 1
        print(f"secret        {SECRET_NAME} set in {layout.secrets} ({len(secret.split())} key(s))")
    else:
        print(f"secret        {SECRET_NAME} not set in {layout.secrets}")
    if layout.supervisor_file.exists():
        present += 1
        same = layout.supervisor_file.read_text("utf-8") == supervisor_program(layout.zulip_root)
        print(f"supervisor    {layout.supervisor_file} ({'as shipped' if same else 'edited'})")
    else:
        print(f"supervisor    {layout.supervisor_file} does not exist")
    summary = {4: "installed", 0: "not installed"}.get(present, "partly installed")
    print(f"The forwarder is {summary}.")
    return 0 if present == 4 else 1


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--zulip-root", type=Path, default=DEFAULT_ZULIP_ROOT,
        help="Zulip's home directory, holding deployments/current (default: %(default)s)",
    )  # fmt: skip
    common.add_argument(
        "--etc-zulip", type=Path, default=DEFAULT_ETC_ZULIP,
        help="the directory of settings.py and zulip-secrets.conf (default: %(default)s)",
    )  # fmt: skip
    common.add_argument(
        "--supervisor-dir", type=Path,
        help="supervisor's conf.d (default: /etc/supervisor/conf.d, or /etc/supervisord.d/conf.d)",
    )  # fmt: skip
    common.add_argument(
        "--target", type=Path,
        help=f"the forwarder's own package directory (default: the one installed, else"
        f" {DEFAULT_TARGET})",
    )  # fmt: skip
    common.add_argument(
        "--no-root-check", action="store_true",
        help="run without root, e.g. on a stand-in layout you own (as the tests do)",
    )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="python3 -m zulip_listeners_forwarder.installer",
        description="Install the zulip-listeners forwarder on a Zulip server as"
        " forwarder/README.md describes, report it, or remove it.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser(
        "install", parents=[common], help="install, or update an installation (idempotent)"
    )
    add.add_argument("--url", help="the zulip-listeners server's events URL (…/zulip/events)")
    add.add_argument(
        "--secret-file", type=Path,
        help="a file holding the signing secret(s), whsec_… (`-`: standard input)",
    )  # fmt: skip
    add.add_argument(
        "--realm", action="append", default=[],
        help="forward only this realm (string_id or id); repeat for several",
    )  # fmt: skip
    add.add_argument("--all-realms", action="store_true", help="drop an earlier --realm list")
    add.add_argument(
        "--wheels", type=Path,
        help="a directory with the forwarder wheel and a standardwebhooks wheel (no network)",
    )  # fmt: skip
    add.add_argument("--python", type=Path, help="Zulip's Python (default: the deployment's venv)")
    add.add_argument("--force", action="store_true", help="install on an unsupported Zulip version")
    add.add_argument(
        "--dry-run", action="store_true", help="print what would change; change nothing"
    )
    remove = commands.add_parser(
        "uninstall", parents=[common], help="remove exactly what install added"
    )
    remove.add_argument("--dry-run", action="store_true", help="print what would be removed")
    commands.add_parser(
        "status", parents=[common], help="report what is installed (exit 0: all of it)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "install" and args.realm and args.all_realms:
        print(f"{PROGRAM}: --realm and --all-realms contradict each other", file=sys.stderr)
        return 2
    os.umask(0o022)
    handler = {"install": install, "uninstall": uninstall, "status": status}[args.command]
    try:
        return handler(args)
    except InstallerError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROGRAM}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130
