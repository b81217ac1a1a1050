"""Where things are on a Zulip server, and whether this Zulip is one the forwarder supports.

Defaults are Zulip's production layout: the deployment Zulip runs from is
``/home/zulip/deployments/current`` (a link to the release directory), its Python is the
deployment's virtualenv (``.venv`` since Zulip moved to uv, ``zulip-py3-venv`` before), its
version is ``ZULIP_VERSION`` in the deployment's ``version.py`` (read, not run), and
``/etc/zulip`` holds ``settings.py`` and ``zulip-secrets.conf``.  Each path can be given
explicitly (``--zulip-root``, ``--etc-zulip``, ``--supervisor-dir``, ``--target``,
``--python``), which is how the tests point the installer at a stand-in.
"""

from __future__ import annotations

import ast
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..versions import MINIMUM_ZULIP, is_supported, parse_major_minor, supported_range
from .files import InstallerError

DEFAULT_ZULIP_ROOT = Path("/home/zulip")
DEFAULT_ETC_ZULIP = Path("/etc/zulip")
DEFAULT_TARGET = Path("/srv/zulip-listeners-forwarder")
#: Debian/Ubuntu first; RedHat-style systems use the second (forwarder/README.md step 3).
SUPERVISOR_DIRS = (Path("/etc/supervisor/conf.d"), Path("/etc/supervisord.d/conf.d"))
SUPERVISOR_FILE = "zulip-listeners-forwarder.conf"
#: The forwarder's ``requires-python``.
MINIMUM_PYTHON = (3, 10)


@dataclass(frozen=True)
class Layout:
    """The paths one run of the installer works on."""

    zulip_root: Path
    etc_zulip: Path
    supervisor_dir: Path
    target: Path
    python: Path | None = None

    @property
    def deployment(self) -> Path:
        return self.zulip_root / "deployments" / "current"

    @property
    def settings(self) -> Path:
        return self.etc_zulip / "settings.py"

    @property
    def secrets(self) -> Path:
        return self.etc_zulip / "zulip-secrets.conf"

    @property
    def supervisor_file(self) -> Path:
        return self.supervisor_dir / SUPERVISOR_FILE


def pick_supervisor_dir(given: Path | None) -> Path:
    """The directory given, else the first of :data:`SUPERVISOR_DIRS` that exists."""
    if given is not None:
        return given
    for candidate in SUPERVISOR_DIRS:
        if candidate.is_dir():
            return candidate
    return SUPERVISOR_DIRS[0]


def read_zulip_version(deployment: Path) -> str:
    """``ZULIP_VERSION`` from the deployment's ``version.py``, read without running it."""
    path = deployment / "version.py"
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InstallerError(
            f"no Zulip deployment at {deployment} ({path.name} is missing); pass --zulip-root"
            " with Zulip's home directory (the one holding deployments/current)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallerError(f"cannot read {path}: {exc}") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError:
        raise InstallerError(f"{path} does not parse as Python") from None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "ZULIP_VERSION" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise InstallerError(f"{path} sets no ZULIP_VERSION string")


def check_zulip_version(version: str, force: bool) -> str | None:
    """None when supported; with ``force``, the warning to print; otherwise raises."""
    if is_supported(version):
        return None
    why = (
        "is older than the forwarder supports"
        if (parse_major_minor(version) or (0, 0)) < MINIMUM_ZULIP
        else "is not one the forwarder was tested with"
    )
    if parse_major_minor(version) is None:
        why = "cannot be read"
    message = (
        f"Zulip {version} {why}: the forwarder supports Zulip {supported_range()}"
        ' (forwarder/README.md "Supported Zulip versions")'
    )
    if force:
        return f"warning: {message}; installing anyway (--force)"
    raise InstallerError(f"{message}; pass --force to install anyway")


def find_zulip_python(layout: Layout) -> Path:
    """The Python Zulip runs with: ``--python``, else the deployment's virtualenv."""
    if layout.python is not None:
        if not os.access(layout.python, os.X_OK):
            raise InstallerError(f"--python {layout.python} is not an executable file")
        return layout.python
    for venv in (".venv", "zulip-py3-venv"):
        candidate = layout.deployment / venv / "bin" / "python3"
        if os.access(candidate, os.X_OK):
            return candidate
    raise InstallerError(
        f"no Python in Zulip's virtualenv ({layout.deployment}/.venv/bin/python3 or"
        f" {layout.deployment}/zulip-py3-venv/bin/python3); pass --python"
    )


def python_env() -> dict[str, str]:
    """The environment for Zulip's Python and pip: without our PYTHONPATH or pip targets."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PIP_TARGET", "PIP_PREFIX", "PIP_USER", "PIP_ROOT"}
    return {key: value for key, value in os.environ.items() if key not in drop}


def check_python(python: Path) -> str:
    """``"3.11"``: the interpreter's version, refused when older than the package needs."""
    try:
        result = subprocess.run(
            [str(python), "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            env=python_env(),
        )
    except OSError as exc:
        raise InstallerError(f"cannot run {python}: {exc.strerror or exc}") from None
    version = result.stdout.strip()
    parsed = parse_major_minor(version) if result.returncode == 0 else None
    if parsed is None:
        raise InstallerError(f"{python} does not run: {result.stderr.strip()[-300:]}")
    if parsed < MINIMUM_PYTHON:
        minimum = ".".join(map(str, MINIMUM_PYTHON))
        raise InstallerError(f"{python} is Python {version}; the forwarder needs {minimum}+")
    return version
