"""The input rules of every public entry point, in one place (pure Python: no Celery, no SQLAlchemy).

Every check returns the value in the form the rest of the package uses, or raises
:class:`~celery_durable.errors.InvalidArgument` naming the argument and showing the bad value.
The same rules hold on every store, so a value SQLite would accept and PostgreSQL would refuse
is refused before either sees it:

* **Names** (workflow ids, workflow and step names, topics, event keys, idempotency keys, queue
  names, name filters): a ``str`` of 1 to 255 characters, without NUL and without surrogate code
  points (U+D800-U+DFFF), i.e. text that encodes as UTF-8 and that PostgreSQL ``text`` can hold.
* **Timeouts** (seconds): a real number (not a bool, not a string), finite, ``>= 0`` and at most
  :data:`MAX_TIMEOUT` (ten years), so that ``now + timeout`` and a Celery countdown stay exact.
* **Limits**: an ``int`` (not a bool) from 1 to :data:`MAX_LIMIT`.
* **Status filters**: a :class:`~celery_durable.WorkflowStatus` or its exact value (``"WAITING"``).
"""

from __future__ import annotations

import datetime
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidArgument
from .store.records import WorkflowStatus

#: Longest name, in characters (the store's ``VARCHAR`` columns hold this many).
MAX_NAME_LENGTH = 255
#: Longest timeout or sleep, in seconds: ten years. Longer ones are refused rather than overflowing.
MAX_TIMEOUT = 10 * 365 * 24 * 3600.0
#: Largest ``limit`` a listing accepts (fits every store's integer type).
MAX_LIMIT = 2**31 - 1
#: How many characters of a bad value an error message shows.
_SHOWN = 80

_SURROGATE = re.compile("[\ud800-\udfff]")

__all__ = [
    "MAX_LIMIT",
    "MAX_NAME_LENGTH",
    "MAX_TIMEOUT",
    "check_call",
    "check_count",
    "check_duration",
    "check_flag",
    "check_id",
    "check_limit",
    "check_name",
    "check_name_filter",
    "check_poll_interval",
    "check_queue",
    "check_status",
    "check_statuses",
    "check_timeout",
    "check_timestamp",
    "check_topic",
    "has_surrogates",
    "shown",
]


def shown(value: Any) -> str:
    """``repr(value)`` cut to a readable length, for error messages."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 20]}...{text[-12:]} ({len(text)} characters)"


def has_surrogates(text: str) -> bool:
    """Whether *text* holds a surrogate code point (lone, or a pair that Python keeps as two characters)."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def check_name(value: Any, what: str) -> str:
    """Return *value* as a plain ``str`` if it is a valid name (see the module docstring)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, got {shown(value)} of type {type(value).__name__}")
    value = str.__str__(value)  # a plain str: a subclass is stored and compared as one, and cannot fake its length
    if not value or len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{what} must be 1 to {MAX_NAME_LENGTH} characters long, got {len(value)}: {shown(value)}"
        )
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters, got {shown(value)}")
    if has_surrogates(value):
        raise InvalidArgument(
            f"{what} must be valid Unicode text (no surrogate code points U+D800-U+DFFF), got {shown(value)}"
        )
    return value


def check_id(value: Any, what: str = "workflow id") -> str:
    """A workflow id (or another name-like argument called *what*)."""
    return check_name(value, what)


def check_topic(topic: Any) -> str:
    """Map a user topic to its stored form: ``None`` is the default topic ``''``."""
    if topic is None:
        return ""
    if type(topic) is str and 0 < len(topic) <= MAX_NAME_LENGTH and topic.isascii() and "\x00" not in topic:
        return topic  # the common case, checked cheaply (every replay passes here); the same rules as check_name
    return check_name(topic, "topic")


def check_name_filter(value: Any, what: str = "name") -> str | None:
    """A listing filter on a name: ``None`` (no filter) or a valid name."""
    return None if value is None else check_name(value, what)


def check_queue(value: Any) -> str | None:
    """A queue option: ``None``, a name, or an object with a ``name`` (a kombu ``Queue``)."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = getattr(value, "name", value)
    return check_name(value, "queue")


