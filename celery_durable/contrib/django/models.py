"""Read-only Django models over the store's tables (``celery_durable/store/schema.py`` declares them).

Unmanaged: Django never creates or alters these tables; the library's own migrations do (run by
this app's migration). Times are seconds since the epoch, as the store writes them. Table names
follow ``CELERY_DURABLE["table_prefix"]``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.db import models

from ...store.records import WorkflowStatus
from ...store.schema import MAX_ID_LENGTH
from .conf import table_prefix

_PREFIX = table_prefix()
STATUS_CHOICES = [(status.value, status.value) for status in WorkflowStatus]


def as_datetime(seconds: float | None) -> datetime | None:
    """A store timestamp (seconds since the epoch) as an aware datetime."""
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


class Workflow(models.Model):
    workflow_id = models.CharField(max_length=MAX_ID_LENGTH, primary_key=True)
    name = models.CharField(max_length=MAX_ID_LENGTH)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES)
    inputs = models.TextField()
    output = models.TextField(null=True)
    error = models.TextField(null=True)
    queue = models.CharField(max_length=MAX_ID_LENGTH, null=True)
    ticket = models.IntegerField()
    executions = models.IntegerField()
    wait_kind = models.CharField(max_length=8, null=True)
    wait_target = models.CharField(max_length=MAX_ID_LENGTH, null=True)
    wait_topics = models.TextField(null=True)
    wait_step = models.IntegerField(null=True)
    deadline = models.FloatField(null=True)
    timer_due = models.FloatField(null=True)
    dispatched_at = models.FloatField(null=True)
    created_at = models.FloatField()
    updated_at = models.FloatField()
    version = models.CharField(max_length=MAX_ID_LENGTH, null=True)
    parent_id = models.CharField(max_length=MAX_ID_LENGTH, null=True)
    forked_from = models.CharField(max_length=MAX_ID_LENGTH, null=True)
    forked_from_step = models.IntegerField(null=True)
    timeout_at = models.FloatField(null=True)
    attempt_step = models.IntegerField(null=True)
    attempts = models.IntegerField(null=True)
    trace_context = models.TextField(null=True)
    awaited = models.IntegerField(null=True)  # child workflows (children.py): the parent's join step
    awaiting = models.IntegerField(null=True)  # ... and on the parent, awaited children not finished
    task_options = models.TextField(null=True)  # the start message's Celery canvas, fired at the finish
    dedup_key = models.CharField(max_length=MAX_ID_LENGTH, null=True)  # start(dedup_key=...): one unfinished per key
    flow_key = models.CharField(max_length=MAX_ID_LENGTH, null=True)  # its concurrency key, once admission saw it
    flow_limit = models.IntegerField(null=True)  # how many of that key may be admitted at once
    priority = models.IntegerField(null=True)  # admission order among the ENQUEUED of its key (lower first)

    class Meta:
        managed = False
        db_table = f"{_PREFIX}workflows"
        ordering = ["-created_at", "-workflow_id"]

    def __str__(self) -> str:
        return self.workflow_id

    def steps(self) -> Any:
        return Step.objects.using(self._state.db).filter(workflow_id=self.workflow_id).order_by("step_id")

    def messages(self) -> Any:
        return Message.objects.using(self._state.db).filter(destination=self.workflow_id).order_by("seq")

    def events(self) -> Any:
        return Event.objects.using(self._state.db).filter(workflow_id=self.workflow_id).order_by("key")


class Step(models.Model):
    """A checkpoint: the recorded output or error of one durable operation of a workflow."""

    pk = models.CompositePrimaryKey("workflow_id", "step_id")
    workflow_id = models.CharField(max_length=MAX_ID_LENGTH)
    step_id = models.IntegerField()
    name = models.CharField(max_length=MAX_ID_LENGTH)
    kind = models.CharField(max_length=16)
    output = models.TextField(null=True)
    error = models.TextField(null=True)
    topic = models.CharField(max_length=MAX_ID_LENGTH, null=True)
    started_at = models.FloatField()
    ended_at = models.FloatField()

    class Meta:
        managed = False
        db_table = f"{_PREFIX}steps"


class Message(models.Model):
    """A message sent to a workflow (or to a mailbox for one that starts later)."""

    seq = models.BigIntegerField(primary_key=True)
    destination = models.CharField(max_length=MAX_ID_LENGTH)
    topic = models.CharField(max_length=MAX_ID_LENGTH)  # '' is the default topic
    payload = models.TextField()
    idempotency_key = models.CharField(max_length=MAX_ID_LENGTH, null=True)
    created_at = models.FloatField()
    consumed_at = models.FloatField(null=True)

    class Meta:
        managed = False
        db_table = f"{_PREFIX}messages"
        ordering = ["-seq"]

    def __str__(self) -> str:
        return f"#{self.seq} to {self.destination}"


class Event(models.Model):
    """An event a workflow set with ``set_event`` (the last value wins)."""

    pk = models.CompositePrimaryKey("workflow_id", "key")
    workflow_id = models.CharField(max_length=MAX_ID_LENGTH)
    key = models.CharField(max_length=MAX_ID_LENGTH)
    value = models.TextField()
    updated_at = models.FloatField()

    class Meta:
        managed = False
        db_table = f"{_PREFIX}events"
