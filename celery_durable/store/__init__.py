"""Workflow stores: the :class:`Store` contract and its SQL backends."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .base import Lease, Store
from .records import (
    Dispatch,
    Execution,
    FlowLimit,
    MessageRecord,
    SendResult,
    StepRecord,
    Suspended,
    WaitRequest,
    WorkflowRecord,
    WorkflowStatus,
)

__all__ = [
    "Dispatch",
    "Execution",
    "FlowLimit",
    "Lease",
    "MessageRecord",
    "SendResult",
    "StepRecord",
    "Store",
    "Suspended",
    "WaitRequest",
    "WorkflowRecord",
    "WorkflowStatus",
    "open_store",
]


def open_store(
    url: str, prefix: str = "durable_", engine_options: dict[str, Any] | None = None, *, durability: str = "full"
) -> Store:
    """Open the store at *url*: ``postgresql[+psycopg]://...`` or ``sqlite:///path``.

    *durability* ``"relaxed"`` lets step checkpoints commit without waiting for their flush to disk
    (PostgreSQL; see ``DurableConfig.durability``). SQLite's ``synchronous=NORMAL`` is already that.
    """
    if not prefix.replace("_", "").isalnum() or not prefix[0].isalpha():
        raise ConfigurationError(
            f"table prefix {prefix!r} must start with a letter and hold only letters, digits and _"
        )
    scheme = url.split(":", 1)[0]
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from .postgres import PostgresStore

        return PostgresStore("postgresql+psycopg:" + url.split(":", 1)[1], prefix, engine_options, durability=durability)
    if scheme.startswith("sqlite"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url, prefix, engine_options)
    raise ConfigurationError(
        f"unsupported database URL {url!r}: use postgresql+psycopg://... or sqlite:///path/to/file"
    )
