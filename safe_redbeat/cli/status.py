"""``status`` (who leads, replicas, entries, what is due) and ``health`` (for probes).

Both read only: the lease key, the replica heartbeats (``heartbeat.py``; a heartbeat's
age comes from its key's TTL, so no clock of any replica is involved), the schedule ZSET,
the pending hash and the leader's last reconcile summary. With a sharded layout
(``layout.py``) they read these keys of every shard, and report each shard's leader.
"""

from __future__ import annotations

import argparse
import json
import socket
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import Settings
from ..errors import EntryNotFound, InvalidEntry
from ..heartbeat import ReplicaStatus, read_heartbeats, shared_names
from ..keys import Keys
from ..layout import Layout
from ..lease import Holder, parse_token
from ..lifecycle import PARKED
from .context import EXIT_OK, EXIT_UNHEALTHY, Context, redis_error
from .output import emit, iso, seconds, table

__all__ = ["check_health", "cmd_health", "cmd_status", "collect_status", "default_max_age"]

#: How many of the next due entries ``status`` shows.
NEXT_DUE = 10
#: The lease value ``reshard`` leaves on a shard of a layout it moved away from.
RETIRED = "retired "


def sharded(layout: Layout) -> bool:
    """Whether ``status`` and ``health`` report per shard (several shards, or a move)."""
    return layout.shards > 1 or layout.moving


def collect_status(ctx: Context) -> dict[str, Any]:
    """The ``status --json`` object."""
    layout = ctx.layout()
    if sharded(layout):
        return _collect_sharded(ctx, layout)
    keys, client = ctx.keys, ctx.client
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.get(keys.lease)
        pipe.pttl(keys.lease)
        pipe.zcard(keys.schedule)
        pipe.zrangebyscore(keys.schedule, 0, "+inf", start=0, num=NEXT_DUE, withscores=True)
        pipe.hlen(keys.pending)
        pipe.hlen(keys.dead)
        pipe.get(keys.reconcile)
        pipe.zcount(keys.schedule, "-inf", "(0")
        replies = pipe.execute()
    (secs, micros), lease, lease_pttl, entries, due, pending, dead, reconcile, retired = replies
    now = secs + micros / 1e6
    states = _states(ctx, [keys.name_of(key) for key, _score in due])
    replicas = list(read_heartbeats(client, keys))
    return {
        "redis_url": ctx.url,
        "key_prefix": keys.prefix,
        "leader": _leader(lease, lease_pttl, replicas),
        "replicas": [_replica_json(r, shared=frozenset(shared_names(replicas))) for r in replicas],
        "entries": int(entries),
        #: entries that will not run again (finished, expired, an rrule that ended)
        "not_scheduled": int(retired),
        "pending": int(pending),
        "dead": int(dead),
        "next_due": [
            {
                "name": keys.name_of(key),
                "due": iso(datetime.fromtimestamp(score, tz=timezone.utc)),
                "due_in": round(score - now, 1),
                "state": states.get(keys.name_of(key), "-"),
            }
            for key, score in due
        ],
        "last_reconcile": _json_or_raw(reconcile),
    }


