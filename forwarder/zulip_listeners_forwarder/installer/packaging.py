"""The package directory: the forwarder wheel and standardwebhooks, installed with pip.

As forwarder/README.md step 1: ``pip install --no-deps --target DIR`` (``--no-deps`` keeps a
second ``requests`` away from Zulip's), into a directory of its own outside Zulip's deployments.

* **Which wheels.** The forwarder wheel in ``--wheels DIR``, else the wheel the installer runs
  from (``PYTHONPATH=…/zulip_listeners_forwarder-*.whl``).  standardwebhooks: a
  ``standardwebhooks-*.whl`` (1.1 or newer) in that same directory, so an install needs no
  network; else ``standardwebhooks>=1.1`` from PyPI (pip's own index settings apply).
* **Which pip.** Zulip's Python's, else the one of the Python running the installer (a
  virtualenv made by uv, as Zulip's are since it moved to uv, has no pip).  Both wheels are
  pure Python, so the interpreter pip runs with does not matter.  With neither, two local
  wheels are unpacked as pip would (pure-Python wheels only) and byte-compiled by Zulip's
  Python; only fetching standardwebhooks from PyPI needs pip.
* **How.** Into a fresh directory next to the target, then checked (Zulip's Python imports both
  packages from there, with ``-I -S`` so nothing else can answer the import), then swapped in
  by renames: a re-install leaves no stale files, and a failed one leaves the old directory.
  A manifest in the directory marks it as the installer's; a directory without one is never
  replaced or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import InstallerError
from .layout import python_env

FORWARDER_WHEELS = "zulip_listeners_forwarder-*.whl"
STANDARDWEBHOOKS_WHEELS = "standardwebhooks-*.whl"
STANDARDWEBHOOKS_REQUIREMENT = "standardwebhooks>=1.1"
STANDARDWEBHOOKS_MINIMUM = (1, 1)
MANIFEST = ".zulip-listeners-forwarder-installer.json"
PYPI = "PyPI"

_IMPORT_CHECK = (
    "import sys; sys.path.append(sys.argv[1]); "
    "import zulip_listeners_forwarder as f, standardwebhooks as s; "
    "print(f.__file__); print(s.__file__); print(f.__version__)"
)


@dataclass(frozen=True)
class Sources:
    """The wheels to install; ``standardwebhooks`` None means: from PyPI."""

    forwarder: Path
    standardwebhooks: Path | None

    @property
    def forwarder_version(self) -> str:
        return wheel_version(self.forwarder)

    @property
    def standardwebhooks_from(self) -> str:
        return self.standardwebhooks.name if self.standardwebhooks else PYPI

    def describe(self) -> str:
        webhooks = (
            f"standardwebhooks {wheel_version(self.standardwebhooks)} ({self.standardwebhooks})"
            if self.standardwebhooks
            else f"{STANDARDWEBHOOKS_REQUIREMENT} from PyPI"
        )
        return f"zulip_listeners_forwarder {self.forwarder_version} ({self.forwarder}), {webhooks}"


def wheel_version(path: Path) -> str:
    parts = path.name.split("-")
    return parts[1] if len(parts) > 2 else "?"


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def running_wheel() -> Path | None:
    """The wheel file this code is imported from, when run as ``PYTHONPATH=….whl``."""
    from .. import __file__ as package_file

    for parent in Path(package_file).parents:
        if parent.suffix == ".whl" and parent.is_file():
            return parent
    return None


def find_sources(wheels_dir: Path | None) -> Sources:
    """The wheels to install (see the module's documentation)."""
    running = running_wheel()
    forwarder = None
    if wheels_dir is not None:
        if not wheels_dir.is_dir():
            raise InstallerError(f"--wheels {wheels_dir} is not a directory")
        found = sorted(wheels_dir.glob(FORWARDER_WHEELS))
        if len(found) > 1:
            names = ", ".join(path.name for path in found)
            raise InstallerError(f"{wheels_dir} holds several forwarder wheels ({names}); keep one")
        forwarder = found[0] if found else None
    if forwarder is None:
        forwarder = running
    if forwarder is None:
        raise InstallerError(
            "no forwarder wheel to install: run the installer from the wheel"
            " (PYTHONPATH=/path/to/zulip_listeners_forwarder-*.whl python3 -m"
            " zulip_listeners_forwarder.installer …) or pass --wheels DIR holding one"
        )
    search = wheels_dir if wheels_dir is not None else forwarder.parent
    webhooks = [
        path
        for path in search.glob(STANDARDWEBHOOKS_WHEELS)
        if _version_tuple(wheel_version(path)) >= STANDARDWEBHOOKS_MINIMUM
    ]
    webhooks.sort(key=lambda path: _version_tuple(wheel_version(path)))
    return Sources(forwarder, webhooks[-1] if webhooks else None)


def pick_pip(pythons: list[Path], sources: Sources) -> Path | None:
    """The first of ``pythons`` that has pip; None when none has and the wheels are all here."""
    for python in pythons:
        try:
            result = subprocess.run(
                [str(python), "-m", "pip", "--version"],
                capture_output=True,
                timeout=120,
                env=python_env(),
            )
        except OSError:
            continue
        if result.returncode == 0:
            return python
    if sources.standardwebhooks is not None:
        return None  # both wheels are here: unpacked without pip
    names = " nor ".join(str(python) for python in pythons)
    raise InstallerError(
        f"pip is available to neither {names}, and it is needed to fetch"
        f" {STANDARDWEBHOOKS_REQUIREMENT} from PyPI: put a standardwebhooks wheel next to the"
        " forwarder wheel (or in --wheels DIR), or install pip (Debian: apt install python3-pip)"
    )


def _unpack(staging: Path, wheels: list[Path], python: Path) -> None:
    """What ``pip install --no-deps --target`` does with a pure-Python wheel, without pip."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            info = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/WHEEL")]
            text = archive.read(info[0]).decode("utf-8", "replace").lower() if info else ""
            if "root-is-purelib: true" not in text:
                raise InstallerError(f"{wheel.name} is not a pure-Python wheel; install pip")
            for name in names:
                parts = name.split("/")
                if name.startswith("/") or ".." in parts or parts[0].endswith(".data"):
                    raise InstallerError(f"{wheel.name} holds {name}, which needs pip to install")
            archive.extractall(staging)
    result = subprocess.run(
        [str(python), "-I", "-m", "compileall", "-q", str(staging)],
        capture_output=True,
        text=True,
        env=python_env(),
    )
    if result.returncode != 0:
        raise InstallerError(
            f"{python} cannot compile the unpacked package: {result.stdout[-300:]}"
        )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(target: Path) -> dict[str, Any] | None:
    """The installer's manifest in ``target``, or None if it has none (not the installer's)."""
    try:
        data = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(target: Path, sources: Sources) -> bool:
    """Whether ``target`` already holds exactly these wheels."""
    manifest = read_manifest(target)
    return (
        manifest is not None
        and manifest.get("forwarder_sha256") == sha256(sources.forwarder)
        and manifest.get("standardwebhooks_from") == sources.standardwebhooks_from
    )


def _run_pip(pip_python: Path, staging: Path, sources: Sources) -> None:
    command = [
        str(pip_python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
        "--no-deps", "--target", str(staging), str(sources.forwarder),
    ]  # fmt: skip
    if sources.standardwebhooks is not None:
        command += ["--no-index", str(sources.standardwebhooks)]
    else:
        command.append(STANDARDWEBHOOKS_REQUIREMENT)
    result = subprocess.run(command, capture_output=True, text=True, env=python_env())
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise InstallerError(
            f"pip could not install the package (exit {result.returncode}): {last[0]}"
        )


def check_import(python: Path, directory: Path) -> tuple[str, str]:
    """Zulip's Python imports both packages from ``directory``; their versions' files."""
    result = subprocess.run(
        [str(python), "-I", "-S", "-c", _IMPORT_CHECK, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        env=python_env(),
    )
    lines = result.stdout.split("\n")
    real = os.path.realpath(directory) + os.sep
    if result.returncode != 0 or len(lines) < 3:
        error = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise InstallerError(
            f"{python} cannot import the installed package from {directory}: {error}"
        )
    for line in lines[:2]:
        if not os.path.realpath(line).startswith(real):
            raise InstallerError(f"{python} imported {line}, not the copy in {directory}")
    return lines[0], lines[2]


def _installed_standardwebhooks(directory: Path) -> str:
    found = sorted(directory.glob("standardwebhooks-*.dist-info"))
    return found[-1].name[len("standardwebhooks-") : -len(".dist-info")] if found else "?"


def install(target: Path, sources: Sources, pip_python: Path | None, check_python: Path) -> str:
    """Installs the package into ``target`` (replacing the installer's earlier copy)."""
    if target.exists() and read_manifest(target) is None:
        raise InstallerError(
            f"{target} exists and was not made by this installer (no {MANIFEST}); remove it"
            " (a manual install?) or choose another --target"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        os.chmod(staging, 0o755)
        if pip_python is not None:
            _run_pip(pip_python, staging, sources)
        else:
            assert sources.standardwebhooks is not None
            _unpack(staging, [sources.forwarder, sources.standardwebhooks], check_python)
        check_import(check_python, staging)
        webhooks = _installed_standardwebhooks(staging)
        manifest = {
            "written_by": "zulip_listeners_forwarder.installer",
            "forwarder_version": sources.forwarder_version,
            "forwarder_wheel": sources.forwarder.name,
            "forwarder_sha256": sha256(sources.forwarder),
            "standardwebhooks_version": webhooks,
            "standardwebhooks_from": sources.standardwebhooks_from,
        }
        manifest_path = staging / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.chmod(manifest_path, 0o644)
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old)
        else:
            os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return f"zulip_listeners_forwarder {sources.forwarder_version}, standardwebhooks {webhooks}"


def remove(target: Path) -> bool:
    """Removes the installer's directory; False (and nothing removed) if it is not one."""
    if read_manifest(target) is None:
        return False
    shutil.rmtree(target)
    return True
