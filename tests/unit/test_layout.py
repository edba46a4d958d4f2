"""The shard layout: decoding what Redis holds, and the setting."""

from __future__ import annotations

import pytest

from safe_redbeat import ConfigurationError
from safe_redbeat.config import Settings
from safe_redbeat.heartbeat import _decode
from safe_redbeat.layout import InvalidLayout, Layout, decode_layout
from tests.support import KEYS


def test_absent_means_one_shard_with_redbeat_s_own_keys() -> None:
    layout = decode_layout(KEYS, None)
    assert layout == Layout(KEYS) and layout.keys(0) is KEYS and not layout.moving


@pytest.mark.parametrize(
    ("raw", "shards", "moving_to"),
    [('{"shards":3}', 3, None), ('{"shards":3,"moving_to":1}', 3, 1), ('{"shards":1}', 1, None)],
)
def test_a_stored_layout_decodes(raw: str, shards: int, moving_to: int | None) -> None:
    layout = decode_layout(KEYS, raw)
    assert (layout.shards, layout.moving_to) == (shards, moving_to)
    assert decode_layout(KEYS, layout.encode()) == layout


@pytest.mark.parametrize(
    "raw",
    [
        "3",
        "[]",
        "not json",
        b"\xff\xfe",
        '{"shards":0}',
        '{"shards":257}',
        '{"shards":true}',
        '{"shards":2.5}',
        '{"shards":"3"}',
        '{"shards":1e400}',
        '{"shards":3,"moving_to":-1}',
        '{"moving_to":2}',
    ],
)
def test_anything_else_is_refused_naming_the_key(raw: str | bytes) -> None:
    with pytest.raises(InvalidLayout, match="redbeat::layout"):
        decode_layout(KEYS, raw)


@pytest.mark.parametrize("value", [0, -1, 257, 2.5, "x", True])
def test_the_setting_is_checked_at_start(value: object) -> None:
    with pytest.raises(ConfigurationError, match="safe_redbeat_shards"):
        Settings.from_mapping({"safe_redbeat_shards": value})


@pytest.mark.parametrize(
    "extra",
    ['"shards":"0,1"', '"shards":[0,"x"]', '"shards":{"0":1}', '"shard_count":"many"'],
)
def test_a_heartbeat_with_garbage_shards_is_not_a_heartbeat(extra: str) -> None:
    raw = '{"instance":"a","role":"leader","fence":1,"leading_for":1.0,"ttl":10.0,' + extra + "}"
    assert _decode(raw, 5000, "t") is None
    good = '{"instance":"a","role":"leader","fence":1,"leading_for":1.0,"ttl":10.0}'
    decoded = _decode(good, 5000, "t")
    assert decoded is not None and decoded.heartbeat.shards == ()
