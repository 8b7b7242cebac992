"""The machine a figure was measured on, as reports name it: CPU model and core count."""

from __future__ import annotations

import os
import platform


def cpu_description() -> str:
    """The CPU's model name and core count, for benchmark tables: figures differ between machines."""
    return f"{cpu_model() or 'unknown CPU'}, {os.cpu_count()} cores"


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux); None elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_description() -> str:
    """E.g. 'AMD EPYC 9R14, 2 cores': what a latency (and so a cost) measured here depends on."""
    return f"{cpu_model() or platform.processor() or platform.machine()}, {os.cpu_count()} cores"
