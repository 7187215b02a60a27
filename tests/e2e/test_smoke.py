from tests.services import Worker, count_lines


def test_three_steps_run_once_and_return(wf, e2e_env, tmp_path):
    worker = Worker(e2e_env).start()
    try:
        handle = wf.three_adds.start(1, workflow_id="smoke-1")
        assert handle.result(timeout=30) == 4
        assert [s.name for s in handle.steps()] == ["tests.apps.wfapp.add"] * 3
        assert count_lines(tmp_path / "counters" / "add") == 3
    finally:
        worker.stop()
