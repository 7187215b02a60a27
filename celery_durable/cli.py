"""``celery-durable``: a thin command line over the store (migrate, list, steps, cancel, recover).

It needs only the database URL (``--database-url`` or ``CELERY_DURABLE_DATABASE_URL``);
``recover`` also needs the Celery app (``--app module:attribute`` or ``-A module``) to publish.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .integration import DEFAULT_URL, ENV_URL, Durable
from .store import WorkflowStatus, open_store


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _find_durable(spec: str) -> Durable:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    if attr:
        found = getattr(module, attr)
        if isinstance(found, Durable):
            return found
    candidates = [v for v in vars(module).values() if isinstance(v, Durable)]
    if len(candidates) != 1:
        raise SystemExit(
            f"celery-durable: found {len(candidates)} Durable objects in {module_name}; name one as module:attribute"
        )
    return candidates[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="celery-durable", description=__doc__)
    parser.add_argument("--database-url", default=os.environ.get(ENV_URL, DEFAULT_URL))
    parser.add_argument("--prefix", default="durable_", help="table prefix (default durable_)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create or upgrade the schema")
    p_list = sub.add_parser("list", help="list workflows, newest first")
    p_list.add_argument("--status", choices=[s.value for s in WorkflowStatus])
    p_list.add_argument("--name")
    p_list.add_argument("--limit", type=int, default=20)
    p_steps = sub.add_parser("steps", help="show a workflow's checkpoints")
    p_steps.add_argument("workflow_id")
    p_cancel = sub.add_parser("cancel", help="cancel a workflow")
    p_cancel.add_argument("workflow_id")
    p_recover = sub.add_parser("recover", help="re-publish workflows that lost their message")
    p_recover.add_argument("-A", "--app", required=True, help="module (or module:attribute) holding the Durable")
    args = parser.parse_args(argv)

    if args.command == "recover":
        sys.path.insert(0, os.getcwd())
        print(f"published {_find_durable(args.app).recover()} workflow(s)")
        return 0
    store = open_store(args.database_url, args.prefix)
    try:
        if args.command == "migrate":
            print(f"schema at version {store.migrate()}")
        elif args.command == "list":
            for wf in store.list_workflows(WorkflowStatus(args.status) if args.status else None, args.name, args.limit):
                print(f"{wf.workflow_id:<40} {wf.status.value:<9} {wf.name:<40} {_when(wf.created_at)}")
        elif args.command == "steps":
            for step in store.list_steps(args.workflow_id):
                result: Any = json.loads(step.error)["message"] if step.error else step.output
                print(f"{step.step_id:>4} {step.kind:<9} {step.name:<40} {_when(step.started_at)} -> {result}")
        elif args.command == "cancel":
            import time

            record = store.cancel(args.workflow_id, time.time())
            if record is None:
                print(f"celery-durable: no workflow {args.workflow_id!r}", file=sys.stderr)
                return 1
            print(f"{record.workflow_id} is {record.status.value}")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
