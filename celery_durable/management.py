"""Operations on workflows from outside them: start by name, send, cancel, resume, fork, listings, prune.

``send`` and ``get_event`` work in workflow bodies too: they check their arguments here and, in a
body (``core.workflow_body()``), hand the operation to workflow_api.py, where the in-workflow API lives.

No Celery here. :class:`Management` works on a :class:`~celery_durable.core.Engine` (its store,
serializer, configuration, clock and ``publish`` callback), so ``Durable`` (publishing through
its Celery app) and ``DurableClient`` (through a bare Celery app by task name, or leaving the
work to the sweep) run the very same code.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

from . import core, workflow_api
from . import validation as v
from .errors import DuplicateWorkflow, InvalidArgument, WorkflowConflict, WorkflowNotFound
from .handle import decode_result
from .serialization import check_stored_text
from .store import Dispatch, FlowLimit, MessageRecord, StepRecord, WorkflowRecord, WorkflowStatus

PRUNE_BATCH = 500
ON_CONFLICT = ("return_existing", "raise")


def check_dedup(dedup_key: Any, on_conflict: Any) -> tuple[str | None, str]:
    """Check ``start``'s *dedup_key* (a name, or None) and *on_conflict* (one of ``ON_CONFLICT``)."""
    if on_conflict not in ON_CONFLICT:
        raise InvalidArgument(
            f"on_conflict must be one of {', '.join(repr(c) for c in ON_CONFLICT)}, got {v.shown(on_conflict)}"
        )
    return (None if dedup_key is None else core.check_id(dedup_key, "dedup_key")), on_conflict


