"""The wire encoding: orjson when importable, the standard library otherwise, same bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cost_samples import LARGE_RECIPIENTS, big_message_event, big_message_users
from zulip_shapes import VERSIONS, samples_for

from zulip_listeners_forwarder import delivery, wire
from zulip_listeners_forwarder.envelope import ServerInfo, build_envelope, realm_info
from zulip_listeners_forwarder.hook import zulip_finalizer
from zulip_listeners_forwarder.normalize import audience_ids, normalize_event

SERVER = ServerInfo(host="zulip.example.com", zulip_version="11.0", feature_level=400)


def envelopes(realm: Any) -> list[dict[str, Any]]:
    found = []
    for version in VERSIONS:
        for sample in samples_for(version):
            event = normalize_event(sample.event, sample.users, finalize=zulip_finalizer(realm))
            found.append(
                build_envelope(
                    server=SERVER,
                    realm=realm_info(realm),
                    event=event,
                    user_ids=audience_ids(sample.users),
                )
            )
    users = big_message_users(LARGE_RECIPIENTS)
    event = normalize_event(big_message_event(LARGE_RECIPIENTS), users)
    found.append(
        build_envelope(server=SERVER, realm=realm_info(realm), event=event, user_ids=[1, 2])
    )
    return found


def test_orjson_is_used_here() -> None:
    assert wire.ENCODER == "orjson"
    assert delivery.encode_json is wire.encode_json


def test_orjson_and_json_write_the_same_bytes(realm: Any) -> None:
    tricky = {"text": 'é 😀 \u2028 \x00 \x1f </script> \\ " \t\n', "n": [0, -1, 2**63 - 1]}
    for value in [*envelopes(realm), tricky, {"events": envelopes(realm)}]:
        fast = wire.encode_json(value)
        assert fast == wire.encode_json_stdlib(value)
        assert b", " not in fast[:200] and json.loads(fast) == value


def test_without_orjson_the_standard_library_writes_it(
    realm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = envelopes(realm)
    expected = [wire.encode_json(envelope) for envelope in values]
    monkeypatch.setattr(wire, "orjson", None)
    assert [wire.encode_json(envelope) for envelope in values] == expected


def test_what_orjson_cannot_write_goes_to_the_standard_library() -> None:
    assert wire.encode_json({"big": 2**70}) == b'{"big":1180591620717411303424}'
    assert wire.encode_json({1: "a"}) == b'{"1":"a"}'
