"""Liveness that fails when the watch streams stall, not merely when the process is alive.

The operator touches a heartbeat ConfigMap every `heartbeat_seconds` and watches it like any other child
(same label selector, same ConfigMap watch stream that carries the trainings' progress reports). The probe
behind /healthz fails once no watch event for it has arrived for `liveness_stale_seconds`: a stalled watch,
a dead API connection or a blocked event loop all end in a restart by the kubelet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from deepseek_operator import k8s, naming
from deepseek_operator.config import OperatorConfig
from deepseek_operator.metrics import HEARTBEAT_AGE
from deepseek_operator.status.conditions import now_rfc3339

log = logging.getLogger(__name__)

HEARTBEAT_NAME = "deepseek-operator-heartbeat"
HEARTBEAT_COMPONENT = "heartbeat"


@dataclass
class Heartbeat:
    namespace: str | None
    interval: float
    stale_after: float
    last_seen: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None

    def age(self) -> float:
        return time.monotonic() - self.last_seen


def heartbeat_manifest(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": HEARTBEAT_NAME,
            "namespace": namespace,
            "labels": {
                naming.LABEL_NAME: "deepseek-operator",
                naming.LABEL_COMPONENT: HEARTBEAT_COMPONENT,
                naming.LABEL_PART_OF: "deepseek-operator",
                naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
            },
        },
        "data": {"time": now_rfc3339(), "monotonic": f"{time.monotonic():.3f}"},
    }


async def _beat(hb: Heartbeat) -> None:
    assert hb.namespace is not None
    while True:
        try:
            await k8s.apply(heartbeat_manifest(hb.namespace))
        except Exception as err:  # API errors, transport errors: never let the loop die; the probe will tell
            log.warning("heartbeat not written: %r", err)
        await asyncio.sleep(hb.interval)


@kopf.on.startup()
async def _start_heartbeat(memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo.get("config") or OperatorConfig()
    hb = Heartbeat(config.heartbeat_namespace, config.heartbeat_seconds, config.liveness_stale_seconds)
    memo.heartbeat = hb
    HEARTBEAT_AGE.set_function(hb.age)
    if hb.namespace is None:
        log.warning("no operator namespace (POD_NAMESPACE) configured: the watch heartbeat is off")
        return
    hb.task = asyncio.create_task(_beat(hb), name="deepseek-heartbeat")


@kopf.on.cleanup()
async def _stop_heartbeat(memo: kopf.Memo, **_: Any) -> None:
    hb: Heartbeat | None = memo.get("heartbeat")
    if hb is not None and hb.task is not None:
        hb.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hb.task


@kopf.on.event("v1", "configmaps", labels={naming.LABEL_COMPONENT: HEARTBEAT_COMPONENT})
def _heartbeat_seen(memo: kopf.Memo, **_: Any) -> None:
    hb: Heartbeat | None = memo.get("heartbeat")
    if hb is not None:
        hb.last_seen = time.monotonic()


@kopf.on.probe(id="watchHeartbeatAgeSeconds")
def _watch_fresh(memo: kopf.Memo, **_: Any) -> float | None:
    hb: Heartbeat | None = memo.get("heartbeat")
    if hb is None or hb.namespace is None:
        return None
    age = hb.age()
    if age > hb.stale_after:
        raise kopf.PermanentError(
            f"no watch event for the heartbeat ConfigMap {hb.namespace}/{HEARTBEAT_NAME} for {age:.0f}s "
            f"(limit {hb.stale_after:.0f}s): the watch streams have stalled"
        )
    return round(age, 1)
