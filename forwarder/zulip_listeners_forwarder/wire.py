"""The wire encoding: compact UTF-8 JSON, the same bytes whichever encoder makes them.

This module owns how envelopes and batch bodies become bytes.  It uses ``orjson`` (which
Zulip ships, and which Zulip's own queue client uses) when it can be imported, and the
standard library's ``json`` otherwise.  Both write compact JSON (no spaces), UTF-8 without
``\\u`` escapes for non-ASCII text, and escape the same characters, so the receiver sees the
same bytes; the only differences are in the spelling of some floats (``1e-05`` / ``0.00001``),
which are the same number, and ``NaN``, which ``orjson`` writes as ``null`` and ``json``
refuses.  A value ``orjson`` cannot write (an integer beyond 64 bits, a non-string key) is
written by ``json``.  Pure Python, no Zulip imports.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - Zulip always has orjson; the fallback is tested
    orjson = None  # type: ignore[assignment]


def encode_json_stdlib(value: Any) -> bytes:
    """Compact UTF-8 JSON through the standard library."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON: through ``orjson`` when importable, else the standard library."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError: beyond 64 bits, a non-str key, …
            pass
    return encode_json_stdlib(value)


#: Which encoder :func:`encode_json` uses (for the README's numbers and the tests).
ENCODER = "orjson" if orjson is not None else "json"
