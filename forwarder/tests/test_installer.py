"""The forwarder's installer against a stand-in of a Zulip server (tests/installer_standin.py).

The installer runs as an administrator runs it: from the built wheel file
(``PYTHONPATH=…whl python -m zulip_listeners_forwarder.installer``), with ``python -S`` so that
neither Django nor this checkout's editable install can be imported: it must work with the
standard library alone.  It installs from a wheel directory holding the forwarder wheel (built
here with ``pip wheel``) and a standardwebhooks wheel (``pip download``), with pip's index
pointed at a closed port: no network.  Building the two wheels needs PyPI (setuptools for the
build, the standardwebhooks wheel); without it these tests are skipped, saying so.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_secret
from installer_standin import SETTINGS_TEMPLATE, ZulipStandIn, build

from zulip_listeners_forwarder.installer import cli
from zulip_listeners_forwarder.installer.files import InstallerError
from zulip_listeners_forwarder.installer.packaging import MANIFEST
from zulip_listeners_forwarder.installer.secrets_file import (
    SECRET_NAME,
    current_secret,
    with_secret,
    without_secret,
)
from zulip_listeners_forwarder.installer.settings_block import (
    BEGIN,
    END,
    BlockValues,
    read_block,
    with_block,
    without_block,
)

TESTS_DIR = Path(__file__).resolve().parent
FORWARDER_DIR = TESTS_DIR.parent
URL = "https://listeners.example.com/zulip/events"
#: pip's index for the installer's runs: nothing listens there, so any download fails.
NO_INDEX = "http://127.0.0.1:9/simple"


def _pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


def _pip(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    if result.returncode != 0:
        if not _pypi_reachable():
            pytest.skip(f"PyPI is unreachable, so pip cannot {args[0]} the test wheels")
        raise AssertionError(f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the forwarder wheel, built from this checkout, and standardwebhooks'."""
    work = tmp_path_factory.mktemp("installer-wheels")
    source = work / "forwarder"
    # build from a copy, so the checkout gets no build/ or egg-info
    shutil.copytree(
        FORWARDER_DIR,
        source,
        ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"),
    )
    out = work / "wheels"
    _pip("wheel", "--no-deps", "-q", str(source), "-w", str(out), cwd=work)
    _pip("download", "--no-deps", "--only-binary=:all:", "-q", "standardwebhooks>=1.1",
         "-d", str(out), cwd=work)  # fmt: skip
    assert len(list(out.glob("zulip_listeners_forwarder-*.whl"))) == 1
    assert len(list(out.glob("standardwebhooks-*.whl"))) == 1
    return out


@pytest.fixture
def wheel(wheels: Path) -> Path:
    return next(wheels.glob("zulip_listeners_forwarder-*.whl"))


@pytest.fixture
def zulip(tmp_path: Path) -> ZulipStandIn:
    return build(tmp_path / "server")


@pytest.fixture
def secret_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "forwarder-secret"
    path.write_text(make_secret() + "\n")
    yield path


