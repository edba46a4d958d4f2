"""``status`` (who leads, replicas, entries, what is due) and ``health`` (for probes).

Both read only: every shard's lease key, the replica heartbeats (``heartbeat.py``; a
heartbeat's age comes from its key's TTL, so no clock of any replica is involved), and for
``status`` each shard's schedule ZSET, pending and dead hashes and its leader's last
reconcile summary. An unsharded schedule is a layout of one shard (RedBeat's own keys,
``layout.py``) and is read by the same code; only the output differs, where ``docs/cli.md``
documents two shapes (a ``leader`` object, or ``layout`` and ``shards[]``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import Settings
from ..errors import EntryNotFound, InvalidEntry
from ..leader.heartbeat import ReplicaStatus, read_heartbeats, shared_names
from ..leader.lease import Holder, parse_token
from ..model.lifecycle import PARKED
from ..store.keys import Keys
from ..store.layout import Layout
from ..store.persistence import UNKNOWN, count_redis_only, read_persistence
from ..store.wire import RETIRED
from .context import EXIT_OK, EXIT_UNHEALTHY, Args, Context, redis_error
from .output import emit, holder_json, iso, layout_json, replica_json, status_text, stored_json

__all__ = ["check_health", "cmd_health", "cmd_status", "collect_status", "default_max_age"]

#: How many of the next due entries ``status`` shows.
NEXT_DUE = 10
#: The counts of a shard that ``status`` also sums over the shards.
COUNTED = ("entries", "not_scheduled", "pending", "dead")


def sharded(layout: Layout) -> bool:
    """Whether ``status`` and ``health`` report per shard (several shards, or a move)."""
    return layout.shards > 1 or layout.moving


@dataclass(frozen=True)
class Shard:
    """One shard as ``status`` and ``health`` read it."""

    index: int
    #: the lease holder (None: the lease is free or retired) and its live heartbeat
    holder: Holder | None
    beat: ReplicaStatus | None
    #: its item of ``shards[]`` in ``status --json`` (read with ``counts`` only)
    json: dict[str, Any]
    #: its first ``NEXT_DUE`` schedule members: ``(score, member, keys)``
    due: list[tuple[float, str, Keys]]


def _read(
    ctx: Context, layout: Layout, *, counts: bool
) -> tuple[float, list[Shard], list[ReplicaStatus]]:
    """Redis' time, every shard of ``layout`` (its lease; with ``counts`` also what
    ``status`` shows of it) in one pipeline, and the live replicas."""
    with ctx.client.pipeline(transaction=False) as pipe:
        pipe.time()
        for keys in layout.all_keys():
            pipe.get(keys.lease)
            if counts:
                pipe.pttl(keys.lease)
                # the COUNTED, in that order
                pipe.zcard(keys.schedule)
                pipe.zcount(keys.schedule, "-inf", "(0")
                pipe.hlen(keys.pending)
                pipe.hlen(keys.dead)
                pipe.get(keys.reconcile)
                pipe.zrangebyscore(keys.schedule, 0, "+inf", start=0, num=NEXT_DUE, withscores=True)
        (secs, micros), *replies = pipe.execute()
    now = secs + micros / 1e6
    replicas = list(read_heartbeats(ctx.client, ctx.keys))
    step = 8 if counts else 1
    shards = [
        _shard(index, keys, replies[step * index : step * (index + 1)], now, replicas)
        for index, keys in enumerate(layout.all_keys())
    ]
    return now, shards, replicas


def _shard(
    index: int, keys: Keys, replies: list[Any], now: float, replicas: list[ReplicaStatus]
) -> Shard:
    lease, *counts = replies
    retired = lease is not None and str(lease).startswith(RETIRED)
    holder = None if lease is None or retired else parse_token(str(lease))
    beat = holder_beat(holder, replicas)
    if not counts:
        return Shard(index, holder, beat, {}, [])
    pttl, *counted, reconcile, due = counts
    overdue = [now - score for _key, score in due[:1] if score <= now]
    data = {
        "index": index,
        "prefix": keys.prefix,
        "leader": holder_json(holder, beat),
        "retired": retired,
        "lease_ttl": round(pttl / 1000, 3) if lease is not None and pttl >= 0 else None,
        **dict(zip(COUNTED, map(int, counted), strict=True)),
        "lag": round(overdue[0], 3) if overdue else 0.0,
        "last_reconcile": stored_json(reconcile),
    }
    return Shard(index, holder, beat, data, [(float(score), key, keys) for key, score in due])


def holder_beat(holder: Holder | None, replicas: list[ReplicaStatus]) -> ReplicaStatus | None:
    """The heartbeat of the replica process holding a lease (name, host and pid match)."""
    if holder is None or holder.fence is None:
        return None
    who = (holder.name, holder.host, holder.pid)
    found = (
        r for r in replicas if (r.heartbeat.instance, r.heartbeat.host, r.heartbeat.pid) == who
    )
    return next(found, None)


# -- status ----------------------------------------------------------------------------


def _runs_json(runs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": name, **run.to_json()} for name, found in runs.items() for run in found]


def collect_status(ctx: Context) -> dict[str, Any]:
    """The ``status --json`` object."""
    layout = ctx.layout()
    now, shards, replicas = _read(ctx, layout, counts=True)
    merged = sorted((found for s in shards for found in s.due), key=lambda found: found[0])
    due = [(score, keys.name_of(key)) for score, key, keys in merged[:NEXT_DUE]]
    states = _states(ctx, [name for _score, name in due])
    per_shard = [s.json for s in shards]
    shared = frozenset(shared_names(replicas))
    running, runs = ctx.schedule().running(limit=NEXT_DUE)
    status: dict[str, Any] = {
        "redis_url": ctx.url,
        "key_prefix": ctx.keys.prefix,
        "persistence": read_persistence(ctx.client).to_json(),
        "redis_only_entries": count_redis_only(ctx.client, layout.all_keys()),
        "replicas": [replica_json(r, shared, shard_info=sharded(layout)) for r in replicas],
        **{field: sum(s[field] for s in per_shard) for field in COUNTED},
        "running": {"entries": running, "runs": _runs_json(runs)},
        "next_due": [
            {
                "name": name,
                "due": iso(datetime.fromtimestamp(score, tz=timezone.utc)),
                "due_in": round(score - now, 1),
                "state": states.get(name, "-"),
            }
            for score, name in due
        ],
    }
    if sharded(layout):
        return status | {
            "layout": layout_json(layout),
            #: one lease and one reconcile per shard: see ``shards[]``
            "leader": None,
            "last_reconcile": None,
            "lag": max(s["lag"] for s in per_shard),
            "shards": per_shard,
        }
    (only,) = shards
    leader, beat = only.json["leader"], only.beat
    if leader is not None:
        # led this long at its last tick, plus the time since that tick
        leading = round(beat.heartbeat.leading_for + beat.age, 1) if beat else None
        leader = leader | {"lease_ttl": only.json["lease_ttl"], "leading_for": leading}
    return status | {"leader": leader, "last_reconcile": only.json["last_reconcile"]}


def _states(ctx: Context, names: list[str]) -> dict[str, str]:
    """The state of each named entry (``parked: <reason>`` if it cannot be decoded)."""
    states: dict[str, str] = {}
    schedules = ctx.schedule()
    for name in names:
        try:
            states[name] = schedules.get(name).state
        except InvalidEntry as exc:
            states[name] = f"{PARKED}: {exc.field}: {exc.problem}"
        except EntryNotFound:
            continue
    return states


def cmd_status(ctx: Context, args: Args) -> int:
    status = collect_status(ctx)
    emit(args.json, status, status_text(status))
    return EXIT_OK


# -- health ----------------------------------------------------------------------------


def default_max_age(settings: Settings) -> float:
    """Oldest acceptable last tick: ``max(3 * retry_seconds, renew_seconds)``.

    A replica writes its heartbeat every ``retry_seconds``, and a leader that has not
    renewed for ``renew_seconds`` stops dispatching anyway: silent for longer than both
    three heartbeats and the renew deadline means stuck. 10 s with the default settings.
    """
    return max(3 * settings.retry_seconds, settings.renew_seconds)


def check_health(
    ctx: Context,
    *,
    instance: str | None = None,
    leader: bool = False,
    cluster: bool = False,
    max_age: float | None = None,
) -> dict[str, Any]:
    """The ``health --json`` object.

    Replica check (default): the replica (``instance``, else :func:`this_replica`) has a
    heartbeat no older than ``max_age``; with ``leader`` it also says it leads and holds
    the lease of a shard. ``cluster``: the lease of every shard is held by a replica with
    such a heartbeat that says it leads. Both fail while ``reshard`` moves the schedule.
    """
    limit = default_max_age(ctx.settings) if max_age is None else max_age
    layout = ctx.layout()
    _now, shards, replicas = _read(ctx, layout, counts=False)
    per_shard = [_shard_health(s, limit) for s in shards]
    result = _result("cluster" if cluster else "replica", limit)
    if sharded(layout) and (cluster or leader):
        result.update(layout=layout_json(layout), shards=per_shard)
    if cluster and sharded(layout):
        return result | _cluster(layout, per_shard, limit)
    if cluster:  # the one shard's verdict, and its leader's heartbeat
        (found,), beat = per_shard, shards[0].beat
        role = None if beat is None else beat.heartbeat.role
        verdict = {k: found[k] for k in ("age", "healthy", "reason")}
        return result | verdict | {"instance": found["leader"], "role": role}
    name, beat, problem = this_replica(ctx, replicas, instance)
    result["instance"] = name
    if problem:
        return result | {"reason": problem}
    if beat is not None:
        result.update(role=beat.heartbeat.role, age=round(beat.age, 3))
    moving = _moving(layout) if leader and layout.moving else ""
    healthy, reason = _judge(name, beat, limit, leader=leader, moving=moving)
    if not (healthy and leader and beat is not None):
        return result | {"healthy": healthy, "reason": reason}
    # --role leader of a replica that ticks and says it leads: a lease names it
    held = [s.index for s in shards if holder_beat(s.holder, [beat]) is not None]
    tick, count, holder = _tick(beat, limit), layout.shards, shards[0].holder
    if sharded(layout):
        reason = f"{name} leads {f'shards {held}' if held else 'no shard'} of {count}; {tick}"
    elif not held:
        who = "nobody" if holder is None else holder.describe()
        reason = f"{name} says it leads, but the lease is held by {who}"
    return result | {"healthy": bool(held), "reason": reason}


def _result(check: str, limit: float, **fields: Any) -> dict[str, Any]:
    """A ``health --json`` object: unhealthy, nothing known yet, then ``fields``."""
    unknown = dict.fromkeys(("instance", "role", "age"))
    found = {"healthy": False, "check": check, "reason": "", "max_age": limit}
    return unknown | found | {"redis_reachable": True, **fields}


def _moving(layout: Layout) -> str:
    what = f"the schedule is being resharded ({layout.describe()})"
    return f"{what}: no shard is led until the move ends"


def _tick(beat: ReplicaStatus, limit: float) -> str:
    return f"last tick {beat.age:.1f}s ago (max {limit:g}s)"


def _judge(
    name: str,
    beat: ReplicaStatus | None,
    limit: float,
    *,
    leader: bool,
    fence: int | None = None,
    moving: str = "",
) -> tuple[bool, str]:
    """Whether the replica ``name`` with heartbeat ``beat`` is healthy, and why: its last
    tick is at most ``limit`` seconds old, no ``moving`` (a reshard) is under way, and with
    ``leader`` it says it leads (``fence``: that of its lease; default: its heartbeat's)."""
    if beat is None:
        return False, f"no heartbeat from {name} (not running, or silent for too long)"
    tick, role = _tick(beat, limit), beat.heartbeat.role
    if beat.age > limit:
        return False, f"{name} is stuck: {tick}"
    if moving:
        return False, f"{moving}; {tick}"
    if leader and role != "leader":
        return False, f"{name} is a {role}, not the leader; {tick}"
    if role != "leader":
        return True, f"{name} is the {role}; {tick}"
    fence = beat.heartbeat.fence if fence is None else fence
    return True, f"{name} is the leader (fence {fence}); {tick}"


def _shard_health(shard: Shard, limit: float) -> dict[str, Any]:
    """One shard for ``health --cluster``: its lease is held by a replica that ticks and
    says it leads."""
    holder, beat = shard.holder, shard.beat
    if holder is None:
        healthy, reason = False, "no replica holds the lease"
    elif holder.fence is None:
        healthy, reason = False, f"the lease is held by {holder.describe()}: no heartbeat to check"
    else:
        healthy, reason = _judge(holder.name, beat, limit, leader=True, fence=holder.fence)
    return {
        "index": shard.index,
        "leader": None if holder is None else holder.name,
        "fence": None if holder is None else holder.fence,
        "age": None if beat is None else round(beat.age, 3),
        "healthy": healthy,
        "reason": reason,
    }


def _cluster(layout: Layout, shards: list[dict[str, Any]], limit: float) -> dict[str, Any]:
    """``health --cluster`` of several shards: every one healthy, and no move under way."""
    ages = [s["age"] for s in shards if s["age"] is not None]
    age = max(ages) if ages else None
    bad = [s for s in shards if not s["healthy"]]
    if layout.moving:
        return {"age": age, "reason": _moving(layout)}
    if bad:
        unled = [s["index"] for s in bad if s["leader"] is None]
        parts = [f"shards without a leader: {', '.join(map(str, unled))}"] if unled else []
        parts += [f"shard {s['index']}: {s['reason']}" for s in bad if s["leader"] is not None]
        reason = f"{len(bad)} of {layout.shards} shards unhealthy; " + "; ".join(parts)
        return {"age": age, "reason": reason}
    by_leader: dict[str, list[int]] = {}
    for s in shards:
        by_leader.setdefault(s["leader"], []).append(s["index"])
    led = ", ".join(f"{name} {indexes}" for name, indexes in sorted(by_leader.items()))
    ok = f"all {layout.shards} shards led ({led}); oldest last tick {age:.1f}s ago (max {limit:g}s)"
    return {"age": age, "healthy": True, "reason": ok}


def this_replica(
    ctx: Context, replicas: list[ReplicaStatus], instance: str | None
) -> tuple[str, ReplicaStatus | None, str]:
    """The replica ``health`` checks: ``(name, its heartbeat, problem)``.

    ``instance`` (``--instance``), else ``safe_redbeat_instance_name`` if set: the live
    replica of that name, a problem if several use it. Else the replica on this host
    (``<host>:<pid>`` names, one replica per pod): a problem if there are several.
    """
    name = instance or (ctx.settings.instance_name if ctx.settings.instance_named else None)
    if name is not None:
        found = [r for r in replicas if r.heartbeat.instance == name]
        where = ", ".join(f"host {r.heartbeat.host} pid {r.heartbeat.pid}" for r in found)
        problem = (
            f"{len(found)} live replicas use the instance name {name!r} ({where}): give "
            "each its own safe_redbeat_instance_name"
        )
    else:
        name = socket.gethostname()
        found = [r for r in replicas if r.heartbeat.host == name]
        names = ", ".join(sorted(r.heartbeat.instance for r in found))
        problem = (
            f"{len(found)} replicas run on host {name} ({names}): name the one to check "
            "with --instance"
        )
        name = found[0].heartbeat.instance if len(found) == 1 else name
    if len(found) > 1:
        return name, None, problem
    return name, (found[0] if found else None), ""


def cmd_health(ctx: Context, args: Args) -> int:
    try:
        result = check_health(
            ctx,
            instance=args.instance,
            leader=args.role == "leader",
            cluster=args.cluster,
            max_age=args.max_age,
        )
        result["persistence"] = read_persistence(ctx.client).to_json()
    except (RedisConnectionError, RedisTimeoutError) as exc:
        if not args.redis_down_ok:
            raise
        result = _result(
            "cluster" if args.cluster else "replica",
            args.max_age or default_max_age(ctx.settings),
            healthy=True,
            reason=redis_error(exc, ctx.url).message + " (ignored: --redis-down-ok)",
            instance=None if args.cluster else args.instance or ctx.settings.instance_name,
            redis_reachable=False,
            persistence=UNKNOWN.to_json(),
        )
    word = "OK" if result["healthy"] else "UNHEALTHY"
    emit(args.json, result, f"{word}: {result['reason']}")
    return EXIT_OK if result["healthy"] else EXIT_UNHEALTHY
