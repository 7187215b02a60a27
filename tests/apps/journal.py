"""One JSON line per call in a counter file: how the test apps' steps and tasks tell the tests what ran.

Appends are atomic for short lines with O_APPEND, so several worker processes may write one file.
"""

from __future__ import annotations

import json
import os
from typing import Any


def mark(directory: str, name: str, value: Any) -> None:
    """Append *value* as one JSON line to the file *name* in *directory*."""
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(value) + "\n").encode())
    finally:
        os.close(fd)


def marks(directory: str, name: str) -> list[Any]:
    """Every value written to the file *name* in *directory*, in order ([] before the first)."""
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]
