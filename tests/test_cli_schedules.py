"""``durable schedules ...`` through the standalone ``celery-durable`` command, run as a subprocess on a
real SQLite store that a Durable registered a schedule in."""

from __future__ import annotations

import json
from typing import Any

from celery_durable import WorkflowStatus
from tests.test_cli_standalone import Recording, run_cli


def test_schedules_commands_list_pause_resume_trigger_backfill_delete(sqlite_url: str, unique_prefix: str) -> None:
    d = Recording(sqlite_url, unique_prefix)

    def nightly(label: str) -> str:
        return label

    d.workflow(name="ops.nightly")(nightly)
    d.schedule("nightly", "ops.nightly", 3600, args=("n",), overlap="buffer_one")

    def cli_json(*args: str) -> Any:
        done = run_cli(sqlite_url, unique_prefix, "schedules", *args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    (listed,) = cli_json("list")
    assert (listed["name"], listed["workflow"], listed["schedule"], listed["overlap"], listed["paused"]) == (
        "nightly", "ops.nightly", "every 3600s", "buffer_one", False
    )
    text = run_cli(sqlite_url, unique_prefix, "schedules", "list").stdout
    assert "nightly" in text and "every 3600s" in text and "NEXT TICK" in text
    assert cli_json("pause", "nightly")["paused"] is True
    assert d.get_schedule("nightly").paused
    assert cli_json("resume", "nightly")["paused"] is False
    triggered = cli_json("trigger", "nightly")["workflow_id"]
    assert triggered.startswith("sched:nightly:manual-")
    assert d.management.get(triggered).status is WorkflowStatus.PENDING
    ids = cli_json("backfill", "nightly", "--start", "2026-01-01T00:00:00Z", "--end", "2026-01-01T02:00:00")["workflow_ids"]
    assert ids == [f"sched:nightly:2026-01-01T0{h}:00:00Z" for h in range(3)]
    assert cli_json("backfill", "nightly", "--start", "2026-01-01T00:00:00Z", "--end", "2026-01-01T02:00:00")["workflow_ids"] == ids
    assert len(d.list_workflows(name="ops.nightly")) == 4, "the second backfill started nothing"
    assert cli_json("delete", "nightly") == {"name": "nightly", "deleted": True}
    assert cli_json("list") == []
    d.close()


def test_schedules_commands_refuse_unknown_names_and_bad_times_in_one_line(sqlite_url: str, unique_prefix: str) -> None:
    d = Recording(sqlite_url, unique_prefix)
    d.schedule("s", "ops.nightly", 60)
    for args, says in [
        (("pause", "nope"), "no schedule named 'nope'"),
        (("trigger", "nope"), "no schedule named 'nope'"),
        (("backfill", "s", "--start", "yesterday", "--end", "2026-01-01"), "--start is not an ISO-8601 time"),
    ]:
        done = run_cli(sqlite_url, unique_prefix, "schedules", *args)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr, done.stderr
    d.close()
