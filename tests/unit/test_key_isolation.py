"""Apps sharing one Redis cannot touch each other's keys, whatever their prefixes (ending
with ``:``, without ``::``) and shard counts (docs/storage-format.md, "Keys of several apps
on one Redis")."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from safe_redbeat import ConfigurationError, InvalidEntry
from safe_redbeat.model.validation import check_name
from safe_redbeat.store.keys import Keys, check_prefix, isolates
from safe_redbeat.store.layout import Layout

#: replica tokens are 32 hex digits; guard keys carry uuid task ids
TOKENS = ("0123456789abcdef0123456789abcdef", "deadbeefdeadbeefdeadbeefdeadbeef")
TASK_IDS = ("6f1c1d56-3f43-4a52-9d1e-6a0f2f6b7c15",)
#: entries whose runs are tracked (overlap policy): ``<p>:running:<name>``
RUNNING = ("nightly", "a:b", "schedule", "1")

ALPHABET = "ab1:{}#/%09 "
prefixes = st.text(ALPHABET, max_size=10).map(lambda text: text + ":")
names = st.text(ALPHABET + "schedulockrpain", min_size=1, max_size=14)
shard_counts = st.sampled_from([1, 2, 3, 10, 12])


def usable(prefix: str) -> bool:
    if not isolates(prefix):
        return False
    try:
        check_prefix(prefix)
    except ConfigurationError:
        return False
    return True


def valid_name(name: str) -> bool:
    try:
        check_name(name)
    except InvalidEntry:
        return False
    return True


def internal(keys: Keys) -> set[str]:
    found = {
        keys.schedule,
        keys.statics,
        keys.fence,
        keys.pending,
        keys.dead,
        keys.loader,
        keys.seeded,
        keys.layout,
        keys.reconcile,
        keys.replica_index,
        keys.running_index,
        keys.lease,
    }
    found |= {keys.running(name) for name in RUNNING}
    found |= {keys.replica(token) for token in TOKENS}
    found |= {f"{keys.prefix}:done:{task_id}" for task_id in TASK_IDS}
    return found


def internal_keys(prefix: str, shards: int) -> set[str]:
    """Every key an app with ``prefix`` keeps beside its entries, in a layout of ``shards``
    (the app-wide keys under the prefix itself included)."""
    layout = Layout(Keys(prefix, prefix + ":lock"), shards)
    found = internal(layout.base)
    for keys in layout.all_keys():
        found |= internal(keys)
    return found


def entry_key(prefix: str, shards: int, name: str) -> str:
    return Layout(Keys(prefix, prefix + ":lock"), shards).keys_for(name).entry(name)


@settings(max_examples=600)
@given(prefixes, shard_counts, prefixes, shard_counts)
def test_two_apps_never_share_an_internal_key(p: str, k1: int, q: str, k2: int) -> None:
    assume(p != q and usable(p) and usable(q))
    shared = internal_keys(p, k1) & internal_keys(q, k2)
    assert not shared, (p, k1, q, k2, shared)


@settings(max_examples=600)
@given(prefixes, shard_counts, names, prefixes, shard_counts)
def test_no_entry_name_makes_the_key_of_an_internal_key(
    p: str, k1: int, name: str, q: str, k2: int
) -> None:
    """Of any app, this one included."""
    assume(usable(p) and usable(q) and valid_name(name))
    assert entry_key(p, k1, name) not in internal_keys(q, k2)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("redbeat:", 2), ("{redbeat}:", 2)),  # the braces were stripped
        (("app:", 12), ("app1:", 12)),  # shard 1x of one, shard x of the other
        (("app", 12), ("app1", 12)),  # shard 10 of one, shard 0 of the other: 'app10/12'
    ],
)
def test_prefixes_that_used_to_share_shard_keys_do_not(
    first: tuple[str, int], second: tuple[str, int]
) -> None:
    assert not internal_keys(*first) & internal_keys(*second)


@pytest.mark.parametrize("name", ["x::schedule", ":lock", "a::replica:1", "t::", "::"])
def test_names_holding_the_internal_separator_are_refused(name: str) -> None:
    with pytest.raises(InvalidEntry) as caught:
        check_name(name)
    assert caught.value.field == "name"


@pytest.mark.parametrize(
    "name", ["nightly", "tenant:17:report", "schedule", "billing:reconcile", "replica:x"]
)
def test_ordinary_names_stay_valid(name: str) -> None:
    assert check_name(name) == name


def test_prefixes_outside_the_convention_are_told_apart() -> None:
    assert isolates("redbeat:") and isolates("{app}:") and isolates("tenant:7:")
    assert not isolates("app") and not isolates("app::") and not isolates("a::b:")


def test_a_prefix_shaped_like_a_shards_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="redbeat_key_prefix"):
        check_prefix("{redbeat:#0/2}:")
    assert check_prefix("{redbeat}:") == "{redbeat}:"