def _collect_sharded(ctx: Context, layout: Layout) -> dict[str, Any]:
    """``status --json`` of a sharded layout: per shard, totals, and who leads what."""
    client = ctx.client
    shard_keys = layout.all_keys()
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        for keys in shard_keys:
            pipe.get(keys.lease)
            pipe.pttl(keys.lease)
            pipe.zcard(keys.schedule)
            pipe.zcount(keys.schedule, "-inf", "(0")
            pipe.hlen(keys.pending)
            pipe.hlen(keys.dead)
            pipe.get(keys.reconcile)
            pipe.zrangebyscore(keys.schedule, 0, "+inf", start=0, num=NEXT_DUE, withscores=True)
        (secs, micros), *replies = pipe.execute()
    now = secs + micros / 1e6
    replicas = list(read_heartbeats(client, ctx.keys))
    shards: list[dict[str, Any]] = []
    due: list[tuple[float, str, Keys]] = []
    for index, keys in enumerate(shard_keys):
        lease, pttl, entries, unscheduled, pending, dead, reconcile, first = replies[
            8 * index : 8 * index + 8
        ]
        overdue = [now - score for _key, score in first[:1] if score <= now]
        shards.append(
            {
                "index": index,
                "prefix": keys.prefix,
                "leader": _shard_leader(lease, replicas),
                "retired": lease is not None and str(lease).startswith(RETIRED),
                "lease_ttl": round(pttl / 1000, 3) if lease is not None and pttl >= 0 else None,
                "entries": int(entries),
                "not_scheduled": int(unscheduled),
                "pending": int(pending),
                "dead": int(dead),
                "lag": round(overdue[0], 3) if overdue else 0.0,
                "last_reconcile": _json_or_raw(reconcile),
            }
        )
        due += [(float(score), key, keys) for key, score in first]
    due = sorted(due, key=lambda found: found[0])[:NEXT_DUE]
    states = _states(ctx, [keys.name_of(key) for _score, key, keys in due])
    return {
        "redis_url": ctx.url,
        "key_prefix": ctx.keys.prefix,
        "layout": {"shards": layout.shards, "moving_to": layout.moving_to},
        #: one lease per shard: see ``shards[].leader``
        "leader": None,
        "shards": shards,
        "replicas": [
            _replica_json(r, shard_info=True, shared=frozenset(shared_names(replicas)))
            for r in replicas
        ],
        "entries": sum(s["entries"] for s in shards),
        "not_scheduled": sum(s["not_scheduled"] for s in shards),
        "pending": sum(s["pending"] for s in shards),
        "dead": sum(s["dead"] for s in shards),
        "lag": max(s["lag"] for s in shards),
        "next_due": [
            {
                "name": keys.name_of(key),
                "due": iso(datetime.fromtimestamp(score, tz=timezone.utc)),
                "due_in": round(score - now, 1),
                "state": states.get(keys.name_of(key), "-"),
            }
            for score, key, keys in due
        ],
        #: each shard's leader reconciles the entries of its shard: see ``shards[]``
        "last_reconcile": None,
    }


def _shard_leader(lease: str | None, replicas: list[ReplicaStatus]) -> dict[str, Any] | None:
    """The holder of one shard's lease (None: free or retired), from the lease value."""
    if lease is None or str(lease).startswith(RETIRED):
        return None
    holder = parse_token(str(lease))
    beat = holder_beat(holder, replicas)
    return {
        "instance": holder.name,
        "host": holder.host or None,
        "pid": holder.pid,
        "fence": holder.fence,
        "heartbeat_age": None if beat is None else round(beat.age, 3),
    }


def holder_beat(holder: Holder | None, replicas: list[ReplicaStatus]) -> ReplicaStatus | None:
    """The heartbeat of the replica process holding a lease (name, host and pid match)."""
    if holder is None or holder.fence is None:
        return None
    return next(
        (
            r
            for r in replicas
            if (r.heartbeat.instance, r.heartbeat.host, r.heartbeat.pid)
            == (holder.name, holder.host, holder.pid)
        ),
        None,
    )


def _replica_json(
    r: ReplicaStatus, *, shard_info: bool = False, shared: frozenset[str] = frozenset()
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "instance": r.heartbeat.instance,
        "role": r.heartbeat.role,
        "age": round(r.age, 3),
        "fence": r.heartbeat.fence,
        "leading_for": r.heartbeat.leading_for,
        "host": r.heartbeat.host,
        "pid": r.heartbeat.pid,
        "token": r.heartbeat.token,
        #: another live replica uses the same instance name (an ERROR in both logs)
        "shared_name": r.heartbeat.instance in shared,
    }
    if shard_info:
        data.update(shards=list(r.heartbeat.shards), shard_count=r.heartbeat.shard_count)
    return data


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


def _leader(lease: str | None, pttl: int, replicas: list[ReplicaStatus]) -> dict[str, Any] | None:
    if lease is None:
        return None
    holder = parse_token(str(lease))
    beat = holder_beat(holder, replicas)
    return {
        "instance": holder.name,
        "host": holder.host or None,
        "pid": holder.pid,
        "fence": holder.fence,
        "lease_ttl": round(pttl / 1000, 3) if pttl >= 0 else None,
        # led this long at its last tick, plus the time since that tick
        "leading_for": round(beat.heartbeat.leading_for + beat.age, 1) if beat else None,
        "heartbeat_age": round(beat.age, 3) if beat else None,
    }


