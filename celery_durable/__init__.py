"""Durable workflows for Celery: checkpointed steps, replay, and send/recv on a SQL store."""

from .config import DurableConfig
from .errors import (
    ConfigurationError,
    DurableError,
    InvalidArgument,
    NonDeterministicWorkflow,
    NotInWorkflow,
    PayloadTooLarge,
    SerializationError,
    StoreRejected,
    WorkflowCancelled,
    WorkflowConflict,
    WorkflowFailed,
    WorkflowNotFound,
)
from .handle import WorkflowHandle
from .integration import Durable, WorkflowTask
from .store import StepRecord, WorkflowRecord, WorkflowStatus

__all__ = [
    "ConfigurationError",
    "Durable",
    "DurableConfig",
    "DurableError",
    "InvalidArgument",
    "NonDeterministicWorkflow",
    "NotInWorkflow",
    "PayloadTooLarge",
    "SerializationError",
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
]
__version__ = "0.1.0"
