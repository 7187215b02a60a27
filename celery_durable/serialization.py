"""How values become text in the store, and back.

Payloads are JSON by default. Pickle is available only when a user asks for it
(``Durable(app, serializer="pickle")``), because unpickling data from a shared
database runs code chosen by whoever wrote that data.
"""

from __future__ import annotations

import base64
import builtins
import json
import pickle
import sys
import traceback
from typing import Any, Protocol

from .errors import ConfigurationError, SerializationError, WorkflowFailed


class Serializer(Protocol):
    """Turns a Python value into text for the store and back."""

    name: str

    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


class JSONSerializer:
    """Strict JSON: no NaN, no silent ``str()`` fallbacks; tuples come back as lists."""

    name = "json"

    def dumps(self, value: Any) -> str:
        try:
            return json.dumps(value, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"value of type {type(value).__name__} is not JSON-serializable ({exc}); "
                "pass JSON types (dict, list, str, int, float, bool, None) or opt in to "
                'another serializer with Durable(app, serializer="pickle")'
            ) from None

    def loads(self, text: str) -> Any:
        return json.loads(text)


class PickleSerializer:
    """Pickle, base64-encoded. Only for stores that no untrusted party can write to."""

    name = "pickle"

    def dumps(self, value: Any) -> str:
        try:
            return base64.b64encode(pickle.dumps(value, protocol=4)).decode("ascii")
        except Exception as exc:  # pickling raises many types
            raise SerializationError(f"value of type {type(value).__name__} cannot be pickled ({exc})") from None

    def loads(self, text: str) -> Any:
        return pickle.loads(base64.b64decode(text))


def get_serializer(name: str | Serializer) -> Serializer:
    """Return the serializer called *name* ("json" or "pickle"), or *name* itself if it is one."""
    if not isinstance(name, str):
        return name
    if name == "json":
        return JSONSerializer()
    if name == "pickle":
        return PickleSerializer()
    raise ConfigurationError(f"unknown serializer {name!r}: use 'json', 'pickle' or a Serializer object")


def encode_error(exc: BaseException) -> str:
    """Describe *exc* as JSON text: its type path, message, JSON-able args, notes and traceback text."""
    try:
        args = json.loads(json.dumps(list(exc.args), allow_nan=False))
    except (TypeError, ValueError):
        args = None
    record = {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "args": args,
        # Notes say what the engine added (such as how many attempts a step made); they come back on decode.
        "notes": [str(note) for note in getattr(exc, "__notes__", ())],
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    return json.dumps(record)


def decode_error(text: str) -> BaseException:
    """Rebuild an error recorded by :func:`encode_error` as an equivalent exception.

    The original class is used when it is a builtin or lives in a module this
    process already imported (nothing is imported on behalf of stored data) and
    can be built from the recorded args; otherwise a :class:`WorkflowFailed`
    carries the type name, message and remote traceback.
    """
    record = json.loads(text)
    type_path: str = record.get("type", "")
    message: str = record.get("message", "")
    tb: str = record.get("traceback", "")
    notes: list[str] = list(record.get("notes") or ())
    cls = _find_exception_class(type_path)
    if cls is not None and record.get("args") is not None:
        try:
            exc = cls(*record["args"])
        except Exception:
            exc = None
        if exc is not None:
            exc.__notes__ = [*notes, f"Raised in a durable workflow; original traceback:\n{tb}"]
            return exc
    failed = WorkflowFailed(f"{type_path}: {message}", error_type=type_path, error_message=message, remote_traceback=tb)
    failed.__notes__ = notes
    return failed


def _find_exception_class(type_path: str) -> type[BaseException] | None:
    module_name, _, qualname = type_path.rpartition(".")
    module = builtins if module_name == "builtins" else sys.modules.get(module_name)
    if module is None or "." in qualname or "<" in qualname:
        return None
    cls = getattr(module, qualname, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return None
