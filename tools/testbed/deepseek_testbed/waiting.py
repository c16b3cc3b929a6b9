"""Polling helper: wait until a condition holds, with a message that says what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from deepseek_testbed.errors import TestbedError

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call `probe` until it returns something truthy and return that; raise TestbedError after `timeout` s.

    `describe` (optional) is called on timeout to add the last observed state to the error message; a probe
    that raises lets the exception through (so a crashed component is reported at once, not after a timeout).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"; last state: {describe()}" if describe is not None else ""
            raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)
