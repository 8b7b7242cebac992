"""When a step is worth retrying."""

from __future__ import annotations


def retry_on_transient_io(task, task_run, state) -> bool:
    """Prefect retry condition: retry on I/O errors (a busy store, a network share), not on bad input or bugs."""
    try:
        state.result()
    except FileNotFoundError:
        return False  # a missing file stays missing
    except OSError:
        return True
    except Exception:
        return False
    return False
