"""Progress and summary lines of the steps: Prefect's run logger inside a flow, plain stdout outside one.

The flow does not use ``log_prints``: it patches the builtin ``print``, which also captures libraries that print
to a redirected stdout on purpose (dill disassembles functions that way while ``datasets`` fingerprints them).
"""

from __future__ import annotations

import time


def say(message: str) -> None:
    from prefect.context import FlowRunContext, TaskRunContext

    if TaskRunContext.get() or FlowRunContext.get():
        from prefect.logging import get_run_logger

        get_run_logger().info(message)
    else:
        print(message, flush=True)


class Progress:
    """Callable ``(done, total)`` that reports at most every ``every_seconds`` and at the end."""

    def __init__(self, label: str, total: int | None = None, every_seconds: float = 10.0):
        self.label, self.total, self.every_seconds = label, total, every_seconds
        self.started = self.last = time.monotonic()

    def __call__(self, done: int, total: int | None = None) -> None:
        total = total or self.total
        now = time.monotonic()
        if done != total and now - self.last < self.every_seconds:
            return
        self.last = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = f", ~{(total - done) / rate:.0f}s left" if total and rate > 0 and done < total else ""
        say(f"{self.label}: {done}/{total or '?'} ({rate:.2f}/s{remaining})")
