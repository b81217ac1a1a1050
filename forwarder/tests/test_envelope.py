"""Envelope v1: exact keys and types."""

from __future__ import annotations

import json
import uuid
from typing import Any

from zulip_listeners_forwarder.envelope import ServerInfo, build_envelope, new_event_id, realm_info

SERVER = ServerInfo(host="zulip.example.com", zulip_version="11.0", feature_level=400)


def test_envelope_v1_shape(realm: Any) -> None:
    envelope = build_envelope(
        server=SERVER,
        realm=realm_info(realm),
        event={"type": "reaction", "op": "add", "message_id": 1},
        user_ids=[10, 11],
        clock_ms=lambda: 1700000000123,
    )

    assert envelope == {
        "v": 1,
        "event_id": envelope["event_id"],
        "emitted_at_ms": 1700000000123,
        "server": {"host": "zulip.example.com", "zulip_version": "11.0", "feature_level": 400},
        "realm": {"id": 2, "uuid": "8a3b2f7e-3c1d-4f5e-9a6b-0c1d2e3f4a5b", "string_id": "acme"},
        "type": "reaction",
        "op": "add",
        "audience": {"count": 2, "user_ids": [10, 11]},
        "event": {"type": "reaction", "op": "add", "message_id": 1},
    }
    assert uuid.UUID(envelope["event_id"]).version == 7
    json.dumps(envelope)


def test_envelope_without_op_or_audience_ids(realm: Any) -> None:
    envelope = build_envelope(
        server=SERVER,
        realm=realm_info(realm),
        event={"type": "message", "message": {}, "flags": []},
        user_ids=[10, 11, 12],
        include_audience_ids=False,
    )

    assert envelope["op"] is None
    assert envelope["audience"] == {"count": 3}
    assert isinstance(envelope["emitted_at_ms"], int)


def test_event_ids_are_unique(realm: Any) -> None:
    ids = {
        build_envelope(server=SERVER, realm=realm_info(realm), event={"type": "x"}, user_ids=[])[
            "event_id"
        ]
        for _ in range(100)
    }
    assert len(ids) == 100


def test_event_ids_are_uuid7_in_time_order() -> None:
    import time as _time

    before_ms = int(_time.time() * 1000)
    ids = [new_event_id() for _ in range(5000)]
    after_ms = int(_time.time() * 1000)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    # Made later, sorts later (also within one millisecond), as text and as numbers.
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    first_ms = parsed[0].int >> 80
    last_ms = parsed[-1].int >> 80
    assert before_ms <= first_ms <= last_ms <= after_ms + 2
