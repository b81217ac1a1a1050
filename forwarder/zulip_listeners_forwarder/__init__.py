"""zulip_listeners_forwarder: forward Zulip's real-time events to a zulip-listeners server.

A Django app loaded into Zulip through ``EXTRA_INSTALLED_APPS``.  The package is split so that
only three small modules touch Zulip: ``hook`` (the producer, installed by ``apps``),
``audience`` (the producer's look-ups of Zulip users, for events sent on behalf of bots) and
``worker`` (the consumer's queue glue).  ``normalize``, ``envelope`` and ``delivery`` are plain
Python.  This module only carries the version, and must not import Django or Zulip.
"""

__version__ = "0.1.0"
