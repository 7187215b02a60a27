"""Read-only admin pages for workflows and messages, with the actions *cancel* and *resume*.

A workflow's page shows its steps, messages and events as tables: the steps and events tables
have composite primary keys, and Django's admin does not register such models (nor inline them).
The actions need the ``change workflow`` permission and go through the public API of the
:class:`~celery_durable.contrib.django.DjangoDurable` built in the project's ``celery.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib import admin, messages
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ...errors import DurableError
from ...store.records import WorkflowStatus
from .conf import database_alias
from .durable import get_durable
from .models import Message, Workflow, as_datetime

#: Longest excerpt of a payload, output or error shown in a table cell.
EXCERPT = 300


def _excerpt(text: str | None) -> str:
    if text is None:
        return ""
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def _when(seconds: float | None) -> str:
    moment = as_datetime(seconds)
    return "" if moment is None else formats.localize(timezone.template_localtime(moment))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> SafeString | str:
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
    )
    if not body:
        return "—"
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Nothing is added, changed or deleted here: the store changes only through the library."""

    show_full_result_count = False  # one COUNT(*) per page, not two, on tables that only grow

    def get_queryset(self, request: Any) -> Any:
        return super().get_queryset(request).using(database_alias())

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


class CreatedFilter(admin.SimpleListFilter):
    """Filter by creation time (the store keeps seconds since the epoch, not a date column)."""

    title = "created"
    parameter_name = "created"
    SPANS = {
        "1h": ("Past hour", 3600),
        "24h": ("Past 24 hours", 86400),
        "7d": ("Past 7 days", 7 * 86400),
        "30d": ("Past 30 days", 30 * 86400),
    }

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.SPANS.items()]

    def queryset(self, request: Any, queryset: Any) -> Any:
        span = self.SPANS.get(self.value() or "")
        return queryset if span is None else queryset.filter(created_at__gte=time.time() - span[1])


@admin.register(Workflow)
class WorkflowAdmin(ReadOnlyAdmin):
    list_display = ("workflow_id", "name", "status", "created", "updated", "executions")
    list_filter = ("status", "name", CreatedFilter)
    search_fields = ("workflow_id",)
    actions = ["cancel", "resume"]
    fields = (
        "workflow_id",
        "name",
        "status",
        "created",
        "updated",
        "executions",
        "queue",
        "waiting",
        "inputs",
        "output",
        "error",
        "parent_id",
        "version",
        "steps_table",
        "messages_table",
        "events_table",
    )
    readonly_fields = ("created", "updated", "waiting", "steps_table", "messages_table", "events_table")

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: Workflow) -> Any:
        return as_datetime(obj.created_at)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: Workflow) -> Any:
        return as_datetime(obj.updated_at)

    @admin.display(description="waiting for")
    def waiting(self, obj: Workflow) -> str:
        if obj.status != WorkflowStatus.WAITING.value:
            return ""
        until = f" until {_when(obj.deadline)}" if obj.deadline is not None else ""
        return f"{obj.wait_kind} {obj.wait_topics or ''}{until}"

    @admin.display(description="steps")
    def steps_table(self, obj: Workflow) -> SafeString | str:
        return _table(
            ("step", "name", "kind", "topic", "output / error", "started", "ended"),
            (
                (
                    s.step_id,
                    s.name,
                    s.kind,
                    s.topic or "",
                    _excerpt(s.error or s.output),
                    _when(s.started_at),
                    _when(s.ended_at),
                )
                for s in obj.steps()
            ),
        )

    @admin.display(description="messages")
    def messages_table(self, obj: Workflow) -> SafeString | str:
        return _table(
            ("seq", "topic", "payload", "sent", "consumed"),
            (
                (m.seq, m.topic or "(default)", _excerpt(m.payload), _when(m.created_at), _when(m.consumed_at))
                for m in obj.messages()
            ),
        )

    @admin.display(description="events")
    def events_table(self, obj: Workflow) -> SafeString | str:
        return _table(
            ("key", "value", "updated"), ((e.key, _excerpt(e.value), _when(e.updated_at)) for e in obj.events())
        )

    def has_operate_permission(self, request: Any) -> bool:
        """Who may cancel or resume: holders of the ``change workflow`` permission."""
        return bool(request.user.has_perm(f"{self.opts.app_label}.change_workflow"))

    @admin.action(description="Cancel selected workflows", permissions=["operate"])
    def cancel(self, request: Any, queryset: Any) -> None:
        durable = get_durable()
        cancelled, finished = 0, []
        for workflow_id in queryset.values_list("workflow_id", flat=True):
            if durable.cancel(workflow_id) == WorkflowStatus.CANCELLED:
                cancelled += 1
            else:
                finished.append(workflow_id)
        self.message_user(request, f"Cancelled {cancelled} workflow(s).", messages.SUCCESS)
        if finished:
            self.message_user(request, f"Already finished, left as they are: {', '.join(finished)}", messages.WARNING)

    @admin.action(description="Resume selected workflows", permissions=["operate"])
    def resume(self, request: Any, queryset: Any) -> None:
        durable = get_durable()
        resumed, refused = 0, []
        for workflow_id in queryset.values_list("workflow_id", flat=True):
            try:
                # Durable.resume lands with the operations branch; the ignore goes unused once it does.
                durable.resume(workflow_id)
            except DurableError as exc:  # e.g. a workflow that cannot be resumed: say which and why
                refused.append(f"{workflow_id}: {exc}")
            else:
                resumed += 1
        self.message_user(request, f"Resumed {resumed} workflow(s).", messages.SUCCESS)
        for line in refused:
            self.message_user(request, f"Not resumed: {line}", messages.ERROR)


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("seq", "destination_link", "topic", "sent", "consumed")
    list_filter = ("topic",)
    search_fields = ("destination",)

    @admin.display(description="destination", ordering="destination")
    def destination_link(self, obj: Message) -> SafeString:
        url = reverse(f"admin:{self.opts.app_label}_workflow_change", args=[obj.destination])
        return format_html('<a href="{}">{}</a>', url, obj.destination)

    @admin.display(description="sent", ordering="created_at")
    def sent(self, obj: Message) -> Any:
        return as_datetime(obj.created_at)

    @admin.display(description="consumed", ordering="consumed_at")
    def consumed(self, obj: Message) -> Any:
        return as_datetime(obj.consumed_at)
