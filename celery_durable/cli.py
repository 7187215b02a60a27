"""The ``durable`` command: ``celery -A proj durable <command>``, or ``celery-durable --database-url URL <command>``.

One click group serves both. Under ``celery -A proj`` (registered through the ``celery.commands``
entry point, as Flower is) it uses the :class:`~celery_durable.Durable` created for the app
(:meth:`Durable.of`). Standalone, or with ``--database-url``, it uses a
:class:`~celery_durable.DurableClient` on the database (and ``--broker-url`` to publish).

Every command takes ``--json`` for machine-readable output (``send``, whose ``--json`` is the
message, takes it before the command: ``durable --json send ...``). Exit status 0 on success;
1 with one line on stderr for an unknown id or bad input.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from celery.bin.base import CeleryCommand
from click.core import ParameterSource

from .client import ENV_URL, Client, DurableClient
from .errors import DurableError
from .store import StepRecord, WorkflowRecord, WorkflowStatus
from .store.records import error_summary
from .store.schema import LATEST_VERSION

F = TypeVar("F", bound=Callable[..., Any])
_SESSION = "celery_durable.cli"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UserError(click.ClickException):
    """A mistake in what was asked (unknown id, bad value): one line on stderr, exit status 1."""

    def __init__(self, message: str) -> None:
        lines = str(message).strip().splitlines() or ["error"]
        super().__init__(lines[0])


class DurableGroup(click.Group):
    """Turns usage errors (its own and its commands') into one line and exit status 1, like every other user error."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise UserError(exc.format_message()) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise UserError(exc.format_message()) from None


# -- the client behind the commands ---------------------------------------------------------------
@dataclasses.dataclass
class _Session:
    ctx: click.Context
    database_url: str | None
    broker_url: str | None
    options: dict[str, Any]
    as_json: bool
    client: Client | None = None

    def get(self) -> Client:
        if self.client is None:
            self.client = self._open()
        return self.client

    def _open(self) -> Client:
        app = getattr(self.ctx.find_root().obj, "app", None)  # celery's CLIContext under `celery -A proj`
        explicit_url = self.ctx.get_parameter_source("database_url") == ParameterSource.COMMANDLINE
        if app is not None and not explicit_url:
            from .integration import Durable

            try:
                return Durable.of(app, self.options.get("table_prefix"))
            except DurableError:
                pass  # an app without a Durable: use the database options, as standalone
        if not self.database_url:
            raise UserError(
                f"no store to open: pass --database-url URL or set ${ENV_URL} "
                "(or run `celery -A proj durable ...` for an app with a Durable)"
            )
        creating = self.ctx.invoked_subcommand == "migrate"
        if not creating:
            _refuse_missing_sqlite_file(self.database_url)
        # Under `celery -A proj`, publish through that app (its routing applies) unless a broker is named.
        given_app = self.ctx.find_root().params.get("app") is not None
        celery_app = app if given_app and self.broker_url is None else None
        options = self.options if creating else {**self.options, "auto_migrate": False}
        client = DurableClient(self.database_url, self.broker_url, celery_app=celery_app, **options)
        self.ctx.call_on_close(client.close)
        if not creating:
            # A read or an operation never creates the tables: an empty database is a wrong URL or prefix.
            version = client.store.schema_version()
            if version == 0:
                raise UserError(
                    f"no workflows in {client.store_location}: it has no celery_durable tables with prefix "
                    f"{client.config.table_prefix!r} (check --database-url and --prefix, or run `migrate` first)"
                )
            if version < LATEST_VERSION:
                client.migrate()  # an older schema is upgraded, as a Durable does
        return client


def _refuse_missing_sqlite_file(url: str) -> None:
    """SQLite creates a file it is asked to open: a command that only reads or operates must not."""
    import sqlalchemy as sa

    try:
        parsed = sa.make_url(url)
    except Exception:
        return  # open_store says what is wrong with it
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).resolve()
        if not path.exists():
            raise UserError(
                f"no SQLite store at {path} (nothing was created): check --database-url / ${ENV_URL}, "
                "or create it with `celery-durable --database-url URL migrate`"
            )


