"""Pod annotations that choose what kwok does with a pod on a fake node (see stages/pods.yaml)."""

from __future__ import annotations

from typing import Literal

FATE = "testbed.deepseek.ai/fate"
EXIT_CODE = "testbed.deepseek.ai/exit-code"
RUN_SECONDS = "testbed.deepseek.ai/run-seconds"

Fate = Literal["succeed-after", "run-forever", "fail", "oom", "crash-loop", "image-pull"]
FATES: tuple[Fate, ...] = ("succeed-after", "run-forever", "fail", "oom", "crash-loop", "image-pull")

#: How long a Job pod without a fate (or with succeed-after/fail/oom) stays Running.
DEFAULT_RUN_SECONDS = 2.0


def fate_annotations(
    fate: Fate | None = None, *, exit_code: int | None = None, run_seconds: float | None = None
) -> dict[str, str]:
    """Annotations for a pod (template) that give it `fate`; validated here so a typo fails fast."""
    out: dict[str, str] = {}
    if fate is not None:
        if fate not in FATES:
            raise ValueError(f"fate {fate!r} is not one of {', '.join(FATES)}")
        out[FATE] = fate
    if exit_code is not None:
        if not 0 <= exit_code <= 255:
            raise ValueError(f"exit_code must be within 0..255, got {exit_code}")
        out[EXIT_CODE] = str(exit_code)
    if run_seconds is not None:
        if run_seconds < 0:
            raise ValueError(f"run_seconds must be >= 0, got {run_seconds}")
        out[RUN_SECONDS] = f"{run_seconds:g}"
    return out
