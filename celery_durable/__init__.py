"""Durable workflows for Celery: checkpointed steps, replay, and send/recv on a SQL store.

The public names are imported on first use (PEP 562), so ``import celery_durable`` imports
neither Celery nor SQLAlchemy: the pytest plugin ``celery_durable.testing`` is loaded by every
pytest run of a project that installs the package, and must cost nothing there.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import DurableClient
    from .config import DurableConfig
    from .errors import (
        ChildWorkflowCancelled,
        ConcurrencyLimitExceeded,
        ConfigurationError,
        DuplicateWorkflow,
        DurableError,
        InvalidArgument,
        NonDeterministicWorkflow,
        NotInWorkflow,
        PayloadTooLarge,
        ScheduleNotFound,
        SerializationError,
        StepAttemptLost,
        StoreRejected,
        WorkflowCancelled,
        WorkflowConflict,
        WorkflowFailed,
        WorkflowNotFound,
        WorkflowTimedOut,
    )
    from .flow_schedule import ScheduleInfo
    from .handle import WorkflowHandle
    from .integration import Durable, WorkflowTask
    from .store import MessageRecord, StepRecord, WorkflowRecord, WorkflowStatus

__all__ = [
    "ChildWorkflowCancelled",
    "ConcurrencyLimitExceeded",
    "ConfigurationError",
    "DuplicateWorkflow",
    "Durable",
    "DurableClient",
    "DurableConfig",
    "DurableError",
    "InvalidArgument",
    "MessageRecord",
    "NonDeterministicWorkflow",
    "NotInWorkflow",
    "PayloadTooLarge",
    "ScheduleInfo",
    "ScheduleNotFound",
    "SerializationError",
    "StepAttemptLost",
    "StepRecord",
    "StoreRejected",
    "WorkflowCancelled",
    "WorkflowConflict",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowNotFound",
    "WorkflowRecord",
    "WorkflowStatus",
    "WorkflowTask",
    "WorkflowTimedOut",
]
__version__ = "0.1.0"


# Where each public name lives, for __getattr__.
_MODULES = {
    **dict.fromkeys(("DurableClient",), ".client"),
    **dict.fromkeys(("DurableConfig",), ".config"),
    **dict.fromkeys(("ScheduleInfo",), ".flow_schedule"),
    **dict.fromkeys(("WorkflowHandle",), ".handle"),
    **dict.fromkeys(("Durable", "WorkflowTask"), ".integration"),
    **dict.fromkeys(("MessageRecord", "StepRecord", "WorkflowRecord", "WorkflowStatus"), ".store"),
}


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = importlib.import_module(_MODULES.get(name, ".errors"), __name__)
        value = getattr(module, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