def _session(ctx: click.Context) -> _Session:
    session: _Session = ctx.meta[_SESSION]
    return session


def _user_errors(fn: F) -> F:
    """Report a DurableError or bad value as one line (exit 1), never as a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (DurableError, ValueError, OSError) as exc:
            raise UserError(str(exc)) from None
        except Exception as exc:
            if type(exc).__module__.startswith("sqlalchemy"):  # database unreachable or refused us
                raise UserError(f"database error: {exc}") from None
            raise

    return wrapper  # type: ignore[return-value]


def _command(group: click.Group, name: str, json_flag: bool = True) -> Callable[[F], click.Command]:
    """Register a subcommand: Celery's command class, --json, the client as first argument, one-line errors."""

    def decorator(fn: F) -> click.Command:
        @functools.wraps(fn)
        @click.pass_context
        def callback(ctx: click.Context, *args: Any, **kwargs: Any) -> None:
            session = _session(ctx)
            as_json = kwargs.pop("as_json", False) or session.as_json
            out = _Out(as_json)
            _user_errors(fn)(session.get(), out, *args, **kwargs)

        if json_flag:
            callback = click.option("--json", "as_json", is_flag=True, help="machine-readable output")(callback)
        return group.command(name, cls=CeleryCommand)(callback)

    return decorator


class _Out:
    """Prints either text or one JSON document."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, text: str | Sequence[str]) -> None:
        if self.as_json:
            click.echo(json.dumps(data, default=str))
        else:
            click.echo(text if isinstance(text, str) else "\n".join(text))


# -- formatting -----------------------------------------------------------------------------------------
def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    if not rows:
        return ["(none)"]
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    return [line(headers), *(line(r) for r in cells)]


def parse_duration(text: str, option: str = "duration") -> float:
    """``90``, ``30s``, ``15m``, ``2h``, ``30d``, ``1w`` -> seconds; *option* names the option in the error."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{option} is not a duration: {text!r} (use e.g. 90, 30s, 15m, 2h, 30d, 1w)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _decoded(client: Client, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return client.serializer.loads(text)
    except Exception:
        return text  # written with another serializer: show it as stored


