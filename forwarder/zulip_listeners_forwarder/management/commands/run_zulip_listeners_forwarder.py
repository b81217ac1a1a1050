"""``manage.py run_zulip_listeners_forwarder``: the long-running consumer, or a dead-letter replay.

Zulip's ``process_queue`` command can only start workers that live under ``zerver/worker/``, so
the forwarder ships this command and runs it under its own supervisor program.  It mirrors
``process_queue``: set the worker up, stop cleanly on SIGTERM/SIGINT/SIGUSR1 (supervisor
restarts it; unacknowledged events are redelivered by RabbitMQ), then consume forever.

``--resend FILE`` instead sends every batch of a dead-letter file again and exits.
``--spool-status`` prints, per realm, the batches set aside in the spool (a realm the receiver
refused with 429, see ``lanes.py``) and the events shed for that realm, and exits.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from argparse import ArgumentParser
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from zulip_listeners_forwarder.delivery import resend_dead_letters
from zulip_listeners_forwarder.lanes import spool_status
from zulip_listeners_forwarder.settings import ForwarderConfigError, load_secrets, load_settings
from zulip_listeners_forwarder.versions import UnsupportedZulipError, require_supported_zulip

logger = logging.getLogger("zulip_listeners_forwarder.command")


class Command(BaseCommand):
    help = "Consume the zulip_listeners_forwarder queue and POST signed batches to the receiver."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--resend",
            metavar="FILE",
            help="send the batches of a dead-letter file again, then exit "
            "(move the file aside first; new failures are appended to the configured file)",
        )
        parser.add_argument(
            "--spool-status",
            action="store_true",
            help="print, per realm, the events set aside because the receiver refused the realm"
            " (429) and the events shed for it, then exit",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options.get("resend"):
                self.resend(options["resend"])
            elif options.get("spool_status"):
                self.spool_status()
            else:
                self.consume()
        except ForwarderConfigError as exc:
            raise CommandError(str(exc)) from exc

    def consume(self) -> None:
        if not getattr(settings, "USING_RABBITMQ", True):
            raise CommandError("Cannot consume the forwarder queue when USING_RABBITMQ is False")
        try:
            require_supported_zulip()
            from zulip_listeners_forwarder.worker import ForwarderWorker
        except UnsupportedZulipError as exc:
            raise CommandError(str(exc)) from exc

        worker = ForwarderWorker()
        worker.setup()
        install_signal_handlers(worker)
        logger.info(
            "consuming %s, posting to %s; refused realms are set aside in %s",
            worker.queue_name,
            worker.sender.url,
            worker.lanes.spool.directory,
        )
        worker.start()

    def resend(self, path: str) -> None:
        from zulip_listeners_forwarder.worker import build_sender

        conf = load_settings()
        if os.path.exists(conf.dead_letter_file) and os.path.samefile(path, conf.dead_letter_file):
            raise CommandError(
                f"{path} is the live dead-letter file; move it aside and resend the copy"
            )
        sender = build_sender(conf, load_secrets())
        try:
            result = resend_dead_letters(path, sender)
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"resent {result.delivered} event(s) in {result.batches} batch(es);"
            f" {result.dead_lettered} rejected again (see {conf.dead_letter_file})"
        )

    def spool_status(self) -> None:
        conf = load_settings()
        try:
            lanes = spool_status(conf.spool_dir)
        except OSError as exc:
            raise CommandError(f"cannot read the spool {conf.spool_dir}: {exc}") from exc
        if not lanes:
            self.stdout.write(f"nothing set aside in {conf.spool_dir}")
        for lane in lanes:
            realm = "realm (none)" if lane.realm is None else f"realm {lane.realm}"
            self.stdout.write(
                f"{realm}: {lane.events} event(s) set aside in {lane.batches} batch(es);"
                f" {lane.shed_total} shed, {lane.shed_unreported} of them not yet reported"
                " to the receiver"
            )


def install_signal_handlers(worker: Any) -> None:
    """Stop consuming and exit; an interrupted batch is redelivered, never lost."""

    def stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d received; disconnecting from %s", signum, worker.queue_name)
        try:
            worker.stop()
        finally:
            sys.exit(0)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, stop)
