"""``manage.py durable <command>``: the ``celery durable`` commands on the project's Durable.

One code path: the arguments go to the same click group as ``celery -A proj durable`` and
``celery-durable`` (:mod:`celery_durable.cli`), with the project's
:class:`~celery_durable.contrib.django.DjangoDurable` (:func:`~celery_durable.contrib.django.get_durable`)
as the app's Durable. So ``manage.py durable list --json``, ``show ID``, ``send``, ``cancel``...
print and exit exactly as the Celery subcommand does (status 1 with one line on stderr for an
unknown id or bad input), and ``manage.py durable --help`` lists them.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError

from ..... import cli
from ... import get_durable


class Command(BaseCommand):
    help = "Inspect and operate durable workflows (the `celery -A proj durable` commands): list, show, send, cancel..."

    def run_from_argv(self, argv: list[str]) -> None:
        # Django's own argument parser stays out of the way: click parses, prints and sets the exit status.
        self._run(argv[2:], standalone=True)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="a durable command and its options")

    def handle(self, *args: Any, **options: Any) -> None:
        """``call_command("durable", "list", "--json")``: the same commands; a failure raises CommandError."""
        try:
            self._run(list(args), standalone=False)
        except click.ClickException as exc:
            raise CommandError(exc.format_message()) from None

    def _run(self, args: list[str], standalone: bool) -> None:
        # The group finds the app's Durable on ctx.obj.app, as under `celery -A proj` (Celery's CLIContext).
        context = SimpleNamespace(app=get_durable().app)
        cli.durable.main(args=args, prog_name="manage.py durable", obj=context, standalone_mode=standalone)
