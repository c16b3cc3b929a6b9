"""`deepseek-operator`: run the operator (kopf) with its metrics and liveness endpoints.

One active instance (kopf has no leader election): the chart runs one replica with the Recreate strategy and
kopf's standalone mode, so an old pod never freezes a new one through peering.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import threading
from collections.abc import Sequence

import kopf
from prometheus_client import start_http_server

from deepseek_operator import k8s
from deepseek_operator.config import OperatorConfig

log = logging.getLogger("deepseek_operator")

# Modules whose import registers handlers with kopf's default registry.
CONTROLLER_MODULES = (
    "deepseek_operator.controllers.settings",
    "deepseek_operator.controllers.inference",
    "deepseek_operator.controllers.health",
    "deepseek_operator.controllers.training",
)


def load_controllers() -> None:
    for module in CONTROLLER_MODULES:
        importlib.import_module(module)


async def run_operator(
    config: OperatorConfig,
    *,
    kubeconfig: str | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    liveness: bool = True,
) -> None:
    """Run until `stop_flag` is set (or forever); used by main() and by in-process tests.

    `kubeconfig` (a path) makes both kopf and the operator's own client use it instead of the environment's
    configuration (tests run the operator with admin or with the chart's ServiceAccount credentials). Handlers
    find `config` and `kubeconfig` on kopf's `memo`.
    """
    load_controllers()
    # A fresh client per run: an httpx client belongs to the event loop that created it.
    k8s.configure(kubeconfig)
    try:
        await kopf.operator(
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            liveness_endpoint=f"http://{config.listen_host}:{config.liveness_port}/healthz" if liveness else None,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=kopf.Memo(config=config, kubeconfig=kubeconfig),
        )
    finally:
        await k8s.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepseek-operator", description="Run the DeepSeek operator.")
    parser.add_argument("--log-format", choices=["json", "plain"], default="json")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    config = OperatorConfig.from_env()
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    start_http_server(config.metrics_port, addr=config.listen_host)
    log.info("metrics on :%d/metrics, liveness on :%d/healthz", config.metrics_port, config.liveness_port)
    asyncio.run(run_operator(config))
    return 0
