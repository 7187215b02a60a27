"""``durable schedules ...``: list, pause, resume, delete, trigger and backfill stored schedules.

Registered on the ``durable`` group by cli.py; the same commands under ``celery -A proj durable``
and ``celery-durable --database-url URL``, each with ``--json``.
"""

from __future__ import annotations

import datetime

import click

from .cli import DurableGroup, _command, _Out, _table, durable
from .client import Client
from .flow_schedule import ScheduleInfo


@durable.group(name="schedules", cls=DurableGroup)
def schedules() -> None:
    """Stored schedules: list, pause, resume, delete, trigger, backfill."""


def _when(value: datetime.datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _row(info: ScheduleInfo) -> list[str]:
    state = "paused" if info.paused else "active"
    return [info.name, info.workflow, info.schedule, info.overlap, state, _when(info.next_tick), info.last_run or "-"]


def _instant(text: str, option: str) -> datetime.datetime:
    """An ISO-8601 time; without a timezone it is UTC."""
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option} is not an ISO-8601 time: {text!r} (e.g. 2026-01-01T09:00:00Z)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.timezone.utc)


@_command(schedules, "list")
def list_schedules(client: Client, out: _Out) -> None:
    """List stored schedules, by name."""
    infos = client.list_schedules()
    out.emit(
        [info.to_dict() for info in infos],
        _table(("NAME", "WORKFLOW", "SCHEDULE (UTC)", "OVERLAP", "STATE", "NEXT TICK (UTC)", "LAST RUN"), [_row(i) for i in infos]),
    )


@_command(schedules, "pause")
@click.argument("name")
def pause(client: Client, out: _Out, name: str) -> None:
    """Start no more ticks of a schedule until it is resumed."""
    info = client.pause_schedule(name)
    out.emit(info.to_dict(), f"schedule {name} is paused")


@_command(schedules, "resume")
@click.argument("name")
def resume(client: Client, out: _Out, name: str) -> None:
    """Start a paused schedule's ticks again, from the next one."""
    info = client.resume_schedule(name)
    out.emit(info.to_dict(), f"schedule {name} is active; next tick {_when(info.next_tick)} UTC")


@_command(schedules, "delete")
@click.argument("name")
def delete(client: Client, out: _Out, name: str) -> None:
    """Forget a schedule (its runs are left alone; code that registers it stores it again)."""
    client.delete_schedule(name)
    out.emit({"name": name, "deleted": True}, f"schedule {name} deleted")


@_command(schedules, "trigger")
@click.argument("name")
def trigger(client: Client, out: _Out, name: str) -> None:
    """Start one run of a schedule now, outside its ticks."""
    handle = client.trigger_schedule(name)
    out.emit({"name": name, "workflow_id": handle.workflow_id}, f"started {handle.workflow_id}")


@_command(schedules, "backfill")
@click.argument("name")
@click.option("--start", "start", required=True, help="first tick time, ISO-8601 (UTC unless it says otherwise)")
@click.option("--end", "end", required=True, help="last tick time, ISO-8601")
def backfill(client: Client, out: _Out, name: str, start: str, end: str) -> None:
    """Start the run of every tick of a schedule in [start, end] (idempotent: a tick keeps its run)."""
    handles = client.backfill_schedule(name, _instant(start, "--start"), _instant(end, "--end"))
    ids = [h.workflow_id for h in handles]
    out.emit({"name": name, "workflow_ids": ids}, [f"{len(ids)} tick(s) of {name}:", *ids])
