"""Run the checkout demo end to end: start a real ``celery worker``, start a workflow, pay, print.

python examples/run_demo.py
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "demo-data"


def main() -> int:
    shutil.rmtree(DATA, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(HERE), "DEMO_DATA": str(DATA)}
    os.environ["DEMO_DATA"] = str(DATA)
    sys.path.insert(0, str(HERE))
    DATA.mkdir(parents=True)
    log = open(DATA / "worker.log", "wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "checkout",
            "worker",
            "-c",
            "2",
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        cwd=str(HERE),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        from checkout import checkout, durable

        print(f"1. worker started (pid {worker.pid}); store: {durable.database_url}")
        handle = checkout.start("o-42", ["book", "lamp"], 59.90, workflow_id="order-42")
        print("2. started workflow", handle.workflow_id)
        again = checkout.start("o-42", ["book", "lamp"], 59.90, workflow_id="order-42")
        print("   starting it again with the same id returns the same workflow:", again.workflow_id)
        deadline = time.monotonic() + 60
        while handle.status().value != "WAITING":
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit("demo: the workflow did not reach its wait; see demo-data/worker.log")
            time.sleep(0.05)
        print("3. status:", handle.status().value, "- waiting for payment, no worker slot held")
        for step in handle.steps():
            print(f"   step {step.step_id}: {step.name} -> {step.output}")
        durable.send("order-42", "paid", topic="payment_status")
        print("4. sent 'paid' on topic payment_status (the broker wakes the workflow)")
        print("5. result:", handle.result(timeout=60))
        print("6. checkpoints, in order:")
        for step in handle.steps():
            took = (step.ended_at - step.started_at) * 1000
            print(f"   step {step.step_id}: {step.kind:<5} {step.name:<28} -> {step.output}  ({took:.1f} ms)")
        record = handle.record()
        print(f"7. the workflow ran in {record.executions} task executions; final status {record.status.value}")
        return 0
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()


if __name__ == "__main__":
    raise SystemExit(main())
