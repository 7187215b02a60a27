"""The timeline picture of one workflow: one bar per checkpoint, waits drawn as the time they took.

Pure geometry, no web framework: :func:`build` turns a workflow's record and checkpoints into
rows the template draws as inline SVG. A checkpoint records when its operation ended; a wait
(``recv``, ``get_event``, ``sleep``, a retry pause) is drawn from the end of the checkpoint
before it, because the workflow did nothing else in between. A workflow waiting now gets one
more bar, open up to now, with its deadline marked.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cli import _duration  # the CLI's format of durations
from ..store import StepRecord, WorkflowRecord

WIDTH = 960  # the SVG's width in pixels; the label column comes out of it
LABEL = 260
RIGHT = 40  # room for the last tick's label
ROW = 24
WAITS = frozenset({"recv", "event", "sleep"})


@dataclass(frozen=True)
class Bar:
    """One row of the timeline."""

    step_id: int | None  # None: the wait going on now
    label: str
    kind: str  # the checkpoint's kind, "wait-open" for the wait going on now
    x: float
    width: float
    y: int
    failed: bool
    title: str  # the tooltip


@dataclass(frozen=True)
class Timeline:
    bars: list[Bar]
    height: int
    start: float
    end: float
    deadline_x: float | None
    ticks: list[tuple[float, str]]


def build(record: WorkflowRecord, steps: list[StepRecord], now: float) -> Timeline:
    """Lay out *record*'s checkpoints (oldest first) between its creation and its end (or *now*)."""
    start = record.created_at
    waiting = record.wait_kind is not None and not record.status.is_terminal
    last = max([start, *(s.ended_at for s in steps)])
    end = max(now if waiting or not record.status.is_terminal else record.updated_at, last)
    span = max(end - start, 1e-3)
    scale = (WIDTH - LABEL - RIGHT) / span

    def x(t: float) -> float:
        return LABEL + (min(max(t, start), end) - start) * scale

    bars: list[Bar] = []
    previous_end = start
    for i, step in enumerate(steps):
        begins = previous_end if step.kind in WAITS else step.started_at
        left, right = x(begins), x(step.ended_at)
        seconds = max(step.ended_at - begins, 0.0)
        verb = "waited" if step.kind in WAITS else "took"
        title = f"step {step.step_id}: {step.kind} {step.name} — {verb} {_duration(seconds)}"
        bars.append(
            Bar(step.step_id, f"{step.step_id} {step.kind} {_short(step.name)}", step.kind, left,
                max(right - left, 3.0), i * ROW, step.error is not None, title)
        )
        previous_end = max(previous_end, step.ended_at)
    if waiting:
        left = x(previous_end)
        topics = ", ".join(t or "(default)" for t in record.wait_topics or ())
        title = f"waiting for {record.wait_kind} {topics} since {_duration(now - previous_end)}"
        bars.append(Bar(None, f"{record.wait_step} waiting: {record.wait_kind} {_short(topics)}", "wait-open",
                        left, max(x(end) - left, 3.0), len(bars) * ROW, False, title))
    deadline = record.deadline if waiting else None
    deadline_x = x(deadline) if deadline is not None and deadline <= end else None
    ticks = [(LABEL + f * (WIDTH - LABEL - RIGHT), f"+{_duration(span * f)}") for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return Timeline(bars, max(len(bars), 1) * ROW + 24, start, end, deadline_x, ticks)


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]

