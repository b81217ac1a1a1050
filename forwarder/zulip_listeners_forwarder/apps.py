"""Django app configuration: installs the event hook when Zulip starts.

Every Zulip process (uwsgi, Tornado, queue workers, cron management commands) runs Django
setup, so ``ready()`` runs in all of them and each process gets the wrapper.
"""

from django.apps import AppConfig


class ZulipListenersForwarderConfig(AppConfig):
    name = "zulip_listeners_forwarder"
    verbose_name = "zulip-listeners event forwarder"

    def ready(self) -> None:
        from .hook import install_on_ready

        install_on_ready()