def _workflow_json(client: Client, record: WorkflowRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["status"] = record.status.value
    data["inputs"] = _decoded(client, record.inputs)
    data["output"] = _decoded(client, record.output)
    data["error"] = json.loads(record.error) if record.error else None
    data["error_summary"] = record.error_summary
    return data


def _step_json(client: Client, step: StepRecord) -> dict[str, Any]:
    data = dataclasses.asdict(step)
    data["output"] = _decoded(client, step.output)
    data["error"] = json.loads(step.error) if step.error else None
    data["error_summary"] = error_summary(step.error)
    data["duration"] = step.ended_at - step.started_at
    return data


def _step_rows(client: Client, steps: Sequence[StepRecord]) -> list[list[Any]]:
    rows = []
    for s in steps:
        if s.error is not None:
            result = f"error: {error_summary(s.error)}"
        elif s.kind == "send":
            result = "sent"
        elif s.output is None and s.kind in ("recv", "event", "sleep"):
            result = "timed out" if s.kind != "sleep" else "slept"
        else:
            result = _short(_decoded(client, s.output))
        rows.append([s.step_id, s.kind, _short(s.name, 50), _when(s.started_at), _duration(s.ended_at - s.started_at), result])
    return rows


_STEP_HEADERS = ("STEP", "KIND", "NAME", "STARTED (UTC)", "TOOK", "RESULT")


# -- the group ----------------------------------------------------------------------------------------
@click.group(name="durable", cls=DurableGroup)
@click.option(
    "--database-url",
    envvar=ENV_URL,
    help=f"the store (default: the app's Durable under `celery -A proj`, else ${ENV_URL}; required otherwise)",
)
@click.option(
    "--broker-url",
    envvar="CELERY_DURABLE_BROKER_URL",
    help="broker to publish on with --database-url (without one, the workers' sweep picks the work up)",
)
@click.option("--prefix", "table_prefix", help="table prefix (default durable_)")
@click.option("--queue", help="queue for workflows stored without one")
@click.option("--serializer", type=click.Choice(["json", "pickle"]), help="the workers' serializer (default json)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output for every command")
@click.pass_context
def durable(
    ctx: click.Context,
    database_url: str | None,
    broker_url: str | None,
    table_prefix: str | None,
    queue: str | None,
    serializer: str | None,
    as_json: bool,
    **_preload: Any,
) -> None:
    """Inspect and operate durable workflows: list, show, send, cancel, resume, fork, prune..."""
    options = {"table_prefix": table_prefix, "queue": queue, "serializer": serializer}
    ctx.meta[_SESSION] = _Session(
        ctx, database_url, broker_url, {k: v for k, v in options.items() if v is not None}, as_json
    )


@_command(durable, "list")
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in WorkflowStatus], case_sensitive=False))
@click.option("--name", help="exact workflow (task) name")
@click.option("--id-prefix", help="ids starting with this")
@click.option("--since", help="created within this long (e.g. 2h, 30m, 7d)")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def list_(
    client: Client, out: _Out, statuses: tuple[str, ...], name: str | None, id_prefix: str | None, since: str | None, limit: int
) -> None:
    """List workflows, newest first."""
    records = client.list_workflows(
        [s.upper() for s in statuses] or None,
        name,
        id_prefix=id_prefix,
        created_after=None if since is None else time.time() - parse_duration(since, "--since"),
        limit=limit,
    )
    rows = [
        [r.workflow_id, r.status.value, r.name, _when(r.created_at), _when(r.updated_at), r.error_summary or ""]
        for r in records
    ]
    out.emit(
        [_workflow_json(client, r) for r in records],
        _table(("WORKFLOW ID", "STATUS", "NAME", "CREATED (UTC)", "UPDATED (UTC)", "ERROR"), rows),
    )


