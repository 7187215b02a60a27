"""A small read-only web view of workflows: ``celery -A proj durable dashboard`` (the ``dashboard`` extra).

:func:`create_app` builds the Starlette application on any client (``Durable`` or
``DurableClient``); :func:`serve` runs it with uvicorn. Everything it shows comes from the
client's public methods, never from SQL. Cancel and resume buttons exist only with
``allow_actions=True``. See docs/dashboard.md.
"""

from __future__ import annotations

from .app import create_app, serve

__all__ = ["create_app", "serve"]
