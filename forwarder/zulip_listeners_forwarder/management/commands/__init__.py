"""Django management commands shipped by the forwarder (``run_zulip_listeners_forwarder``)."""