def _json_or_raw(raw: str | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"unreadable": raw[:200]}


def _reconcile_text(data: Any) -> str:
    if not isinstance(data, dict):
        return "-"
    if "unreadable" in data:
        return f"unreadable: {data['unreadable']!r}"
    counts = ", ".join(
        f"{k} {data.get(k, 0)}" for k in ("created", "updated", "removed", "unchanged", "conflicts")
    )
    errors = data.get("errors") or []
    text = f"{data.get('source', '?')}: {counts}, errors {len(errors)} at {data.get('at', '?')}"
    if data.get("complete") is False:
        text += " (incomplete load: nothing removed)"
    held = data.get("removals_held")
    if held:
        text += f"; removals held: {held} (safe-redbeat sync --allow-removals)"
    return text


def _reconcile_short(data: Any, now: datetime) -> str:
    """One shard's last reconcile in a table cell: ``loader 4.2s ago``, plus problems."""
    if not isinstance(data, dict):
        return "-"
    if "unreadable" in data:
        return "unreadable"
    try:
        at = datetime.fromisoformat(str(data.get("at")))
        text = f"{data.get('source', '?')} {seconds((now - at).total_seconds())} ago"
    except (TypeError, ValueError):
        text = f"{data.get('source', '?')} at {data.get('at', '?')}"
    problems = [f"errors {len(data.get('errors') or [])}"] if data.get("errors") else []
    if data.get("complete") is False:
        problems.append("incomplete")
    if data.get("removals_held"):
        problems.append(f"removals held {data['removals_held']}")
    return ", ".join([text, *problems])


def _shard_holder(shard: dict[str, Any]) -> tuple[str, object]:
    leader = shard["leader"]
    if shard["retired"]:
        return "retired", "-"
    if leader is None:
        return "none", "-"
    if leader["fence"] is None:
        return leader["instance"] + " (not a safe_redbeat lease)", "-"
    return leader["instance"], leader["fence"]


def _format_shards(status: dict[str, Any]) -> list[str]:
    layout = status["layout"]
    moving = layout["moving_to"] is not None
    shards = status["shards"]
    unled = [s["index"] for s in shards if s["leader"] is None]
    described = Layout(Keys("", ""), layout["shards"], layout["moving_to"]).describe()
    lines = [f"Redis:          {status['redis_url']} (prefix {status['key_prefix']!r})"]
    if moving:
        lines.append(
            f"Layout:         {described} (being resharded: no shard is led until the move ends)"
        )
    else:
        lines.append(f"Layout:         {described}")
    led = len(shards) - len(unled)
    lines.append(
        f"Shards:         {led} of {len(shards)} led"
        + (f"; without a leader: {', '.join(map(str, unled))}" if unled else "")
    )
    now = datetime.now(timezone.utc)
    rows: list[tuple[object, ...]] = []
    for shard in shards:
        holder, fence = _shard_holder(shard)
        rows.append(
            (
                shard["index"],
                holder,
                fence,
                seconds(shard["lease_ttl"]),
                shard["entries"],
                shard["pending"],
                shard["dead"],
                seconds(shard["lag"]),
                _reconcile_short(shard["last_reconcile"], now),
            )
        )
    rows.append(
        ("total", "", "", "", status["entries"], status["pending"], status["dead"],
         seconds(status["lag"]), "")
    )  # fmt: skip
    headers = ("SHARD", "LEADER", "FENCE", "LEASE TTL", "ENTRIES", "PENDING", "DEAD", "LAG",
               "LAST RECONCILE")  # fmt: skip
    lines.append(table(headers, rows, "  "))
    replicas = status["replicas"]
    lines.append(f"Replicas:       {len(replicas)} live")
    if replicas:
        replica_rows = [
            (
                r["instance"],
                r["role"],
                ",".join(map(str, r["shards"])) or "-",
                f"{seconds(r['age'])} ago",
                r["host"],
                r["pid"],
            )
            for r in replicas
        ]
        lines.append(
            table(("INSTANCE", "ROLE", "SHARDS", "LAST TICK", "HOST", "PID"), replica_rows, "  ")
        )
    return lines + _shared_lines(replicas)


