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
from .validation import has_surrogates, shown


class Serializer(Protocol):
    """Turns a Python value into text for the store and back."""

    name: str

    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


#: Deepest nesting of lists and dicts a JSON payload may have. Deeper values are refused when
#: written, so reading one back can never exhaust the interpreter's recursion limit.
MAX_DEPTH = 200

_JSON_SCALARS = (str, int, float, bool, type(None))
# What json.dumps(value, allow_nan=False, separators=(",", ":")) builds on every call: one encoder,
# reused (it keeps no state between calls), for the same text and the same errors.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


class JSONSerializer:
    """Strict JSON that round-trips exactly, or refuses with :class:`SerializationError`.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``list``, ``tuple`` and ``dict``
    with ``str`` keys, nested at most :data:`MAX_DEPTH` deep. Converted (documented in docs/workflows.md, *Input rules*):
    tuples come back as lists, and instances of subclasses of these types (an ``IntEnum``, an
    ``OrderedDict``, a namedtuple) come back as the base type. Refused: everything else, NaN and
    infinities, non-``str`` dict keys (JSON would turn ``{1: "a"}`` into ``{"1": "a"}``), and strings
    holding surrogate code points (JSON would turn the two characters of a surrogate pair into one).
    NUL and every other character round-trip: the text is ASCII, with ``\\uXXXX`` escapes.
    """

    name = "json"

    def dumps(self, value: Any) -> str:
        _check_json(value)
        try:
            return _ENCODER.encode(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(
                f"value of type {type(value).__name__} is not JSON-serializable ({exc}); "
                "pass JSON types (dict, list, str, int, float, bool, None) or opt in to "
                'another serializer with Durable(app, serializer="pickle")'
            ) from None

    def loads(self, text: str) -> Any:
        return json.loads(text)


def _check_json(value: Any) -> None:
    """Refuse what JSON would not give back exactly (see :class:`JSONSerializer`); iterative, so depth is no danger."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if has_surrogates(item):
                raise SerializationError(
                    f"string {shown(item)} holds surrogate code points (U+D800-U+DFFF), which JSON cannot "
                    "give back exactly; pass valid Unicode text"
                )
        elif isinstance(item, _JSON_SCALARS):
            continue
        elif isinstance(item, (list, tuple, dict)):
            if depth >= MAX_DEPTH:
                raise SerializationError(
                    f"value is nested more than {MAX_DEPTH} levels deep (or contains itself); "
                    "flatten it before storing it"
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise SerializationError(
                            f"dict key {shown(key)} is a {type(key).__name__}, not a str: JSON would turn it into "
                            "a string; use string keys or a list of pairs"
                        )
                    stack.append((key, depth + 1))
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        # anything else: json.dumps refuses it with its own message


def check_stored_text(text: str, what: str) -> str:
    """Refuse serialized *text* that a store cannot hold (NUL, surrogates): only a custom serializer makes such text."""
    if "\x00" in text or has_surrogates(text):
        raise SerializationError(f"{what} serialized to text a database cannot hold (NUL or surrogate characters)")
    return text


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
    except (TypeError, ValueError, RecursionError):
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
