"""Read the ``CELERY_DURABLE`` setting and turn a ``DATABASES`` entry into a store URL.

::

    CELERY_DURABLE = {
        "database": "default",      # the DATABASES alias the store lives in
        "queue": "workflows",       # ... and any DurableConfig option
    }
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from django.conf import settings
from django.db import connections

from ...config import DurableConfig
from ...errors import ConfigurationError

SETTING = "CELERY_DURABLE"
DEFAULT_ALIAS = "default"

# Keys of a PostgreSQL DATABASES entry's OPTIONS that configure Django, not the libpq connection.
_DJANGO_ONLY_OPTIONS = frozenset(
    {"isolation_level", "server_side_binding", "assume_role", "pool", "cursor_factory", "context"}
)


def _setting() -> dict[str, Any]:
    value = getattr(settings, SETTING, None) or {}
    if not isinstance(value, dict):
        raise ConfigurationError(f"settings.{SETTING} must be a dict, got {type(value).__name__}")
    return value


def database_alias() -> str:
    """The ``DATABASES`` alias holding the store: ``CELERY_DURABLE["database"]``, else ``"default"``."""
    alias = _setting().get("database", DEFAULT_ALIAS)
    if alias not in settings.DATABASES:
        raise ConfigurationError(f"{SETTING}['database'] is {alias!r}, which is not a key of DATABASES")
    return str(alias)


def config_options() -> dict[str, Any]:
    """The ``DurableConfig`` options of ``CELERY_DURABLE`` (every key but ``database``), checked."""
    options = {key: value for key, value in _setting().items() if key != "database"}
    DurableConfig.from_options(None, options)  # an unknown or invalid option fails here, naming it
    return options


def table_prefix() -> str:
    """The configured table prefix (``durable_`` by default)."""
    prefix = _setting().get("table_prefix")
    return prefix if prefix is not None else DurableConfig().table_prefix


def database_url(alias: str | None = None) -> str:
    """The SQLAlchemy URL of the ``DATABASES`` entry *alias* (the configured one by default).

    Read from the live connection's settings, so a test database set up by Django's test runner
    is the one used.
    """
    alias = alias or database_alias()
    connection = connections[alias]
    return url_from_settings(connection.vendor, connection.settings_dict, alias)


def url_from_settings(vendor: str, params: dict[str, Any], alias: str = DEFAULT_ALIAS) -> str:
    """The SQLAlchemy URL of one ``DATABASES`` entry (*params*) of a *vendor* backend.

    PostgreSQL becomes ``postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME?OPTIONS`` (the OPTIONS
    that are libpq connection parameters, e.g. ``sslmode``; Django's own are left out); SQLite
    becomes ``sqlite:///NAME`` with NAME made absolute.
    """
    if vendor == "sqlite":
        name = str(params.get("NAME") or "")
        if not name or name == ":memory:" or "mode=memory" in name:
            raise ConfigurationError(
                f"DATABASES[{alias!r}] is an in-memory SQLite database, which worker processes cannot share; "
                "give it a file NAME (and a file TEST NAME for Django's test runner)"
            )
        return f"sqlite:///{os.path.abspath(name)}"
    if vendor == "postgresql":
        query: dict[str, str] = {}
        for key, value in (params.get("OPTIONS") or {}).items():
            if key in _DJANGO_ONLY_OPTIONS:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ConfigurationError(
                    f"DATABASES[{alias!r}]['OPTIONS'][{key!r}] = {value!r} has no place in a connection URL; "
                    f"pass it through {SETTING}['engine_options'] instead"
                )
            query[key] = str(value)
        host = params.get("HOST") or None
        if host is not None and host.startswith("/"):
            query["host"] = host  # a Unix socket directory: libpq takes it as a parameter, not a URL host
            host = None
        port = params.get("PORT")
        return sa.engine.URL.create(
            "postgresql+psycopg",
            username=params.get("USER") or None,
            password=params.get("PASSWORD") or None,
            host=host,
            port=int(port) if port else None,
            database=params.get("NAME") or None,
            query=query,
        ).render_as_string(hide_password=False)
    raise ConfigurationError(
        f"DATABASES[{alias!r}] is a {vendor} database; celery_durable stores workflows in "
        f"PostgreSQL or SQLite: point {SETTING}['database'] at such an alias"
    )


def open_configured_store(alias: str | None = None) -> Any:
    """Open (without migrating) the store in the ``DATABASES`` entry *alias* with the configured prefix."""
    from ...store import open_store

    options = config_options()
    return open_store(
        database_url(alias),
        table_prefix(),
        options.get("engine_options"),
        durability=options.get("durability", DurableConfig().durability),
    )


__all__ = [
    "config_options",
    "database_alias",
    "database_url",
    "open_configured_store",
    "table_prefix",
    "url_from_settings",
]