def format_status(status: dict[str, Any]) -> str:
    if "shards" in status:
        lines = _format_shards(status)
        return "\n".join(lines + _format_counts(status))
    lines = [f"Redis:          {status['redis_url']} (prefix {status['key_prefix']!r})"]
    leader = status["leader"]
    if leader is None:
        lines.append("Leader:         none (the lease is free)")
    else:
        who = leader["instance"]
        if leader["fence"] is None:
            who += " (not a safe_redbeat lease token, e.g. stock RedBeat)"
        else:
            who += f" (host {leader['host']}, pid {leader['pid']})"
        lines += [
            f"Leader:         {who}",
            f"Fence:          {'-' if leader['fence'] is None else leader['fence']}",
            f"Lease TTL:      {seconds(leader['lease_ttl'])}",
            f"Leading for:    {seconds(leader['leading_for'])}",
        ]
    replicas = status["replicas"]
    lines.append(f"Replicas:       {len(replicas)} live")
    if replicas:
        rows = [
            (r["instance"], r["role"], f"{seconds(r['age'])} ago", r["fence"], r["host"], r["pid"])
            for r in replicas
        ]
        lines.append(table(("INSTANCE", "ROLE", "LAST TICK", "FENCE", "HOST", "PID"), rows, "  "))
    lines += _shared_lines(replicas)
    lines += _format_counts(status)
    lines.append(f"Last reconcile: {_reconcile_text(status['last_reconcile'])}")
    return "\n".join(lines)


def _shared_lines(replicas: list[dict[str, Any]]) -> list[str]:
    """A warning per instance name that several live replicas use."""
    shared: dict[str, int] = {}
    for r in replicas:
        if r.get("shared_name"):
            shared[r["instance"]] = shared.get(r["instance"], 0) + 1
    return [
        f"WARNING: {count} live replicas use the instance name {name!r}: give each its own "
        "safe_redbeat_instance_name (or leave it unset)"
        for name, count in sorted(shared.items())
    ]


def _format_counts(status: dict[str, Any]) -> list[str]:
    """Entries, pending, dead letters and what is due next (totals over the shards)."""
    lines = [
        f"Entries:        {status['entries']} ({status['not_scheduled']} will not run again)",
        f"Pending:        {status['pending']} (claimed, not yet published)",
        f"Dead letters:   {status['dead']}"
        + (" (safe-redbeat dead list)" if status["dead"] else ""),
    ]
    due = status["next_due"]
    lines.append("Next due:" if due else "Next due:       nothing scheduled")
    if due:
        due_rows = [
            (
                d["name"],
                d["due"].replace("T", " ").replace("+00:00", " UTC"),
                _due_in(d["due_in"]),
                d.get("state", "-"),
            )
            for d in due
        ]
        lines.append(table(("NAME", "DUE", "IN", "STATE"), due_rows, "  "))
    return lines


