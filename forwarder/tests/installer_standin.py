"""A stand-in of the parts of a Zulip server the forwarder's installer reads and edits.

Laid out as Zulip's production install is (forwarder/README.md, the realism checks in
/work/shared/reference/): ``/home/zulip/deployments/<release>`` with ``current`` linking to it,
its ``version.py`` (``ZULIP_VERSION``), ``manage.py``, an ``analytics`` app (the one
``EXTRA_INSTALLED_APPS`` must keep) and a virtualenv Python (``.venv/bin/python3``, here a
wrapper around the tests' Python, which has Django); ``/etc/zulip/settings.py`` written the way
Zulip's ``prod_settings_template.py`` is (comment sections, a few settings set, most commented
out, including the extra-apps one); ``/etc/zulip/zulip-secrets.conf`` (``[secrets]``, mode
0640); ``/etc/zulip/zulip.conf``; and supervisor's ``conf.d`` with Zulip's own ``zulip/``
directory.  Everything lives under one temporary directory.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

SETTINGS_TEMPLATE = """\
from typing import Any

################################################################
## Zulip Server settings.
##
## This file controls settings that affect the whole Zulip server.
## Restart the server after changing it:
##   su zulip -c /home/zulip/deployments/current/scripts/restart-server

################################
## Mandatory settings.

## The public address of the people running this server.
ZULIP_ADMINISTRATOR = "zulip-admin@example.com"

## The host name users type into their browser.
EXTERNAL_HOST = "zulip.example.com"

## Other host names the server answers to.
# ALLOWED_HOSTS = ["zulip-alias.example.com", "192.0.2.1"]

################
## Outgoing email (SMTP) settings.
# EMAIL_HOST = "smtp.example.com"
# EMAIL_HOST_USER = ""
## The password goes into /etc/zulip/zulip-secrets.conf as email_password.

################
## Authentication settings.
AUTHENTICATION_BACKENDS: tuple[str, ...] = (
    "zproject.backends.EmailAuthBackend",  # Email and password
    # "zproject.backends.GitHubAuthBackend",  # GitHub auth
)

################
## Miscellaneous settings.

## Extra Django apps to load.  Zulip's default is ["analytics"]; a value set here
## replaces the default, so keep "analytics" in it.
# EXTRA_INSTALLED_APPS = ["analytics"]

## Controls whether session cookies expire when the browser closes.
SESSION_EXPIRE_AT_BROWSER_CLOSE = False

LOCAL_UPLOADS_DIR = "/home/zulip/uploads"
# RABBITMQ_HOST = "127.0.0.1"
"""

SECRETS = """\
[secrets]
avatar_salt = 3f1d0c5e2b7a4968a1c2d3e4f5a6b7c8
rabbitmq_password = 9c8b7a6f5e4d3c2b1a0f
shared_secret = 0a1b2c3d4e5f60718293a4b5c6d7e8f9
secret_key = x7!k2-stand-in-django-secret-key-not-a-real-one
camo_key = 1122334455667788
memcached_password = aabbccddeeff
redis_password = ffeeddccbbaa
zulip_org_key = 00112233445566778899aabbccddeeff
zulip_org_id = 5a7c1e2d-0b3f-4c6a-9d8e-7f6a5b4c3d2e
"""

ZULIP_CONF = """\
[machine]
puppet_classes = zulip::profile::standalone
deploy_type = production

[postgresql]
version = 16
"""


@dataclass(frozen=True)
class ZulipStandIn:
    """Where the stand-in keeps what a Zulip server has (paths as on a real host, below root)."""

    root: Path
    zulip_home: Path
    deployment: Path
    etc_zulip: Path
    settings: Path
    secrets: Path
    supervisor_dir: Path
    target: Path

    @classmethod
    def at(cls, root: Path) -> ZulipStandIn:
        home = root / "home/zulip"
        etc = root / "etc/zulip"
        return cls(
            root=root,
            zulip_home=home,
            deployment=home / "deployments/current",
            etc_zulip=etc,
            settings=etc / "settings.py",
            secrets=etc / "zulip-secrets.conf",
            supervisor_dir=root / "etc/supervisor/conf.d",
            target=root / "srv/zulip-listeners-forwarder",
        )

    def options(self, *, target: bool = True) -> list[str]:
        """The installer's path options pointing at this stand-in."""
        return [
            "--zulip-root", str(self.zulip_home),
            "--etc-zulip", str(self.etc_zulip),
            "--supervisor-dir", str(self.supervisor_dir),
        ] + (["--target", str(self.target)] if target else [])  # fmt: skip

    def set_version(self, version: str) -> None:
        (self.deployment / "version.py").write_text(
            f'ZULIP_VERSION = "{version}"\nLATEST_MAJOR_VERSION = "{version.split(".")[0]}"\n'
            "API_FEATURE_LEVEL = 400\n"
        )

    def snapshot(self) -> dict[str, tuple[str, bytes | str, int]]:
        """Every file and link under the stand-in's /etc and /srv: kind, content, mode."""
        seen: dict[str, tuple[str, bytes | str, int]] = {}
        for top in (self.root / "etc", self.root / "srv"):
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    path = Path(dirpath) / name
                    info = path.lstat()
                    key = str(path.relative_to(self.root))
                    if stat.S_ISLNK(info.st_mode):
                        seen[key] = ("link", os.readlink(path), 0)
                    elif stat.S_ISDIR(info.st_mode):
                        seen[key] = ("dir", b"", stat.S_IMODE(info.st_mode))
                    else:
                        seen[key] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
        return seen


def build(root: Path, *, version: str = "11.4") -> ZulipStandIn:
    zulip = ZulipStandIn.at(root)
    release = zulip.zulip_home / "deployments" / f"{version}-release"
    (release / "analytics").mkdir(parents=True)
    (release / "analytics" / "__init__.py").write_text(
        '"""Stand-in for Zulip\'s analytics app."""\n'
    )
    (release / "scripts").mkdir()
    (release / "manage.py").write_text("#!/usr/bin/env python3\n# Stand-in for Zulip's manage.py\n")
    venv_bin = release / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python3"
    # Zulip's virtualenv Python; here the tests' Python, which has Django
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    zulip.deployment.symlink_to(release.name)
    zulip.set_version(version)
    zulip.etc_zulip.mkdir(parents=True)
    zulip.settings.write_text(SETTINGS_TEMPLATE)
    zulip.settings.chmod(0o644)
    zulip.secrets.write_text(SECRETS)
    zulip.secrets.chmod(0o640)
    (zulip.etc_zulip / "zulip.conf").write_text(ZULIP_CONF)
    (zulip.supervisor_dir / "zulip").mkdir(parents=True)
    (zulip.supervisor_dir / "zulip" / "zulip.conf").write_text(
        "[program:zulip-django]\ncommand=/home/zulip/deployments/current/manage.py runserver\n"
    )
    (zulip.root / "srv").mkdir()
    return zulip
