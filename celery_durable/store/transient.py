"""Which database errors may pass if the operation is tried again (transient) and which never will (permanent).

Transient: the connection was lost or refused, the server is shutting down or starting, a
serialization failure or deadlock chose this transaction as the victim, a lock or statement
timeout, "database is locked" on SQLite, an operating-system error. The execution stops without
a verdict and its delivery is retried.

Permanent: everything else — a value the database cannot hold (``DataError``, an encoding error),
a constraint (``IntegrityError``), a missing table (``ProgrammingError``). The same call with the
same values fails the same way, so retrying would loop forever: the operation fails instead.
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa

# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_TRANSIENT_CLASSES = ("08", "53")  # connection exception; insufficient resources (too many connections, disk full)
_PG_TRANSIENT_CODES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout, pg_cancel_backend)
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down)
        "58000",  # system_error
        "58030",  # io_error
    }
)
# SQLite primary result codes (https://www.sqlite.org/rescode.html).
_SQLITE_TRANSIENT_CODES = frozenset({5, 6, 7, 10, 13, 14, 15})  # BUSY LOCKED NOMEM IOERR FULL CANTOPEN PROTOCOL


def is_transient_sqlalchemy(exc: BaseException) -> bool | None:
    """What SQLAlchemy itself knows: ``True`` for a lost connection or a pool timeout, ``None`` when it cannot tell."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa.exc.DisconnectionError, sa.exc.TimeoutError)):
        return True
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, a lock file the OS could not open
        return True
    return None


def _driver_error(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc


def is_transient_postgres(exc: BaseException) -> bool:
    """Classify an error raised by the PostgreSQL store (psycopg 3 through SQLAlchemy)."""
    known = is_transient_sqlalchemy(exc)
    if known is not None:
        return known
    import psycopg

    orig = _driver_error(exc)
    if not isinstance(orig, psycopg.Error):
        return False  # raised before reaching the server, e.g. UnicodeEncodeError: the value itself is bad
    code = orig.sqlstate
    if code is None:
        # Raised by the client without a server verdict: the connection broke or was closed.
        return isinstance(orig, (psycopg.OperationalError, psycopg.InterfaceError))
    return code.startswith(_PG_TRANSIENT_CLASSES) or code in _PG_TRANSIENT_CODES


def is_transient_sqlite(exc: BaseException) -> bool:
    """Classify an error raised by the SQLite store (sqlite3 through SQLAlchemy)."""
    known = is_transient_sqlalchemy(exc)
    if known is not None:
        return known
    orig = _driver_error(exc)
    if not isinstance(orig, sqlite3.OperationalError):
        return False  # IntegrityError, DataError, InterfaceError (a value it cannot bind), UnicodeEncodeError
    code = getattr(orig, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in _SQLITE_TRANSIENT_CODES
    message = str(orig).lower()
    return "locked" in message or "busy" in message or "disk i/o" in message or "unable to open" in message
