"""The operator hears from a training worker at least every intervalSeconds, even while no step finishes."""

from __future__ import annotations

import time
from pathlib import Path

from deepseek_workers.progress import make_report
from deepseek_workers.training.engine import _Reporter

from tests.training.helpers import make_config, read_json


def test_heartbeat_refreshes_the_latest_report_until_the_final_one(tmp_path: Path) -> None:
    reporter = _Reporter(make_config(tmp_path, progress={"intervalSeconds": 0.3}))
    try:
        first = make_report(stage="train", step=7, totalSteps=10, updatedAt="2000-01-01T00:00:00Z")
        reporter.report(first)
        deadline = time.monotonic() + 30
        while read_json(tmp_path / "progress.json")["updatedAt"] == "2000-01-01T00:00:00Z":
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.1)
        refreshed = read_json(tmp_path / "progress.json")
        assert refreshed["step"] == 7  # same content, fresh timestamp
        assert refreshed["state"] == "running"
        reporter.report(make_report(stage="train", state="succeeded", step=10, totalSteps=10), final=True)
        time.sleep(1.0)
        assert read_json(tmp_path / "progress.json")["state"] == "succeeded"  # no heartbeat after the end
    finally:
        reporter.close()
