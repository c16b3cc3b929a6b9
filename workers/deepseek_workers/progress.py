"""Progress reports from a worker to the operator (see docs/architecture.md, "Progress reports").

Reports go to `<output>/progress.json` when the output is local, and, in a pod, to the run's progress
ConfigMap, which the pod's service account may patch and nothing else. Sending is rate-limited to the run
config's interval; a failed send is logged and retried with the next report, never fatal to training.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from deepseek_workers.runconfig import ProgressReport, ProgressSink

log = logging.getLogger(__name__)

_DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_ACCOUNT_DIR = Path(os.environ.get("DEEPSEEK_SERVICE_ACCOUNT_DIR", _DEFAULT_SA_DIR))


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _ConfigMapSink:
    """PATCHes one ConfigMap through the in-cluster API with the pod's service-account token."""

    def __init__(self, name: str, namespace: str | None) -> None:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        ns = namespace or (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
        self._url = f"https://{host}:{port}/api/v1/namespaces/{ns}/configmaps/{name}"
        self._ca = str(SERVICE_ACCOUNT_DIR / "ca.crt")

    def send(self, document: str) -> None:
        # The token is re-read each time: projected tokens rotate.
        token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
        resp = httpx.patch(
            self._url,
            content=json.dumps({"data": {"progress.json": document}}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
            verify=self._ca,
            timeout=10.0,
        )
        resp.raise_for_status()


class ProgressReporter:
    """Sends ProgressReports; call `report()` as often as you like and `report(..., final=True)` at the end."""

    def __init__(self, sink: ProgressSink, local_dir: Path | None) -> None:
        self._interval = sink.interval_seconds
        self._local_dir = local_dir
        self._last_sent = 0.0
        self._configmap: _ConfigMapSink | None = None
        if sink.config_map and os.environ.get("KUBERNETES_SERVICE_HOST"):
            try:
                self._configmap = _ConfigMapSink(sink.config_map, sink.namespace)
            except OSError as err:
                log.warning("progress ConfigMap %s unavailable (%s); reporting to the log only", sink.config_map, err)

    def report(self, report: ProgressReport, *, final: bool = False) -> bool:
        """Send `report` if the interval has passed (or `final`); returns whether it was sent."""
        now = time.monotonic()
        if not final and now - self._last_sent < self._interval:
            return False
        self._last_sent = now
        document = report.model_dump_json(by_alias=True, exclude_none=True)
        if self._local_dir is not None:
            self._write_local(document)
        if self._configmap is not None:
            try:
                self._configmap.send(document)
            except (httpx.HTTPError, OSError) as err:
                log.warning("could not send progress to the operator: %s", err)
        log.info("progress %s", document)
        return True

    def _write_local(self, document: str) -> None:
        assert self._local_dir is not None
        self._local_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._local_dir / ".progress.json.tmp"
        tmp.write_text(document, encoding="utf-8")
        tmp.replace(self._local_dir / "progress.json")


def make_report(**fields: Any) -> ProgressReport:
    """A ProgressReport stamped with the current time."""
    return ProgressReport.model_validate({"updatedAt": now_rfc3339(), **fields})
