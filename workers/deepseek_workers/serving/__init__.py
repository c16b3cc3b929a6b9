"""The model server (`deepseek-worker serve`): dynamic batching, KServe v2 / plain JSON / OpenAI protocols,
Prometheus metrics and graceful drain. Heavy imports happen only when the server runs."""

from __future__ import annotations

from deepseek_workers.runconfig import ServeRunConfig


def run_server(cfg: ServeRunConfig) -> None:
    from deepseek_workers.serving.server import run_server as _run

    _run(cfg)
