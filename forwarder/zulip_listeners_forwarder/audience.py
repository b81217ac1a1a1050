"""What the hook needs to know about an event's audience that the event itself does not say.

This module owns two rules about events Zulip sends on behalf of bots, and the per-process
memo of user facts they read:

* **The conversation's realm.**  Zulip passes ``send_event`` the *actor's* realm for some
  events: ``zerver/actions/reactions.py`` sends a reaction with ``user_profile.realm``, so the
  Welcome Bot's reaction in every new organisation comes with the realm of the system bots
  (``zulipinternal``), and so do other actions of the cross-realm system bots (notification
  bot, email gateway).  Only that realm's users act in other realms, so only when Zulip names
  it (``settings.SYSTEM_BOT_REALM``) does :func:`conversation_realm` look at the audience:
  the first of at most :data:`MAX_AUDIENCE_LOOKUPS` audience users whose realm differs gives
  the conversation's realm.  Every other event costs nothing here.
* **Read flags of service bots.**  Since Zulip 10, every outgoing-webhook (and embedded-bot)
  delivery attempt marks the message read for the bot
  (``do_flag_service_bots_messages_as_processed`` → ``do_update_message_flags(bot, "add",
  "read", [id])``): an ``update_message_flags`` event (op ``add``, flag ``read``) whose
  audience is the bot alone.  :func:`is_service_bot_read_flag` recognises it: that shape,
  an audience of exactly one user, and that user a bot whose ``bot_type`` is one of Zulip's
  ``UserProfile.SERVICE_BOT_TYPES`` (outgoing webhook, embedded).  Zulip's ``users`` argument
  holds only ids here, so the user is looked up.

User facts (realm, service bot or not) come from Zulip's ``get_user_profile_by_id``, which
is served from Zulip's memcached (one primary-key query on a miss), and are memoised per
process for :data:`FACTS_TTL_SECONDS`: a user never changes realm and a bot never changes
type, so the memo only has to be bounded.  A failed lookup is logged (at most once a minute)
and treated as "unknown": the event keeps the realm Zulip gave it, and is forwarded.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .normalize import event_field, user_id_of

logger = logging.getLogger(__name__)

#: How many audience users :func:`conversation_realm` looks up at most for one event.
MAX_AUDIENCE_LOOKUPS = 10

#: How long a user's facts are kept in the per-process memo, and how many users it holds.
FACTS_TTL_SECONDS = 600.0
MAX_REMEMBERED_USERS = 10_000

#: At most one "lookup failed" warning per this many seconds.
LOG_INTERVAL_SECONDS = 60.0

#: Zulip's ``UserProfile.OUTGOING_WEBHOOK_BOT`` and ``EMBEDDED_BOT``, if Zulip does not say.
DEFAULT_SERVICE_BOT_TYPES = (3, 4)


@dataclass(frozen=True)
class UserFacts:
    """What the hook needs to know about one user."""

    realm: Any  # Zulip's Realm: id, uuid, string_id, host
    is_service_bot: bool

    @property
    def realm_id(self) -> Any:
        return getattr(self.realm, "id", None)


def zulip_user_facts(user_id: int) -> UserFacts | None:
    """Read one user through Zulip's cached ``get_user_profile_by_id``; ``None`` if unknown."""
    from django.core.exceptions import ObjectDoesNotExist

    try:
        from zerver.models.users import UserProfile, get_user_profile_by_id
    except ImportError:  # Zulip before the models package: both lived in zerver.models
        from zerver.models import UserProfile, get_user_profile_by_id

    try:
        profile = get_user_profile_by_id(user_id)
    except ObjectDoesNotExist:
        return None
    service_types = getattr(UserProfile, "SERVICE_BOT_TYPES", DEFAULT_SERVICE_BOT_TYPES)
    return UserFacts(
        realm=profile.realm,
        is_service_bot=bool(profile.is_bot) and profile.bot_type in service_types,
    )


class UserFactsMemo:
    """Facts per user id, remembered for ``ttl`` seconds (at most ``max_entries`` users,
    least recently used dropped first).  Thread-safe."""

    def __init__(
        self,
        load: Callable[[int], UserFacts | None] = zulip_user_facts,
        *,
        ttl: float = FACTS_TTL_SECONDS,
        max_entries: int = MAX_REMEMBERED_USERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.load = load
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._lock = threading.Lock()
        self._facts: OrderedDict[int, tuple[float, UserFacts | None]] = OrderedDict()
        self._failure_logged_at: float | None = None

    def clear(self) -> None:
        with self._lock:
            self._facts.clear()

    def get(self, user_id: int) -> UserFacts | None:
        now = self.clock()
        with self._lock:
            remembered = self._facts.get(user_id)
            if remembered is not None and now - remembered[0] < self.ttl:
                self._facts.move_to_end(user_id)
                return remembered[1]
        try:
            facts = self.load(user_id)
        except Exception:  # memcached or the database away: forward the event as it is
            self._log_failure(user_id)
            return None
        with self._lock:
            self._facts[user_id] = (now, facts)
            self._facts.move_to_end(user_id)
            while len(self._facts) > self.max_entries:
                self._facts.popitem(last=False)
        return facts

    def _log_failure(self, user_id: int) -> None:
        now = self.clock()
        with self._lock:
            if (
                self._failure_logged_at is not None
                and now - self._failure_logged_at < LOG_INTERVAL_SECONDS
            ):
                return
            self._failure_logged_at = now
        logger.warning(
            "zulip_listeners_forwarder: cannot look up user %d; the event keeps the realm Zulip"
            " gave it and is forwarded (further failures are not logged for %.0f s)",
            user_id,
            LOG_INTERVAL_SECONDS,
            exc_info=True,
        )


#: The memo the hook uses, one per Zulip process.
FACTS = UserFactsMemo()


def _ids(users: Iterable[Any], limit: int | None = None) -> list[int]:
    """The first ``limit`` user ids of ``users`` (ints, or dicts with an ``id``)."""
    ids = (uid for uid in (user_id_of(user) for user in users) if uid is not None)
    return list(itertools.islice(ids, limit))


def conversation_realm(
    realm: Any, users: Iterable[Any], system_bot_realm: str, facts: UserFactsMemo = FACTS
) -> Any | None:
    """The realm the event belongs to when Zulip named the system-bot realm but the audience
    is in another one; ``None`` when the realm Zulip named stands."""
    if getattr(realm, "string_id", None) != system_bot_realm:
        return None
    for user_id in _ids(users, MAX_AUDIENCE_LOOKUPS):
        found = facts.get(user_id)
        if found is not None and found.realm_id is not None and found.realm_id != realm.id:
            return found.realm
    return None


def is_service_bot_read_flag(
    event: Any, users: Iterable[Any], facts: UserFactsMemo = FACTS
) -> bool:
    """An ``update_message_flags`` add of ``read`` whose audience is one service bot: what
    Zulip ≥ 10 sends on each outgoing-webhook or embedded-bot delivery attempt."""
    if event_field(event, "type") != "update_message_flags":
        return False
    operation = event_field(event, "op") or event_field(event, "operation")
    if operation != "add" or event_field(event, "flag") != "read":
        return False
    ids = _ids(users, 2)
    if len(ids) != 1:
        return False
    found = facts.get(ids[0])
    return found is not None and found.is_service_bot
