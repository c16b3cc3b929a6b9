"""`deepseek-worker train|quantize|serve --config PATH`: the command the operator's pods run.

The run config is validated before anything heavy is imported. Expected failures (WorkerError) end with a
one-line message on stderr, the same message in the pod's termination log, and a distinct exit code; only a
bug prints a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from deepseek_workers import runconfig
from deepseek_workers.errors import BadConfigError, WorkerError

log = logging.getLogger("deepseek_workers")

TERMINATION_LOG = Path(os.environ.get("DEEPSEEK_TERMINATION_LOG", "/dev/termination-log"))


def _write_termination_message(message: str) -> None:
    # Kubernetes shows this file's content as the container's termination message (at most 4 KiB).
    # Not in a pod, or the file is not writable: stderr still has the message.
    with contextlib.suppress(OSError):
        TERMINATION_LOG.write_text(message[:4000], encoding="utf-8")


def _train(config_text: str) -> None:
    cfg = runconfig.parse_train_config(config_text)
    from deepseek_workers.training import run_training

    run_training(cfg)


def _quantize(config_text: str) -> None:
    cfg = runconfig.parse_train_config(config_text)
    from deepseek_workers.quantization import run_quantization

    run_quantization(cfg)


def _serve(config_text: str) -> None:
    cfg = runconfig.parse_serve_config(config_text)
    from deepseek_workers.serving import run_server

    run_server(cfg)


COMMANDS: dict[str, Callable[[str], None]] = {"train": _train, "quantize": _quantize, "serve": _serve}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepseek-worker", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument(
        "--config",
        default=os.environ.get("DEEPSEEK_RUN_CONFIG", runconfig.DEFAULT_RUN_CONFIG_PATH),
        help="path of the run config (JSON) rendered by the operator",
    )
    parser.add_argument("--log-level", default=os.environ.get("DEEPSEEK_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        COMMANDS[args.command](runconfig.load_text(args.config))
    except runconfig.RunConfigError as err:
        return _fail(BadConfigError(str(err)))
    except WorkerError as err:
        return _fail(err)
    return runconfig.EXIT_OK


def _fail(err: WorkerError) -> int:
    message = f"{type(err).__name__}: {err.message}"
    log.error("%s", message)
    _write_termination_message(message)
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
