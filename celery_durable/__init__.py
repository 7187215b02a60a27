"""Durable workflows for Celery: checkpointed steps, replay, and send/recv on a SQL store."""

from .client import DurableClient
from .config import DurableConfig
from .errors import (
    ChildWorkflowCancelled,
    ConfigurationError,
    DurableError,
    InvalidArgument,
    NonDeterministicWorkflow,
    NotInWorkflow,
    PayloadTooLarge,
    SerializationError,
    StepAttemptLost,
    StoreRejected,
    WorkflowCancelled,
    WorkflowConflict,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimedOut,
)
from .handle import WorkflowHandle
from .integration import Durable, WorkflowTask
from .store import MessageRecord, StepRecord, WorkflowRecord, WorkflowStatus

__all__ = [
    "ChildWorkflowCancelled",
    "ConfigurationError",
    "Durable",
    "DurableClient",
    "DurableConfig",
    "DurableError",
    "InvalidArgument",
    "MessageRecord",
    "NonDeterministicWorkflow",
    "NotInWorkflow",
    "PayloadTooLarge",
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
