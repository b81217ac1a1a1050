"""One command that installs the forwarder on a Zulip server, reports it, and takes it out again.

``python3 -m zulip_listeners_forwarder.installer install|uninstall|status`` does the steps of
forwarder/README.md "Installing on a Zulip server": the package in a directory of its own
(``packaging``), a marked block in ``/etc/zulip/settings.py`` (``settings_block``), the signing
secret in ``/etc/zulip/zulip-secrets.conf`` (``secrets_file``), the supervisor program file
(``zulip-listeners-forwarder.conf``, shipped here as package data), after checking the Zulip
deployment (``layout``).  ``cli`` ties them together and prints what changed.

It runs from the wheel file itself (``PYTHONPATH=…whl``), before anything is installed, so no
module of this package imports Django, Zulip or standardwebhooks: only the standard library.
"""