@_command(durable, "show")
@click.argument("workflow_id")
def show(client: Client, out: _Out, workflow_id: str) -> None:
    """Everything about one workflow: status, inputs, result or error, steps, messages, events, wait."""
    record = client.management.get(workflow_id)
    steps = client.list_steps(workflow_id)
    pending = [m for m in client.list_messages(workflow_id) if not m.consumed]
    events = client.get_events(workflow_id)
    children = client.list_workflows(parent_id=workflow_id, limit=1000)
    data = _workflow_json(client, record)
    data.update(
        steps=[_step_json(client, s) for s in steps],
        pending_messages=[dataclasses.asdict(m) for m in pending],
        events=events,
        children=[c.workflow_id for c in children],
    )
    lines = [
        f"workflow     {record.workflow_id}",
        f"name         {record.name}",
        f"status       {record.status.value}",
        f"version      {record.version or '-'}",
        f"created      {_when(record.created_at)} UTC   updated {_when(record.updated_at)} UTC",
        f"executions   {record.executions}",
        f"inputs       {_short(data['inputs'], 200)}",
    ]
    if record.flow_key is not None:  # concurrency limit (flow_concurrency.py)
        queued = ", waiting for a slot" if record.status == WorkflowStatus.ENQUEUED else ""
        lines.append(f"concurrency  key {record.flow_key}, priority {record.priority or 0}{queued}")
    if record.status == WorkflowStatus.SUCCESS:
        lines.append(f"result       {_short(data['output'], 200)}")
    if record.error is not None:
        lines.append(f"error        {record.error_summary}")
        trace = str(data["error"].get("traceback", "")).rstrip().splitlines()
        lines += [f"             {t}" for t in trace[-6:]]
    if record.wait_kind is not None:
        what = {"recv": "a message on", "event": "event", "sleep": "the end of a sleep"}.get(record.wait_kind, record.wait_kind)
        topics = ", ".join(repr(t or None) for t in record.wait_topics or ())
        target = f" of {record.wait_target}" if record.wait_kind == "event" else ""
        lines.append(f"waiting for  {what} {topics}{target} (step {record.wait_step}), deadline {_when(record.deadline)}")
    if record.timeout_at is not None:
        lines.append(f"timeout at   {_when(record.timeout_at)} UTC")
    lines.append(f"parent       {record.parent_id or '-'}")
    if record.forked_from:
        lines.append(f"forked from  {record.forked_from} at step {record.forked_from_step}")
    # A fan-out may have thousands of children: name the first few and count them by status.
    shown = ", ".join(c.workflow_id for c in children[-10:][::-1])  # the list is newest first
    more = len(children) - min(len(children), 10)
    by_status = collections.Counter(c.status.value for c in children)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
    total = f"{len(children)}{'+' if len(children) == 1000 else ''}"
    summary = f"{shown}{f' and {more} more' if more else ''} ({total}: {counts})" if children else "-"
    lines.append(f"children     {summary}")
    lines += ["", "steps:", *("  " + x for x in _table(_STEP_HEADERS, _step_rows(client, steps)))]
    message_rows = [[m.seq, m.topic or "-", _when(m.sent_at), _short(m.payload)] for m in pending]
    lines += ["", "pending messages:", *("  " + x for x in _table(("SEQ", "TOPIC", "SENT (UTC)", "PAYLOAD"), message_rows))]
    lines += ["", "events:", *(f"  {k} = {_short(v)}" for k, v in events.items())] if events else ["", "events: (none)"]
    out.emit(data, lines)


@_command(durable, "steps")
@click.argument("workflow_id")
def steps(client: Client, out: _Out, workflow_id: str) -> None:
    """A workflow's checkpoints, in step order, with their durations."""
    client.management.get(workflow_id)
    records = client.list_steps(workflow_id)
    out.emit([_step_json(client, s) for s in records], _table(_STEP_HEADERS, _step_rows(client, records)))


@_command(durable, "messages")
@click.argument("workflow_id")
def messages(client: Client, out: _Out, workflow_id: str) -> None:
    """Messages sent to a workflow, oldest first, and whether each was received."""
    records = client.list_messages(workflow_id)
    if not records:
        client.management.get(workflow_id)  # an unknown id is an error; a mailbox or a quiet workflow is not
    rows = [[m.seq, m.topic or "-", _when(m.sent_at), _when(m.consumed_at) if m.consumed else "no", _short(m.payload)] for m in records]
    out.emit(
        [{**dataclasses.asdict(m), "consumed": m.consumed} for m in records],
        _table(("SEQ", "TOPIC", "SENT (UTC)", "RECEIVED (UTC)", "PAYLOAD"), rows),
    )


@_command(durable, "send", json_flag=False)
@click.argument("workflow_id")
@click.option("--topic", help="topic (default: the default topic)")
@click.option("--json", "json_text", metavar="TEXT", help="the message, as JSON text")
@click.option("--data", metavar="@FILE", help="the message, as JSON read from @FILE (or - for stdin)")
@click.option("--idempotency-key", help="a repeated key delivers once")
def send(
    client: Client, out: _Out, workflow_id: str, topic: str | None, json_text: str | None, data: str | None, idempotency_key: str | None
) -> None:
    """Send a JSON message to a workflow (and wake it if it waits on that topic)."""
    if (json_text is None) == (data is None):
        raise ValueError("give the message with exactly one of --json TEXT or --data @FILE")
    if data is not None:
        if data == "-":
            json_text = sys.stdin.read()
        elif data.startswith("@"):
            json_text = Path(data[1:]).read_text()
        else:
            raise ValueError(f"--data takes @FILE or -, got {data!r} (for inline JSON use --json)")
    assert json_text is not None
    try:
        message = json.loads(json_text)
    except ValueError as exc:
        raise ValueError(f"the message is not valid JSON: {exc}") from None
    client.send(workflow_id, message, topic, idempotency_key=idempotency_key)
    out.emit({"workflow_id": workflow_id, "topic": topic, "sent": True}, f"sent to {workflow_id}" + (f" on {topic!r}" if topic else ""))