def _due_in(value: float) -> str:
    return seconds(value) if value >= 0 else f"overdue {seconds(-value)}"


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    status = collect_status(ctx)
    emit(args.json, status, format_status(status))
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

    Replica check (default): ``instance`` (default ``safe_redbeat_instance_name``) has a
    heartbeat no older than ``max_age``; with ``leader`` it must also hold the lease.
    ``cluster``: the replica named in the lease has such a heartbeat and says it leads.
    """
    limit = default_max_age(ctx.settings) if max_age is None else max_age
    layout = ctx.layout()
    if sharded(layout) and (cluster or leader):
        return _check_shards(ctx, layout, check_replica=not cluster, instance=instance, limit=limit)
    lease = ctx.client.get(ctx.keys.lease)
    holder = None if lease is None else parse_token(str(lease))
    result: dict[str, Any] = {
        "healthy": False,
        "check": "cluster" if cluster else "replica",
        "reason": "",
        "instance": None,
        "role": None,
        "age": None,
        "max_age": limit,
        "redis_reachable": True,
    }
    replicas = list(read_heartbeats(ctx.client, ctx.keys))
    if cluster:
        if holder is None:
            result["reason"] = "no replica holds the lease"
            return result
        result["instance"] = name = holder.name
        if holder.fence is None:
            result["reason"] = f"the lease is held by {holder.describe()}: no heartbeat to check"
            return result
        status = holder_beat(holder, replicas)
    else:
        name, status, problem = this_replica(ctx, replicas, instance)
        result["instance"] = name
        if problem:
            result["reason"] = problem
            return result
    tick = _heartbeat(result, name, status, limit)
    if status is None or tick is None:
        return result
    role = status.heartbeat.role
    if status.age > limit:
        result["reason"] = f"{name} is stuck: {tick}"
    elif (cluster or leader) and role != "leader":
        result["reason"] = f"{name} is a {role}, not the leader; {tick}"
    elif (cluster or leader) and holder_beat(holder, [status]) is None:
        held = "nobody" if holder is None else holder.describe()
        result["reason"] = f"{name} says it leads, but the lease is held by {held}"
    else:
        fence = f" (fence {status.heartbeat.fence})" if role == "leader" else ""
        result.update(healthy=True, reason=f"{name} is the {role}{fence}; {tick}")
    return result


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
        if len(found) > 1:
            where = ", ".join(f"host {r.heartbeat.host} pid {r.heartbeat.pid}" for r in found)
            return (
                name,
                None,
                (
                    f"{len(found)} live replicas use the instance name {name!r} ({where}): give "
                    "each its own safe_redbeat_instance_name"
                ),
            )
        return name, (found[0] if found else None), ""
    host = socket.gethostname()
    found = [r for r in replicas if r.heartbeat.host == host]
    if len(found) > 1:
        names = ", ".join(sorted(r.heartbeat.instance for r in found))
        return (
            host,
            None,
            (
                f"{len(found)} replicas run on host {host} ({names}): name the one to check "
                "with --instance"
            ),
        )
    if found:
        return found[0].heartbeat.instance, found[0], ""
    return host, None, ""


def _check_shards(
    ctx: Context, layout: Layout, *, check_replica: bool, instance: str | None, limit: float
) -> dict[str, Any]:
    """``health --cluster`` (``instance`` None) or ``--role leader`` of a sharded layout.

    Cluster: every shard's lease is held by a replica whose heartbeat is at most ``limit``
    seconds old. Leader: ``instance`` ticks, says it leads, and holds some shard's lease.
    Unhealthy while ``reshard`` moves the schedule: no replica leads then.
    """
    leases = _shard_leases(ctx, layout)
    replicas = list(read_heartbeats(ctx.client, ctx.keys))
    shards = [
        _shard_health(index, holder, holder_beat(holder, replicas), limit)
        for index, holder in enumerate(leases)
    ]
    result: dict[str, Any] = {
        "healthy": False,
        "check": "replica" if check_replica else "cluster",
        "reason": "",
        "instance": None,
        "role": None,
        "age": None,
        "max_age": limit,
        "redis_reachable": True,
        "layout": {"shards": layout.shards, "moving_to": layout.moving_to},
        "shards": shards,
    }
    moving = (
        f"the schedule is being resharded ({layout.describe()}): no shard is led until the "
        "move ends"
    )
    if check_replica:
        name, beat, problem = this_replica(ctx, replicas, instance)
        result["instance"] = name
        if problem:
            result["reason"] = problem
            return result
        return _check_shard_leader(result, name, beat, limit, moving, leases)
    ages = [s["age"] for s in shards if s["age"] is not None]
    result["age"] = max(ages) if ages else None
    if layout.moving:
        result["reason"] = moving
        return result
    bad = [s for s in shards if not s["healthy"]]
    if bad:
        unled = [s["index"] for s in bad if s["leader"] is None]
        parts = [f"shards without a leader: {', '.join(map(str, unled))}"] if unled else []
        parts += [f"shard {s['index']}: {s['reason']}" for s in bad if s["leader"] is not None]
        result["reason"] = f"{len(bad)} of {layout.shards} shards unhealthy; " + "; ".join(parts)
        return result
    by_leader: dict[str, list[int]] = {}
    for s in shards:
        by_leader.setdefault(s["leader"], []).append(s["index"])
    led = ", ".join(f"{name} {indexes}" for name, indexes in sorted(by_leader.items()))
    result.update(
        healthy=True,
        reason=f"all {layout.shards} shards led ({led}); oldest last tick "
        f"{result['age']:.1f}s ago (max {limit:g}s)",
    )
    return result


def _shard_leases(ctx: Context, layout: Layout) -> list[Holder | None]:
    """Each shard's lease holder (None: free or retired), from one pipeline of GETs."""
    with ctx.client.pipeline(transaction=False) as pipe:
        for keys in layout.all_keys():
            pipe.get(keys.lease)
        values = pipe.execute()
    return [
        None if v is None or str(v).startswith(RETIRED) else parse_token(str(v)) for v in values
    ]


