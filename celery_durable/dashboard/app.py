"""The dashboard's routes: the workflow list with live counts, a page per workflow, two actions.

Requests are plain synchronous functions (Starlette runs them in its thread pool): the client's
methods are synchronous, like everything else here.

Actions are POST forms guarded two ways against cross-site requests: each form carries a token
made at start-up (a page on another site cannot read it), and a request whose ``Origin`` (or
``Referer``) names another host is refused.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from ..cli import _when  # the CLI's format of times (UTC)
from ..client import Client
from ..errors import DurableError, WorkflowNotFound
from ..store import WorkflowStatus
from ..store.records import error_summary
from . import timeline

PAGE_SIZE = 50
#: Counts by status are counted up to this many; more shows as "1000+".
COUNT_CAP = 1000
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def create_app(client: Client, *, allow_actions: bool = False) -> Starlette:
    """The dashboard on *client*'s store; with *allow_actions*, workflow pages get cancel and resume buttons."""
    views = _Views(client, allow_actions)
    routes = [
        Route("/", views.index),
        Route("/api/counts", views.counts),
        Route("/workflow", views.workflow),
        Route("/schedules", views.schedules),
        Route("/workflow/{action:str}", views.act, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def serve(client: Client, *, host: str = "127.0.0.1", port: int = 8555, allow_actions: bool = False) -> None:
    """Run the dashboard with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(client, allow_actions=allow_actions), host=host, port=port, log_level="info")


class _Views:
    def __init__(self, client: Client, allow_actions: bool) -> None:
        self.client = client
        self.allow_actions = allow_actions
        self.token = secrets.token_urlsafe(32)

    def _render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        context.update(allow_actions=self.allow_actions, statuses=[s.value for s in WorkflowStatus], base=_base(request))
        return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)

    def _counts(self) -> dict[str, int]:
        # No count query in the public API: list up to the cap (ids and states only are used).
        return {s.value: len(self.client.list_workflows(s, limit=COUNT_CAP + 1)) for s in WorkflowStatus}

    def counts(self, request: Request) -> Response:
        return JSONResponse({"counts": self._counts(), "cap": COUNT_CAP})

    def index(self, request: Request) -> Response:
        q = request.query_params
        filters = {
            "status": q.get("status") or None,
            "name": q.get("name") or None,
            "id_prefix": q.get("id_prefix") or None,
        }
        error = None
        try:
            offset = max(int(q.get("offset") or 0), 0)
            records = self.client.list_workflows(
                filters["status"], filters["name"], id_prefix=filters["id_prefix"], limit=PAGE_SIZE + 1, offset=offset
            )
        except (DurableError, ValueError) as exc:
            records, offset, error = [], 0, str(exc)
        more = len(records) > PAGE_SIZE
        active = {k: v for k, v in filters.items() if v}
        return self._render(
            request,
            "index.html",
            status_code=400 if error else 200,
            workflows=records[:PAGE_SIZE],
            filters=filters,
            error=error,
            counts=self._counts(),
            cap=COUNT_CAP,
            next_page="?" + urlencode({**active, "offset": offset + PAGE_SIZE}) if more else None,
            previous_page="?" + urlencode({**active, "offset": max(offset - PAGE_SIZE, 0)}) if offset else None,
            when=_when,
        )

    def schedules(self, request: Request) -> Response:
        """The stored schedules, read-only (manage them with ``durable schedules ...``)."""
        return self._render(request, "schedules.html", schedules=self.client.list_schedules())

    def workflow(self, request: Request) -> Response:
        workflow_id = request.query_params.get("id", "")
        client = self.client
        try:
            record = client.management.get(workflow_id)
        except (WorkflowNotFound, DurableError) as exc:
            return self._render(request, "missing.html", status_code=404, workflow_id=workflow_id, error=str(exc))
        steps = client.list_steps(workflow_id)
        now = time.time()
        error = None
        if record.error is not None:
            try:
                error = json.loads(record.error)
            except ValueError:
                error = {"message": record.error}
        return self._render(
            request,
            "workflow.html",
            wf=record,
            steps=steps,
            picture=timeline.build(record, steps, now),
            messages=client.list_messages(workflow_id),
            events=client.get_events(workflow_id),
            children=client.list_workflows(parent_id=workflow_id, limit=200),
            error=error,
            error_line=error_summary(record.error),
            inputs=_pretty(client, record.inputs),
            output=_pretty(client, record.output),
            step_output=lambda step: _pretty(client, step.output),
            step_error=lambda step: error_summary(step.error),
            token=self.token,
            done=request.query_params.get("done"),
            when=_when,
            pretty=lambda value: json.dumps(value, ensure_ascii=False, default=repr),
        )

    async def act(self, request: Request) -> Response:
        action = request.path_params["action"]
        if not self.allow_actions:
            return Response("actions are off: start the dashboard with --allow-actions", status_code=403)
        if action not in ("cancel", "resume"):
            return Response("unknown action", status_code=404)
        form = await request.form()
        token, workflow_id = form.get("csrf"), form.get("id")
        if not isinstance(token, str) or not secrets.compare_digest(token, self.token) or not _same_origin(request):
            return Response("refused: this form did not come from this dashboard", status_code=403)
        if not isinstance(workflow_id, str):
            return Response("no workflow id", status_code=400)
        from starlette.concurrency import run_in_threadpool

        try:
            if action == "cancel":
                await run_in_threadpool(self.client.cancel, workflow_id)
            else:
                await run_in_threadpool(self.client.resume, workflow_id)
        except WorkflowNotFound as exc:
            return Response(str(exc), status_code=404)
        query = urlencode({"id": workflow_id, "done": action})
        return RedirectResponse(f"{_base(request)}/workflow?{query}", status_code=303)


def _base(request: Request) -> str:
    """The path the dashboard is served under: "" at the root, "/ops/durable" when mounted there.

    Every link, form and fetch starts with it, so the dashboard works mounted under a prefix (a
    Starlette ``Mount``, or a proxy that passes the prefix as the ASGI ``root_path``).
    """
    return str(request.scope.get("root_path", "")).rstrip("/")


def _same_origin(request: Request) -> bool:
    """Whether the request's Origin (or Referer) header, when it has one, names this server."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host")


def _pretty(client: Client, text: str | None) -> str:
    if text is None:
        return ""
    try:
        value = client.serializer.loads(text)
    except Exception:
        return text
    return json.dumps(value, ensure_ascii=False, indent=1, default=repr)