@_command(durable, "cancel")
@click.argument("workflow_id")
def cancel(client: Client, out: _Out, workflow_id: str) -> None:
    """Cancel a workflow that has not finished."""
    status = client.cancel(workflow_id)
    out.emit({"workflow_id": workflow_id, "status": status.value}, f"{workflow_id} is {status.value}")


@_command(durable, "resume")
@click.argument("workflow_id")
def resume(client: Client, out: _Out, workflow_id: str) -> None:
    """Run a CANCELLED or failed workflow again from its checkpoints, with the current code."""
    status = client.resume(workflow_id).status()
    out.emit({"workflow_id": workflow_id, "status": status.value}, f"{workflow_id} is {status.value}")


@_command(durable, "fork")
@click.argument("workflow_id")
@click.option("--from-step", "start_step", type=int, required=True, help="first step to run again")
@click.option("--new-id", help="id of the new workflow (default: a new uuid)")
def fork(client: Client, out: _Out, workflow_id: str, start_step: int, new_id: str | None) -> None:
    """Start a copy of a workflow that runs again from a step, keeping the checkpoints before it."""
    handle = client.fork(workflow_id, start_step, new_workflow_id=new_id)
    status = handle.status()
    out.emit(
        {"workflow_id": handle.workflow_id, "forked_from": workflow_id, "forked_from_step": start_step, "status": status.value},
        f"{handle.workflow_id} forked from {workflow_id} at step {start_step}; it is {status.value}",
    )


@_command(durable, "recover")
def recover(client: Client, out: _Out) -> None:
    """Publish every workflow that should be moving but has no live task message."""
    if isinstance(client, DurableClient) and not client.can_publish:
        raise ValueError("recover publishes task messages: pass --broker-url, or run `celery -A proj durable recover`")
    count = client.recover()
    out.emit({"published": count}, f"published {count} workflow(s)")


@_command(durable, "migrate")
def migrate(client: Client, out: _Out) -> None:
    """Create or upgrade the schema."""
    version = client.migrate()
    out.emit({"schema_version": version}, f"schema at version {version}")


@_command(durable, "prune")
@click.option("--older-than", required=True, help="finished workflows not updated for this long (e.g. 30d, 12h)")
def prune(client: Client, out: _Out, older_than: str) -> None:
    """Delete finished workflows (with their steps, messages and events) older than a duration."""
    count = client.prune(parse_duration(older_than, "--older-than"))
    out.emit({"deleted": count}, f"deleted {count} workflow(s)")


@_command(durable, "dashboard", json_flag=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8555, show_default=True)
@click.option("--allow-actions", is_flag=True, help="show cancel and resume buttons")
def dashboard(client: Client, out: _Out, host: str, port: int, allow_actions: bool) -> None:
    """Serve a web view of the workflows (needs the dashboard extra; see docs/dashboard.md)."""
    try:
        from .dashboard import serve
    except ImportError as exc:
        raise ValueError(f"the dashboard needs the dashboard extra: pip install 'celery-durable[dashboard]' ({exc})") from None
    serve(client, host=host, port=port, allow_actions=allow_actions)


from . import cli_schedules  # noqa: E402, F401 - registers `durable schedules ...` on the group above


def main(argv: Sequence[str] | None = None) -> None:
    """The ``celery-durable`` entry point: the same commands without a Celery app."""
    durable.main(args=list(argv) if argv is not None else None, prog_name="celery-durable")


if __name__ == "__main__":
    main()
