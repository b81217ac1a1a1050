"""Stand-in for zerver/models/users.py: ``get_user_profile_by_id`` and the bot-type constants.

Zulip's ``get_user_profile_by_id`` is ``@cache_with_key``-memoised in memcached and returns a
``UserProfile`` with its ``realm`` fetched (``select_related``); an unknown id raises
``UserProfile.DoesNotExist``.  Here the users are what a test puts into :data:`USERS` (with
:func:`add_user`), and every call is recorded in :data:`LOOKUPS`, so that tests can tell how
often the forwarder looked a user up.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

from django.core.exceptions import ObjectDoesNotExist


class UserProfile:
    DEFAULT_BOT = 1
    INCOMING_WEBHOOK_BOT = 2
    OUTGOING_WEBHOOK_BOT = 3
    EMBEDDED_BOT = 4
    SERVICE_BOT_TYPES: ClassVar[list[int]] = [OUTGOING_WEBHOOK_BOT, EMBEDDED_BOT]

    class DoesNotExist(ObjectDoesNotExist):
        pass


USERS: dict[int, SimpleNamespace] = {}
LOOKUPS: list[int] = []


def add_user(
    user_id: int, realm: Any, *, is_bot: bool = False, bot_type: int | None = None
) -> SimpleNamespace:
    profile = SimpleNamespace(
        id=user_id, realm=realm, realm_id=realm.id, is_bot=is_bot, bot_type=bot_type
    )
    USERS[user_id] = profile
    return profile


def reset() -> None:
    USERS.clear()
    LOOKUPS.clear()


def get_user_profile_by_id(user_profile_id: int) -> SimpleNamespace:
    LOOKUPS.append(user_profile_id)
    try:
        return USERS[user_profile_id]
    except KeyError:
        raise UserProfile.DoesNotExist(f"UserProfile {user_profile_id}") from None