def check_timeout(timeout: Any, what: str = "timeout", *, allow_none: bool = True) -> float | None:
    """Seconds as a float: finite, ``>= 0``, at most :data:`MAX_TIMEOUT`; ``None`` (forever) if allowed."""
    if timeout is None and allow_none:
        return None
    if type(timeout) is float or type(timeout) is int:  # the common case, checked cheaply (every replay passes here)
        if 0 <= timeout <= MAX_TIMEOUT:  # NaN and infinities fail this
            return timeout + 0.0  # a float; -0.0 becomes 0.0
    rule = f"a number of seconds from 0 to {MAX_TIMEOUT:.0f} (ten years)" + (
        ", or None to wait forever" if allow_none else ""
    )
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise InvalidArgument(f"{what} must be {rule}, got {shown(timeout)} of type {type(timeout).__name__}")
    try:
        seconds = float(timeout)
    except (OverflowError, ValueError, TypeError):
        raise InvalidArgument(f"{what} must be {rule}, got {shown(timeout)}") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIMEOUT:
        raise InvalidArgument(f"{what} must be {rule}, got {shown(timeout)}")
    return seconds + 0.0  # -0.0 becomes 0.0


def check_poll_interval(value: Any) -> float:
    """A polling interval: a number of seconds above 0 (0 would spin) and at most :data:`MAX_TIMEOUT`."""
    seconds = check_timeout(value, "poll_interval", allow_none=False)
    assert seconds is not None
    if seconds <= 0:
        raise InvalidArgument(f"poll_interval must be above 0 seconds, got {shown(value)}")
    return seconds


def check_limit(value: Any, what: str = "limit") -> int:
    """A positive ``int`` up to :data:`MAX_LIMIT`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidArgument(f"{what} must be a whole number from 1 to {MAX_LIMIT}, got {shown(value)}")
    return int(value)


def check_status(value: Any) -> WorkflowStatus | None:
    """A status filter: ``None``, a :class:`WorkflowStatus`, or its exact value such as ``"WAITING"``."""
    if value is None or isinstance(value, WorkflowStatus):
        return value
    if isinstance(value, str) and value in WorkflowStatus.__members__:
        return WorkflowStatus(value)
    raise InvalidArgument(f"unknown status {shown(value)}; use one of {', '.join(s.value for s in WorkflowStatus)}")


def check_flag(value: Any, what: str) -> bool:
    """A boolean option: exactly ``True`` or ``False`` (a string such as ``"no"`` would be true)."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be True or False, got {shown(value)}")
    return value


def check_call(args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A workflow call's positional arguments (a list or tuple) and keyword arguments (a mapping with ``str`` keys)."""
    if args is None:
        args = ()
    if not isinstance(args, (list, tuple)):
        raise InvalidArgument(f"args must be a list or tuple, got {shown(args)} of type {type(args).__name__}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise InvalidArgument(f"kwargs must be a dict, got {shown(kwargs)} of type {type(kwargs).__name__}")
    for key in kwargs:
        if not isinstance(key, str):
            raise InvalidArgument(f"keyword argument names must be strings, got {shown(key)}")
    return tuple(args), dict(kwargs)


#: A point in time given by a caller: an aware ``datetime`` or seconds since the epoch.
When = datetime.datetime | int | float
#: A length of time given by a caller: seconds or a ``timedelta``.
Duration = datetime.timedelta | int | float


def check_count(value: Any, what: str) -> int:
    """A whole number from 0 to :data:`MAX_LIMIT` (an offset, a step id)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise InvalidArgument(f"{what} must be a whole number from 0 to {MAX_LIMIT}, got {shown(value)}")
    return int(value)


def check_statuses(value: Any) -> list[WorkflowStatus] | None:
    """A status filter that may also be a list of statuses (any one matches); ``None``: no filter."""
    if value is None:
        return None
    values = [value] if isinstance(value, (str, WorkflowStatus)) else value
    if not isinstance(values, Iterable) or isinstance(values, (bytes, Mapping)):
        raise InvalidArgument(f"status must be a status or a list of statuses, got {shown(value)}")
    statuses = [check_status(s) for s in values]
    if not statuses or any(s is None for s in statuses):
        raise InvalidArgument(f"status must name at least one status (None is not one), got {shown(value)}")
    return [s for s in statuses if s is not None]


def check_timestamp(value: Any, what: str) -> float | None:
    """A point in time (``None``: no bound) as seconds since the epoch."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise InvalidArgument(f"{what} must be an aware datetime (with a timezone), got {shown(value)}")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(f"{what} must be an aware datetime or finite seconds since the epoch, got {shown(value)}")
    return float(value)


def check_duration(value: Any, what: str) -> float:
    """A length of time (seconds or a ``timedelta``) under the same rule as a timeout, ``None`` excluded."""
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else value
    checked = check_timeout(seconds, what, allow_none=False)
    assert checked is not None
    return checked