class Management:
    """The operations a producer or an operator calls, on an engine's store."""

    def __init__(self, engine: core.Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self.serializer = engine.serializer
        self.config = engine.config

    # -- starting ---------------------------------------------------------------------------------------
    def create(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        workflow_id: str | None,
        queue: str | None,
        timeout: float | None,
        version: str | None,
        parent_id: str | None,
        task_options: str | None = None,
        dedup_key: str | None = None,
        on_conflict: str = "return_existing",
        flow: FlowLimit | None = None,
    ) -> tuple[WorkflowRecord, bool]:
        """Store a new PENDING workflow (or find it: the id is an idempotency key); return it and whether it is new.

        Every start goes through here; the caller publishes the first task message of a new one.
        *timeout* fixes the workflow's own deadline at ``now + timeout``; *task_options* is the task
        system's opaque text, given back with the record (Celery: the start's canvas). While an
        unfinished workflow of *name* holds *dedup_key*, it is returned instead (*on_conflict*
        ``"return_existing"``) or ``DuplicateWorkflow`` is raised (``"raise"``).
        system's opaque text, given back with the record (Celery: the start's canvas). *flow* (a
        concurrency limit, flow_concurrency.py) decides admission with the insert: an ENQUEUED record
        gets no message from the caller.
        """
        core.check_id(name, "workflow name")
        dedup_key, on_conflict = check_dedup(dedup_key, on_conflict)
        workflow_id = core.check_id(workflow_id) if workflow_id is not None else str(uuid.uuid4())
        seconds = core.check_timeout(timeout)
        try:
            inputs = check_stored_text(self.serializer.dumps({"args": list(args), "kwargs": kwargs}), "the arguments")
        except Exception as exc:
            raise type(exc)(f"cannot start workflow {name!r}: its arguments are not serializable: {exc}") from None
        engine = self.engine
        now = engine.clock()
        record, created = self.store.create_workflow(
            workflow_id,
            name,
            inputs,
            queue,
            now,
            version=version,
            parent_id=parent_id,
            timeout_at=None if seconds is None else now + seconds,
            trace_context=engine.observers.start_context(name, workflow_id) if engine.observers else None,  # observer hook
            task_options=task_options,
            dedup_key=dedup_key,
            **({"flow": flow} if flow is not None else {}),  # hook (concurrency): no change without a limit
        )
        if not created and record.workflow_id != workflow_id and on_conflict == "raise":
            raise DuplicateWorkflow(
                f"workflow {name!r} with dedup_key {dedup_key!r} is already active: {record.workflow_id!r} "
                f"({record.status.value}); it was not started again"
            )
        if not created and record.name != name:
            raise WorkflowConflict(
                f"workflow id {workflow_id!r} is already used by workflow {record.name!r}, not {name!r}"
            )
        return record, created

    def start(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        workflow_id: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        version: str | None = None,
        parent_id: str | None = None,
        dedup_key: str | None = None,
        on_conflict: str = "return_existing",
    ) -> WorkflowRecord:
        """:meth:`create`, then publish the new workflow's first message by its task name."""
        record, created = self.create(
            name,
            args,
            kwargs,
            workflow_id=workflow_id,
            queue=queue or self.config.queue,
            timeout=timeout,
            version=version,
            parent_id=parent_id,
            dedup_key=dedup_key,
            on_conflict=on_conflict,
        )
        if created:
            self.engine.publish_all([Dispatch(record.workflow_id, record.name, record.queue, record.ticket)])
        return record

    # -- reading ------------------------------------------------------------------------------------------
    def get(self, workflow_id: str) -> WorkflowRecord:
        """Return the workflow's record; an unknown id raises ``WorkflowNotFound``."""
        record = self.store.get_workflow(core.check_id(workflow_id))
        if record is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
        return record

    def decode_result(self, record: WorkflowRecord) -> Any:
        return decode_result(record, self.serializer.loads)

    def list_workflows(
        self, status: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None, name: str | None, **filters: Any
    ) -> list[WorkflowRecord]:
        """Check the filters of ``Client.list_workflows`` and run the query."""
        limit = v.check_limit(filters.pop("limit", 100))
        offset = v.check_count(filters.pop("offset", 0), "offset")
        for what in ("created_after", "created_before"):
            filters[what] = v.check_timestamp(filters.get(what), what)
        for what in ("id_prefix", "parent_id", "version"):
            filters[what] = v.check_name_filter(filters.get(what), what)
        name = v.check_name_filter(name)
        return self.store.list_workflows(v.check_statuses(status), name, limit=limit, offset=offset, **filters)

    def list_steps(self, workflow_id: str) -> list[StepRecord]:
        return self.store.list_steps(core.check_id(workflow_id))

    def list_messages(self, workflow_id: str) -> list[MessageRecord]:
        loads = self.serializer.loads
        return [
            MessageRecord(m.workflow_id, m.seq, m.topic, loads(m.payload), m.sent_at, m.consumed_at, m.idempotency_key)
            for m in self.store.list_messages(core.check_id(workflow_id))
        ]

    def get_events(self, workflow_id: str) -> dict[str, Any]:
        loads = self.serializer.loads
        return {key: loads(value) for key, value in self.store.get_events(core.check_id(workflow_id)).items()}

    def get_event(self, workflow_id: str, key: str, timeout: float | None, default: Any) -> Any:
        core.check_id(workflow_id)
        core.check_id(key, "event key")
        seconds = core.check_timeout(timeout)
        ctx = core.workflow_body()
        if ctx is not None:
            return workflow_api.get_event(ctx, workflow_id, key, seconds, default)
        deadline = None if seconds is None else time.monotonic() + seconds
        delay = 0.01
        while True:
            text = self.store.get_event(workflow_id, key)
            if text is not None:
                return self.serializer.loads(text)
            if deadline is not None and time.monotonic() >= deadline:
                return default
            pause = delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 2, 0.5)

    # -- messaging ----------------------------------------------------------------------------------------
    def send(
        self,
        workflow_id: str,
        message: Any,
        topic: str | None,
        idempotency_key: str | None,
        create_mailbox: bool,
    ) -> None:
        workflow_id = v.check_id(workflow_id)
        stored_topic = v.check_topic(topic)
        if idempotency_key is not None:
            idempotency_key = v.check_id(idempotency_key, "idempotency_key")
        create_mailbox = v.check_flag(create_mailbox, "create_mailbox")
        engine = self.engine
        payload = engine.encode_payload(message, "message")
        ctx = core.workflow_body()
        if ctx is not None:
            return workflow_api.send(ctx, workflow_id, stored_topic, payload, idempotency_key, create_mailbox)

        def send() -> None:
            result = self.store.send(
                workflow_id,
                stored_topic,
                payload,
                engine.clock(),
                idempotency_key=idempotency_key,
                create_mailbox=create_mailbox,
            )
            engine.publish_all(result.wakeups)

        engine.observers.send(None, workflow_id, stored_topic, send) if engine.observers else send()  # observer hook

    # -- changing workflows ---------------------------------------------------------------------------------
    def cancel(self, workflow_id: str) -> WorkflowStatus:
        return self.cancel_record(workflow_id)[0]

    def cancel_record(self, workflow_id: str) -> tuple[WorkflowStatus, WorkflowRecord | None]:
        """Cancel; return the status afterwards and, when this call is the one that cancelled it, the record."""
        # The cascade to its children and the wake-up of a parent waiting on it: children.py.
        now = self.engine.clock()
        record, wakeups = self.store.cancel_tree(core.check_id(workflow_id), now)
        if record is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
        self.engine.publish_all(wakeups)
        # The cancel that changed the row stamped it with its own clock reading (cancel_tree).
        ours = record.status == WorkflowStatus.CANCELLED and record.updated_at == now
        return record.status, record if ours else None

    def resume(self, workflow_id: str) -> WorkflowRecord:
        """Put an ERROR or CANCELLED workflow back to work (see ``Durable.resume``); return its record after."""
        record = self.get(workflow_id)
        drop_from: int | None = None
        if record.status == WorkflowStatus.ERROR:
            drop_from = failed_step(record.error, self.store.list_steps(workflow_id))
        elif record.status != WorkflowStatus.CANCELLED:
            return record  # not finished, or finished well: nothing to resume
        resumed, dispatch = self.store.resume(workflow_id, record.ticket, drop_from, self.engine.clock())
        if resumed is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
        if dispatch is not None:
            self.engine.publish_all([dispatch])
        return resumed

    def fork(self, workflow_id: str, start_step: int, new_workflow_id: str | None) -> WorkflowRecord:
        """Start a copy of a workflow that runs again from *start_step* (see ``Durable.fork``); return its record."""
        workflow_id = v.check_id(workflow_id)
        start_step = v.check_count(start_step, "start_step")
        new_id = core.check_id(new_workflow_id, "new_workflow_id") if new_workflow_id is not None else str(uuid.uuid4())
        source = self.get(workflow_id)
        record, created = self.store.fork(workflow_id, new_id, start_step, self.engine.clock(), version=source.version)
        if record is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
        if not created:
            if record.forked_from != workflow_id or record.forked_from_step != start_step:
                raise WorkflowConflict(
                    f"workflow id {new_id!r} is already used (by a workflow that is not a fork of "
                    f"{workflow_id!r} at step {start_step})"
                )
            return record  # the same fork asked again: the id is an idempotency key
        self.engine.publish_all([Dispatch(record.workflow_id, record.name, record.queue, record.ticket)])
        return record

    def prune(self, older_than: v.Duration) -> int:
        seconds = v.check_duration(older_than, "older_than")
        return self.store.prune(self.engine.clock() - seconds, PRUNE_BATCH)

    def recover(self) -> int:
        engine = self.engine
        dispatches = self.store.sweep(engine.clock(), self.config.horizon, self.config.recovery_grace)
        engine.publish_all(dispatches)
        if dispatches:
            core.log.info("celery_durable recover: published %d workflow(s)", len(dispatches))
        return len(dispatches)


def failed_step(error: str | None, steps: list[StepRecord]) -> int | None:
    """The step id whose failure ended the workflow with *error*, or ``None`` when the workflow body raised it.

    It is the last step checkpoint that recorded the same error (type and message; a replayed
    failure whose class this process did not know comes back as ``WorkflowFailed("type: message")``).
    """
    if error is None:
        return None
    wf_type, wf_message = _type_and_message(error)
    for step in reversed(steps):
        if step.kind != "step" or step.error is None:
            continue
        step_type, step_message = _type_and_message(step.error)
        if (wf_type, wf_message) == (step_type, step_message) or wf_message == f"{step_type}: {step_message}":
            return step.step_id
    return None


def _type_and_message(error: str) -> tuple[str, str]:
    try:
        record = json.loads(error)
        return str(record.get("type", "")), str(record.get("message", ""))
    except (ValueError, AttributeError):
        return "", error
