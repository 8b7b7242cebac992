"""Progress lines for long steps, printed (Prefect captures prints as logs inside a flow)."""

from __future__ import annotations

import time


class Progress:
    """Callable ``(done, total)`` that prints at most every ``every_seconds`` and at the end."""

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
        print(f"{self.label}: {done}/{total or '?'} ({rate:.1f}/s{remaining})", flush=True)