def _shard_health(
    index: int, holder: Holder | None, beat: ReplicaStatus | None, limit: float
) -> dict[str, Any]:
    found: dict[str, Any] = {
        "index": index,
        "leader": None,
        "fence": None,
        "age": None,
        "healthy": False,
        "reason": "no leader",
    }
    if holder is None:
        return found
    found.update(leader=holder.name, fence=holder.fence)
    if holder.fence is None:
        found["reason"] = f"the lease is held by {holder.describe()}: no heartbeat to check"
        return found
    if beat is None:
        found["reason"] = f"no heartbeat from its leader {holder.name}"
        return found
    found["age"] = round(beat.age, 3)
    if beat.age > limit:
        found["reason"] = f"its leader {holder.name} is stuck: last tick {beat.age:.1f}s ago"
        return found
    found.update(healthy=True, reason=f"led by {holder.name} (fence {holder.fence})")
    return found


def _check_shard_leader(
    result: dict[str, Any],
    name: str,
    status: ReplicaStatus | None,
    limit: float,
    moving: str,
    leases: list[Holder | None],
) -> dict[str, Any]:
    """``health --role leader`` of a sharded layout: ``name`` leads one shard or more."""
    tick = _heartbeat(result, name, status, limit)
    if status is None or tick is None:
        return result
    role = status.heartbeat.role
    held = [i for i, holder in enumerate(leases) if holder_beat(holder, [status]) is not None]
    count = len(result["shards"])
    if status.age > limit:
        result["reason"] = f"{name} is stuck: {tick}"
    elif result["layout"]["moving_to"] is not None:
        result["reason"] = f"{moving}; {tick}"
    elif role != "leader" or not held:
        result["reason"] = f"{name} leads no shard of {count}; {tick}"
    else:
        result.update(healthy=True, reason=f"{name} leads shards {held} of {count}; {tick}")
    return result


def _heartbeat(
    result: dict[str, Any], name: str, status: ReplicaStatus | None, limit: float
) -> str | None:
    """Put ``name``'s heartbeat (role, age) in ``result``; the "last tick" text, or None
    (and the reason in ``result``) if it has none."""
    if status is None:
        result["reason"] = f"no heartbeat from {name} (not running, or silent for too long)"
        return None
    result.update(role=status.heartbeat.role, age=round(status.age, 3))
    return f"last tick {status.age:.1f}s ago (max {limit:g}s)"


def cmd_health(ctx: Context, args: argparse.Namespace) -> int:
    try:
        result = check_health(
            ctx,
            instance=args.instance,
            leader=args.role == "leader",
            cluster=args.cluster,
            max_age=args.max_age,
        )
    except (RedisConnectionError, RedisTimeoutError) as exc:
        if not args.redis_down_ok:
            raise
        result = {
            "healthy": True,
            "check": "cluster" if args.cluster else "replica",
            "reason": redis_error(exc, ctx.url).message + " (ignored: --redis-down-ok)",
            "instance": None if args.cluster else args.instance or ctx.settings.instance_name,
            "role": None,
            "age": None,
            "max_age": args.max_age or default_max_age(ctx.settings),
            "redis_reachable": False,
        }
    word = "OK" if result["healthy"] else "UNHEALTHY"
    emit(args.json, result, f"{word}: {result['reason']}")
    return EXIT_OK if result["healthy"] else EXIT_UNHEALTHY
