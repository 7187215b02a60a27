"""Tracing in the worker processes of tests/e2e/test_otel.py: spans go to a JSON-lines file the test reads.

A worker is another process, so the test cannot read its in-memory exporter; each span is
appended to the file as one line when it ends (SimpleSpanProcessor: no thread, safe across fork).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from celery.signals import worker_process_init
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from celery_durable import Durable
from celery_durable.contrib import otel


class JsonLinesExporter(SpanExporter):
    """Appends each span as one line of JSON (``ReadableSpan.to_json``) to *path*."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(json.loads(span.to_json(indent=None))) + "\n" for span in spans)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
        return SpanExportResult.SUCCESS


def install(durable: Durable, path: str, celery_instrumentor: bool) -> None:
    """Trace *durable* into *path*; with *celery_instrumentor*, opentelemetry-instrumentation-celery runs too."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    otel.instrument(durable, tracer_provider=provider)
    if celery_instrumentor:

        def instrument_child(**_: Any) -> None:  # its docs: instrument in each pool process
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            CeleryInstrumentor().instrument(tracer_provider=provider)

        worker_process_init.connect(instrument_child, weak=False)
