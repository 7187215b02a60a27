"""Deploying new workflow code while workflows are in flight: the code version, and patches.

**Version.** Each workflow records the version of the code that started it. By default it is a
hash of the source of every registered workflow and step function (``inspect.getsource``, or
the code object's bytes when the source is not available), so any edit to them gives a new
version; ``Durable(app, version=...)`` or the ``CELERY_DURABLE_VERSION`` environment variable
names it instead.

**Patches** (the semantics of DBOS Transact's ``patch``/``deprecate_patch`` and Temporal's
``patched``/``deprecate_patch``). ``patched(name)`` looks at the checkpoint at the next step id:

* none: this workflow reaches this point with the new code. A checkpoint of kind ``"patch"`` is
  written there (taking the step id) and the answer is True.
* the patch checkpoint of *name*: a replay of a workflow that took the new branch. It takes
  the step id; True.
* anything else: a history recorded before the patch existed. It takes **no** step id, so the
  old history still lines up with the old branch; False.

The first answer for a name holds for the rest of the execution (later calls take no step id),
so a patch checked in a loop or in two places gives one branch per workflow, not a mix.

``deprecate_patch(name)`` replaces ``patched(name)`` once no workflow that predates the patch is
in flight: it consumes the patch checkpoint when one is there and takes nothing otherwise, so
both histories that recorded the patch and new ones replay.

A checkpoint of another *patch* at the next step id is not an error by itself: a patch inserted
just before an older one sees it in histories that predate the new patch. A misplaced patch is
caught where it is certain: a marker of *name* recorded at a later step id than where the code
now asks (the call moved), and any other operation meeting a patch checkpoint (a ``patched`` or
``deprecate_patch`` call removed too early) raises :class:`NonDeterministicWorkflow` naming it.

Patches are an engine extension: they use the workflow context only through
:class:`~celery_durable.extension.WorkflowContextProtocol`.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import NonDeterministicWorkflow
from .store import StepRecord

if TYPE_CHECKING:
    from .extension import WorkflowContextProtocol

#: Environment variable that names the code version (beats the source hash, not an explicit argument).
ENV_VERSION = "CELERY_DURABLE_VERSION"
PATCH_KIND = "patch"
_PREFIX = "patch:"


# -- the code version ----------------------------------------------------------------------------------
def _source(fn: Callable[..., Any]) -> bytes:
    try:
        return inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            return repr(fn).encode()
        # No source file (built in a REPL, exec'd, frozen): the compiled body and its constants stand in.
        return code.co_code + repr(code.co_consts).encode()


def source_hash(functions: Iterable[tuple[str, Callable[..., Any]]]) -> str:
    """A short hash of the named functions' source, independent of the order they were registered in."""
    digest = hashlib.sha256()
    for name, fn in sorted(functions, key=lambda item: item[0]):
        digest.update(name.encode() + b"\0" + _source(fn) + b"\0")
    return digest.hexdigest()[:16]


def resolve_version(explicit: str | None, functions: Iterable[tuple[str, Callable[..., Any]]]) -> str:
    """The code version: *explicit* if given, else ``$CELERY_DURABLE_VERSION``, else the source hash."""
    return explicit or os.environ.get(ENV_VERSION) or source_hash(functions)


# -- patches ----------------------------------------------------------------------------------------------
def _is_patch(step: StepRecord | None) -> bool:
    return step is not None and step.kind == PATCH_KIND


def misplaced_hint(recorded: StepRecord) -> str:
    """Extra words for a determinism error whose recorded checkpoint is a patch marker."""
    if not _is_patch(recorded):
        return ""
    patch = recorded.name[len(_PREFIX) :] if recorded.name.startswith(_PREFIX) else recorded.name
    return (
        f" (a misplaced patch: the history recorded patch {patch!r} here, so the code must call "
        f"patched({patch!r}) or deprecate_patch({patch!r}) at this point until no workflow that "
        "recorded it is in flight)"
    )


def _check_not_moved(ctx: WorkflowContextProtocol, patch: str, marker: str, step_id: int) -> None:
    for later_id, step in ctx.checkpoints.items():
        if later_id > step_id and _is_patch(step) and step.name == marker:
            raise NonDeterministicWorkflow(
                f"workflow {ctx.workflow_id!r} is not deterministic: patch {patch!r} was recorded at step "
                f"{later_id} but the code now reaches it at step {step_id} (a misplaced patch)"
            )


def _record_marker(ctx: WorkflowContextProtocol, marker: str) -> None:
    """Take the next step id for the checkpoint that marks the patch taken."""
    step_id = ctx.take_step()
    now = ctx.clock()
    checkpoint = StepRecord(ctx.workflow_id, step_id, marker, PATCH_KIND, "null", None, None, now, now)
    store, lease = ctx.store, ctx.lease
    ctx.store_call(lambda: store.record_step(lease, checkpoint), f"{PATCH_KIND} {marker!r}")


def patched(ctx: WorkflowContextProtocol, patch: str, marker: str) -> bool:
    """Answer ``patched(patch)`` (see the module docstring); *marker* is the patch checkpoint's name."""
    if patch in ctx.patches:
        return ctx.patches[patch]
    ctx.check_deadline()
    step_id = ctx.next_step_id()  # peek: the step id is taken only on the True branch
    recorded = ctx.checkpoints.get(step_id)
    if recorded is None:
        _check_not_moved(ctx, patch, marker, step_id)
        _record_marker(ctx, marker)
        answer = True
    elif _is_patch(recorded) and recorded.name == marker:
        ctx.take_step()
        answer = True
    else:
        _check_not_moved(ctx, patch, marker, step_id)
        answer = False
    ctx.patches[patch] = answer
    return answer


def deprecate_patch(ctx: WorkflowContextProtocol, patch: str, marker: str) -> None:
    """Run ``deprecate_patch(patch)`` (see the module docstring); *marker* is the patch checkpoint's name."""
    if patch in ctx.patches:
        return
    ctx.check_deadline()
    step_id = ctx.next_step_id()
    recorded = ctx.checkpoints.get(step_id)
    if recorded is not None and recorded.kind == PATCH_KIND and recorded.name == marker:
        ctx.take_step()
    else:
        _check_not_moved(ctx, patch, marker, step_id)
    ctx.patches[patch] = True
