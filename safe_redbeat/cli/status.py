"""``status`` (who leads, replicas, entries, what is due) and ``health`` (for probes).

Both read only: the lease key, the replica heartbeats (``heartbeat.py``; a heartbeat's
age comes from its key's TTL, so no clock of any replica is involved), the schedule ZSET,
the pending hash and the leader's last reconcile summary.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import Settings
from ..heartbeat import ReplicaStatus, read_heartbeat, read_heartbeats
from ..lease import parse_token
from .context import EXIT_OK, EXIT_UNHEALTHY, Context, redis_error
from .output import emit, iso, seconds, table

__all__ = ["check_health", "cmd_health", "cmd_status", "collect_status", "default_max_age"]

#: How many of the next due entries ``status`` shows.
NEXT_DUE = 10


def collect_status(ctx: Context) -> dict[str, Any]:
    """The ``status --json`` object."""
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
        (secs, micros), lease, lease_pttl, entries, due, pending, dead, reconcile = pipe.execute()
    now = secs + micros / 1e6
    replicas = list(read_heartbeats(client, keys))
    return {
        "redis_url": ctx.url,
        "key_prefix": keys.prefix,
        "leader": _leader(lease, lease_pttl, replicas),
        "replicas": [
            {
                "instance": r.heartbeat.instance,
                "role": r.heartbeat.role,
                "age": round(r.age, 3),
                "fence": r.heartbeat.fence,
                "leading_for": r.heartbeat.leading_for,
                "host": r.heartbeat.host,
                "pid": r.heartbeat.pid,
            }
            for r in replicas
        ],
        "entries": int(entries),
        "pending": int(pending),
        "dead": int(dead),
        "next_due": [
            {
                "name": keys.name_of(key),
                "due": iso(datetime.fromtimestamp(score, tz=timezone.utc)),
                "due_in": round(score - now, 1),
            }
            for key, score in due
        ],
        "last_reconcile": _json_or_raw(reconcile),
    }


def _leader(lease: str | None, pttl: int, replicas: list[ReplicaStatus]) -> dict[str, Any] | None:
    if lease is None:
        return None
    holder = parse_token(str(lease))
    beat = next(
        (
            r
            for r in replicas
            if holder.fence is not None
            and r.heartbeat.instance == holder.name
            and r.heartbeat.role == "leader"
        ),
        None,
    )
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


def format_status(status: dict[str, Any]) -> str:
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
    lines += [
        f"Entries:        {status['entries']}",
        f"Pending:        {status['pending']} (claimed, not yet published)",
        f"Dead letters:   {status['dead']}"
        + (" (safe-redbeat dead list)" if status["dead"] else ""),
    ]
    due = status["next_due"]
    lines.append("Next due:" if due else "Next due:       nothing scheduled")
    if due:
        due_rows = [
            (d["name"], d["due"].replace("T", " ").replace("+00:00", " UTC"), _due_in(d["due_in"]))
            for d in due
        ]
        lines.append(table(("NAME", "DUE", "IN"), due_rows, "  "))
    lines.append(f"Last reconcile: {_reconcile_text(status['last_reconcile'])}")
    return "\n".join(lines)


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
    if cluster:
        if holder is None:
            result["reason"] = "no replica holds the lease"
            return result
        result["instance"] = name = holder.name
        if holder.fence is None:
            result["reason"] = f"the lease is held by {holder.describe()}: no heartbeat to check"
            return result
    else:
        result["instance"] = name = instance or ctx.settings.instance_name
    status = read_heartbeat(ctx.client, ctx.keys, name)
    if status is None:
        result["reason"] = f"no heartbeat from {name} (not running, or silent for too long)"
        return result
    role = status.heartbeat.role
    result.update(role=role, age=round(status.age, 3))
    tick = f"last tick {status.age:.1f}s ago (max {limit:g}s)"
    if status.age > limit:
        result["reason"] = f"{name} is stuck: {tick}"
    elif (cluster or leader) and role != "leader":
        result["reason"] = f"{name} is a {role}, not the leader; {tick}"
    elif (cluster or leader) and (holder is None or holder.name != name):
        held = "nobody" if holder is None else holder.describe()
        result["reason"] = f"{name} says it leads, but the lease is held by {held}"
    else:
        fence = f" (fence {status.heartbeat.fence})" if role == "leader" else ""
        result.update(healthy=True, reason=f"{name} is the {role}{fence}; {tick}")
    return result


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