def run(
    wheel: Path,
    zulip: ZulipStandIn,
    *args: str,
    index: str = NO_INDEX,
    target: bool = True,
    python: str = sys.executable,
) -> subprocess.CompletedProcess[str]:
    """The installer, run from the wheel file with the standard library only."""
    command, *rest = args
    env = dict(os.environ, PYTHONPATH=str(wheel), PIP_INDEX_URL=index, PIP_RETRIES="0")
    env.pop("PYTHONHOME", None)
    return subprocess.run(
        [python, "-S", "-m", "zulip_listeners_forwarder.installer", command,
         *zulip.options(target=target), "--no-root-check", *rest],
        capture_output=True,
        text=True,
        env=env,
        cwd=zulip.root,
        timeout=300,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """An expected problem: exit 1, one line on stderr naming it, no traceback."""
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def install(wheel: Path, zulip: ZulipStandIn, secret_file: Path, *more: str) -> str:
    return ok(run(wheel, zulip, "install", "--url", URL, "--secret-file", str(secret_file), *more))


def secrets_of(zulip: ZulipStandIn) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read_string(zulip.secrets.read_text())
    return parser


def test_install_does_the_readme_steps(wheel: Path, zulip: ZulipStandIn, secret_file: Path) -> None:
    out = install(wheel, zulip, secret_file, "--realm", "acme")

    settings = zulip.settings.read_text()
    assert settings.startswith(BEGIN), "the block goes at the top, as README says"
    block = settings[: settings.index(END) + len(END) + 1]
    assert f'sys.path.append("{zulip.target}")' in block
    assert 'EXTRA_INSTALLED_APPS = ["analytics", "zulip_listeners_forwarder"]' in block
    assert f'ZULIP_LISTENERS_URL = "{URL}"' in block
    assert 'ZULIP_LISTENERS_REALMS = ["acme"]' in block
    assert settings[len(block) :] == SETTINGS_TEMPLATE, "the rest of settings.py is untouched"

    assert secrets_of(zulip)["secrets"][SECRET_NAME] == secret_file.read_text().strip()
    assert oct(zulip.secrets.stat().st_mode & 0o777) == "0o640", "the secrets file keeps its mode"
    assert secret_file.read_text().strip() not in out, "the secret is never printed"

    program = (zulip.supervisor_dir / "zulip-listeners-forwarder.conf").read_text()
    shipped = FORWARDER_DIR / "zulip_listeners_forwarder/installer/zulip-listeners-forwarder.conf"
    assert program == shipped.read_text().replace("/home/zulip", str(zulip.zulip_home))
    assert f"command={zulip.deployment}/manage.py run_zulip_listeners_forwarder" in program

    manifest = json.loads((zulip.target / MANIFEST).read_text())
    assert manifest["forwarder_wheel"] == wheel.name
    assert manifest["standardwebhooks_from"].startswith("standardwebhooks-")
    assert (zulip.target / "zulip_listeners_forwarder" / "installer" / "cli.py").is_file()
    assert (zulip.target / "standardwebhooks" / "__init__.py").is_file()
    assert not (zulip.target / "requests").exists(), "--no-deps: Zulip's requests is used"

    for path in (zulip.target, zulip.settings, zulip.secrets, zulip.supervisor_dir):
        assert str(path) in out, f"{path} not reported:\n{out}"
    assert "Zulip 11.4" in out
    assert f"su zulip -c '{zulip.deployment}/scripts/restart-server'" in out
    assert "supervisorctl reread && supervisorctl update" in out

    status = run(wheel, zulip, "status")
    assert ok(status).rstrip().endswith("The forwarder is installed.")
    assert "lines 1-10" in status.stdout and "acme" in status.stdout


def test_installed_directory_imports_with_the_settings_applied(
    wheel: Path, zulip: ZulipStandIn, secret_file: Path
) -> None:
    """Zulip's way in: settings.py run as a module, its EXTRA_INSTALLED_APPS set up by Django."""
    install(wheel, zulip, secret_file)
    import django

    # Zulip's virtualenv: the tests' site-packages (Django, requests, …) without the forwarder
    # and standardwebhooks, which Zulip does not have
    site_packages = zulip.root / "zulip-venv-site-packages"
    site_packages.mkdir()
    for entry in Path(django.__file__).parent.parent.iterdir():
        if not entry.name.startswith(("standardwebhooks", "zulip_listeners", "__editable__")):
            (site_packages / entry.name).symlink_to(entry)
    script = f"""
import configparser, runpy, sys
sys.path[:0] = [{str(zulip.deployment)!r}, {str(TESTS_DIR / "stub_zulip")!r}]
values = runpy.run_path({str(zulip.settings)!r})
from django.conf import settings
settings.configure(
    INSTALLED_APPS=values["EXTRA_INSTALLED_APPS"],
    ZULIP_LISTENERS_URL=values["ZULIP_LISTENERS_URL"],
    EXTERNAL_HOST=values["EXTERNAL_HOST"],
    USING_RABBITMQ=False,
    DATABASES={{}},
)
import django
django.setup()
from django.apps import apps
import standardwebhooks, zulip_listeners_forwarder
from zulip_listeners_forwarder import hook
from zulip_listeners_forwarder.settings import load_secrets, load_settings
from zproject import config
parser = configparser.ConfigParser()
parser.read({str(zulip.secrets)!r})
config.SECRETS.update(parser["secrets"])
print(zulip_listeners_forwarder.__file__)
print(standardwebhooks.__file__)
print(sorted(app.name for app in apps.get_app_configs()))
print(load_settings().url)
print(load_secrets() == [parser["secrets"]["{SECRET_NAME}"]])
"""
    result = subprocess.run(
        [sys.executable, "-S", "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(site_packages)),
        cwd=zulip.root,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    package, webhooks, installed_apps, url, secret_ok = result.stdout.splitlines()
    assert package.startswith(f"{zulip.target}/zulip_listeners_forwarder/")
    assert webhooks.startswith(f"{zulip.target}/standardwebhooks/")
    assert installed_apps == str(["analytics", "zulip_listeners_forwarder"])
    assert url == URL
    assert secret_ok == "True"


def test_reinstall_updates_in_place(wheel: Path, zulip: ZulipStandIn, secret_file: Path) -> None:
    install(wheel, zulip, secret_file, "--realm", "acme")
    first = zulip.snapshot()

    again = install(wheel, zulip, secret_file)
    assert "Nothing to change" in again
    assert zulip.snapshot() == first, "the same install again changes no byte"

    new_secret = secret_file.parent / "rotated"
    new_secret.write_text(make_secret())
    changed = ok(run(wheel, zulip, "install", "--url", "https://other.example.com/zulip/events",
                     "--secret-file", str(new_secret)))  # fmt: skip
    assert "supervisorctl restart zulip-listeners-forwarder" in changed
    settings = zulip.settings.read_text()
    assert settings.count(BEGIN) == 1 and settings.count(END) == 1
    assert 'ZULIP_LISTENERS_URL = "https://other.example.com/zulip/events"' in settings
    assert 'ZULIP_LISTENERS_REALMS = ["acme"]' in settings, "realms not given are kept"
    assert zulip.secrets.read_text().count(SECRET_NAME) == 1
    assert secrets_of(zulip)["secrets"][SECRET_NAME] == new_secret.read_text().strip()

    # A different wheel replaces the whole directory: nothing of the old one stays.
    manifest_path = zulip.target / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["forwarder_sha256"] = "an older wheel"
    manifest_path.write_text(json.dumps(manifest))
    (zulip.target / "stale_module.py").write_text("left over\n")
    out = ok(run(wheel, zulip, "install", "--all-realms"))
    assert f"replaced         {zulip.target}" in out
    assert not (zulip.target / "stale_module.py").exists()
    assert json.loads(manifest_path.read_text())["forwarder_sha256"] != "an older wheel"
    assert "ZULIP_LISTENERS_REALMS" not in zulip.settings.read_text()
    assert [p.name for p in zulip.target.parent.iterdir()] == [zulip.target.name]


def test_uninstall_restores_every_byte(wheel: Path, zulip: ZulipStandIn, secret_file: Path) -> None:
    before = zulip.snapshot()
    install(wheel, zulip, secret_file, "--realm", "acme")
    assert zulip.snapshot() != before

    preview = ok(run(wheel, zulip, "uninstall", "--dry-run"))
    assert "would remove" in preview
    assert zulip.target.is_dir()

    out = ok(run(wheel, zulip, "uninstall"))
    assert zulip.snapshot() == before
    for path in (zulip.target, zulip.settings, zulip.secrets, zulip.supervisor_dir):
        assert str(path) in out
    assert "supervisorctl reread && supervisorctl update" in out

    assert "Nothing to remove" in ok(run(wheel, zulip, "uninstall"))
    status = run(wheel, zulip, "status")
    assert status.returncode == 1 and "not installed" in status.stdout


def test_uninstall_finds_a_target_given_at_install(
    wheel: Path, zulip: ZulipStandIn, secret_file: Path
) -> None:
    before = zulip.snapshot()
    elsewhere = zulip.root / "srv" / "elsewhere"
    install(wheel, zulip, secret_file, "--target", str(elsewhere))
    assert (elsewhere / MANIFEST).is_file()
    status = run(wheel, zulip, "status", target=False)
    assert f"package       {elsewhere}:" in ok(status)
    ok(run(wheel, zulip, "uninstall", target=False))
    assert zulip.snapshot() == before


def test_standardwebhooks_from_pypi_with_a_zulip_python_without_pip(
    wheels: Path, zulip: ZulipStandIn, secret_file: Path, tmp_path: Path
) -> None:
    """No standardwebhooks wheel: pip fetches it from PyPI.  Zulip's uv-made virtualenv has no
    pip, so the installer's own Python's pip does it."""
    if not _pypi_reachable():
        pytest.skip("PyPI is unreachable: the PyPI path of the installer is not tested")
    alone = tmp_path / "forwarder-wheel-only"
    alone.mkdir()
    wheel = shutil.copy(next(wheels.glob("zulip_listeners_forwarder-*.whl")), alone)
    _zulip_python_without_pip(zulip)
    out = ok(run(Path(wheel), zulip, "install", "--url", URL, "--secret-file",
                 str(secret_file), index="https://pypi.org/simple"))  # fmt: skip
    assert "standardwebhooks>=1.1 from PyPI" in out
    manifest = json.loads((zulip.target / MANIFEST).read_text())
    assert manifest["standardwebhooks_from"] == "PyPI"
    assert (zulip.target / "standardwebhooks" / "__init__.py").is_file()


def _zulip_python_without_pip(zulip: ZulipStandIn) -> None:
    python = zulip.deployment / ".venv" / "bin" / "python3"
    python.write_text(
        '#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pip ]; then echo "No module named pip" >&2;'
        f' exit 1; fi\nexec "{sys.executable}" "$@"\n'
    )


def test_without_any_pip_the_local_wheels_are_unpacked(
    wheel: Path, zulip: ZulipStandIn, secret_file: Path, tmp_path: Path
) -> None:
    """Neither Zulip's Python nor the one running the installer has pip (a bare Debian
    python3 and a uv-made virtualenv): the two local wheels are unpacked as pip would."""
    venv = tmp_path / "python-without-pip"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    _zulip_python_without_pip(zulip)
    result = run(wheel, zulip, "install", "--url", URL, "--secret-file", str(secret_file),
                 python=str(venv / "bin" / "python"))  # fmt: skip
    ok(result)
    assert (zulip.target / "standardwebhooks" / "__init__.py").is_file()
    assert list((zulip.target / "zulip_listeners_forwarder" / "__pycache__").glob("*.pyc"))
    assert (
        oct((zulip.target / "zulip_listeners_forwarder" / "hook.py").stat().st_mode) == "0o100644"
    )
    # fetching standardwebhooks from PyPI is what needs pip
    alone = tmp_path / "wheel-only"
    alone.mkdir()
    shutil.copy(wheel, alone)
    ok(run(wheel, zulip, "uninstall"))
    refused(run(alone / wheel.name, zulip, "install", "--url", URL, "--secret-file",
                str(secret_file), python=str(venv / "bin" / "python")),
            "pip is available to neither", "standardwebhooks wheel")  # fmt: skip


def test_dry_run_changes_nothing(wheel: Path, zulip: ZulipStandIn, secret_file: Path) -> None:
    before = zulip.snapshot()
    out = ok(run(wheel, zulip, "install", "--url", URL, "--secret-file", str(secret_file),
                 "--dry-run"))  # fmt: skip
    assert zulip.snapshot() == before
    assert f"would create     {zulip.target}" in out
    assert f"+{BEGIN}" in out.replace("    +", "+"), "the settings.py diff is shown"
    assert secret_file.read_text().strip() not in out


@pytest.mark.parametrize("version", ["8.4", "13.0-dev+git", "unknown"])
def test_unsupported_zulip_is_refused(
    wheel: Path, zulip: ZulipStandIn, secret_file: Path, version: str
) -> None:
    zulip.set_version(version)
    before = zulip.snapshot()
    line = refused(run(wheel, zulip, "install", "--url", URL, "--secret-file", str(secret_file)),
                   f"Zulip {version}", "9.0 to 12.x", "--force")  # fmt: skip
    assert zulip.snapshot() == before, line
    forced = install(wheel, zulip, secret_file, "--force")
    assert "installing anyway (--force)" in forced


def test_existing_extra_installed_apps_is_extended(
    wheel: Path, zulip: ZulipStandIn, secret_file: Path
) -> None:
    text = SETTINGS_TEMPLATE.replace(
        '# EXTRA_INSTALLED_APPS = ["analytics"]\n',
        'EXTRA_INSTALLED_APPS = [\n    "analytics",\n    "corporate_sso",\n]\n',
    )
    zulip.settings.write_text(text)
    before = zulip.snapshot()
    install(wheel, zulip, secret_file)
    settings = zulip.settings.read_text()
    assert not settings.startswith(BEGIN)
    assert settings.index('    "corporate_sso",\n]\n') < settings.index(BEGIN)
    assert 'EXTRA_INSTALLED_APPS = [*EXTRA_INSTALLED_APPS, "zulip_listeners_forwarder"]' in settings
    import runpy

    values = runpy.run_path(str(zulip.settings))
    assert values["EXTRA_INSTALLED_APPS"] == [
        "analytics",
        "corporate_sso",
        "zulip_listeners_forwarder",
    ]
    assert zulip.target.as_posix() in values["sys"].path
    values["sys"].path.remove(zulip.target.as_posix())

    ok(run(wheel, zulip, "install"))  # again: still one block, still after the setting
    assert zulip.settings.read_text() == settings
    ok(run(wheel, zulip, "uninstall"))
    assert zulip.snapshot() == before


@pytest.mark.parametrize(
    ("addition", "words"),
    [
        ("if True:\n    EXTRA_INSTALLED_APPS = ['analytics']\n", ["compound statement", ":"]),
        ("EXTRA_INSTALLED_APPS = ['analytics', 'zulip_listeners_forwarder']\n", ["manual install"]),
        (f"ZULIP_LISTENERS_URL = '{URL}'\n", ["ZULIP_LISTENERS_URL is already set"]),
        ("EXTRA_INSTALLED_APPS = [\n", ["does not parse"]),
    ],
)
def test_settings_it_cannot_edit_safely_are_refused(
    wheel: Path, zulip: ZulipStandIn, secret_file: Path, addition: str, words: list[str]
) -> None:
    zulip.settings.write_text(SETTINGS_TEMPLATE + addition)
    before = zulip.snapshot()
    result = run(wheel, zulip, "install", "--url", URL, "--secret-file", str(secret_file))
    refused(result, str(zulip.settings), *words)
    assert zulip.snapshot() == before


def test_expected_problems_are_one_line(
    wheel: Path, zulip: ZulipStandIn, secret_file: Path, tmp_path: Path
) -> None:
    refused(run(wheel, zulip, "install", "--secret-file", str(secret_file)), "--url is required")
    refused(run(wheel, zulip, "install", "--url", URL), "--secret-file is required")
    refused(run(wheel, zulip, "install", "--url", "listeners.example.com", "--secret-file",
                str(secret_file)), "not an http(s) URL")  # fmt: skip
    bad = tmp_path / "bad-secret"
    for content, words in [
        ("hunter2", "does not start with whsec_"),
        ("whsec_!!notbase64", "not base64"),
        ("whsec_c2hvcnQ=", "too short"),
        ("", "holds no secret"),
    ]:
        bad.write_text(content)
        refused(run(wheel, zulip, "install", "--url", URL, "--secret-file", str(bad)), words)
    refused(run(wheel, zulip, "install", "--url", URL, "--secret-file", str(tmp_path / "none")),
            "cannot read the secret file")  # fmt: skip
    zulip.target.mkdir()
    refused(install_result := run(wheel, zulip, "install", "--url", URL, "--secret-file",
                                  str(secret_file)), "not made by this installer")  # fmt: skip
    assert install_result.stdout == ""
    zulip.target.rmdir()
    zulip.settings.unlink()
    refused(run(wheel, zulip, "install", "--url", URL, "--secret-file", str(secret_file)),
            f"{zulip.settings} does not exist")  # fmt: skip
    shutil.rmtree(zulip.deployment / ".venv")
    zulip.settings.write_text(SETTINGS_TEMPLATE)
    refused(run(wheel, zulip, "install", "--url", URL, "--secret-file", str(secret_file)),
            "no Python in Zulip's virtualenv", "--python")  # fmt: skip


def test_not_root_is_refused(
    zulip: ZulipStandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["status", *zulip.options()]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("zulip-listeners-forwarder installer: run it as root (sudo)")
    assert "\n" not in err


def test_secret_name_is_the_forwarders() -> None:
    from zulip_listeners_forwarder.settings import SECRET_NAME as FORWARDER_SECRET_NAME

    assert SECRET_NAME == FORWARDER_SECRET_NAME


def test_deploy_supervisor_file_is_the_packaged_one() -> None:
    deploy = FORWARDER_DIR.parent / "deploy" / "supervisor" / "zulip-listeners-forwarder.conf"
    packaged = FORWARDER_DIR / "zulip_listeners_forwarder" / "installer" / deploy.name
    assert deploy.is_symlink() and deploy.resolve() == packaged.resolve()


VALUES = BlockValues(target="/srv/zulip-listeners-forwarder", url=URL, realms=["acme", "7"])


@pytest.mark.parametrize(
    ("original", "block_at"),
    [
        ("", 1),
        ("EXTERNAL_HOST = 'zulip.example.com'", 1),  # no newline at the end
        ('"""Settings."""\nfrom __future__ import annotations\n\nX = 1\n', 3),
        ("#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\nX = 1\n", 3),
        ("X = 1\r\nY = 2\r\n", 1),
        ("X = 1\nEXTRA_INSTALLED_APPS = ['analytics']", 3),  # at the end, no newline
        ("EXTRA_INSTALLED_APPS = ('analytics',)\nEXTRA_INSTALLED_APPS += ('a',)\nZ = 3\n", 3),
    ],
)
def test_settings_block_round_trip(original: str, block_at: int) -> None:
    path = Path("settings.py")
    edit = with_block(original, path, VALUES)
    assert edit.first_line == block_at
    assert edit.text.splitlines()[block_at - 1].startswith(BEGIN)
    if "\r\n" in original:
        assert "\n" not in edit.text.replace("\r\n", "")
    assert read_block(edit.text, path) == VALUES
    assert with_block(edit.text, path, VALUES).text == edit.text
    assert without_block(edit.text, path) == original
    values: dict[str, object] = {"__name__": "settings"}
    exec(compile(edit.text, "settings.py", "exec"), values)
    apps = values["EXTRA_INSTALLED_APPS"]
    assert list(apps)[-1] == "zulip_listeners_forwarder"  # type: ignore[call-overload]
    assert "analytics" in apps  # type: ignore[operator]
    assert values["ZULIP_LISTENERS_REALMS"] == ["acme", "7"]
    sys.path.remove(VALUES.target)


def test_damaged_block_is_refused() -> None:
    text = with_block("X = 1\n", Path("s.py"), VALUES).text
    with pytest.raises(InstallerError, match="damaged"):
        with_block(text.replace(END, "# the end"), Path("s.py"), VALUES)
    with pytest.raises(InstallerError, match="damaged"):
        without_block(text + text, Path("s.py"))


@pytest.mark.parametrize(
    "original",
    [
        "[secrets]\nsecret_key = a\n\n[other]\nx = 1\n",
        "[secrets]\nsecret_key = a",  # no newline at the end
        "[secrets]",
        "# Zulip\n[secrets]\n\n\n",
    ],
)
def test_secret_round_trip(original: str) -> None:
    path = Path("zulip-secrets.conf")
    secret = make_secret()
    text = with_secret(original, path, secret)
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert parser["secrets"][SECRET_NAME] == secret
    assert current_secret(text, path) == secret
    rotated = f"{make_secret()} {secret}"
    assert current_secret(with_secret(text, path, rotated), path) == rotated
    assert without_secret(with_secret(text, path, rotated), path) == original
    with pytest.raises(InstallerError, match="set 2 times"):
        current_secret(text.replace("[secrets]", f"[secrets]\n{SECRET_NAME} = x", 1), path)


def test_secrets_file_without_section_is_refused() -> None:
    with pytest.raises(InstallerError, match=r"no \[secrets\] section"):
        with_secret("[other]\nx = 1\n", Path("zulip-secrets.conf"), make_secret())
