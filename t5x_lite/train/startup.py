"""Where a run's start-up goes: from the process's start to its first finished step,
by phase (imports and config, data and tokenizer, model and state, compile and first
step). Printed once (`started in 9.1 s: ...`) and kept in metrics.jsonl as `startup/*`."""

from __future__ import annotations

import os
import time

from t5x_lite.train import workdir


def process_start() -> float | None:
    """The wall-clock time this process started (Linux's /proc), None elsewhere.

    Its age is the system's uptime (/proc/uptime, to 0.01 s) less its start in clock
    ticks since boot; the boot time in /proc/stat (`btime`) is whole seconds, which put
    up to a second of error into the first phase."""
    ticks = workdir.process_start_time(os.getpid())  # clock ticks since boot
    if ticks is None:
        return None
    try:
        with open("/proc/uptime", encoding="utf-8") as f:
            uptime = float(f.read().split()[0])  # seconds since boot
    except (OSError, IndexError, ValueError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


class Clock:
    """Marks phases as they end; `report()` after the first step."""

    def __init__(self, origin: float | None = None):
        self.origin = process_start() if origin is None else origin
        self.marks: list[tuple[str, float]] = []
        self.reported = False

    def mark(self, phase: str) -> None:
        """`phase` ends now (it began when the previous one ended)."""
        self.marks.append((phase, time.time()))

    def phases(self) -> dict[str, float]:
        """Seconds per phase; the first phase starts at the process's start (or, where
        that is unknown, the clock's first mark starts the count)."""
        out, previous = {}, self.origin
        for phase, at in self.marks:
            if previous is not None:
                out[phase] = max(0.0, at - previous)
            previous = at
        return out

    def report(self) -> tuple[str, dict[str, float]]:
        """(the line to print, the metrics row) once; later calls give ("", {})."""
        if self.reported:
            return "", {}
        self.reported = True
        phases = self.phases()
        total = sum(phases.values())
        parts = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in phases.items())
        row = {f"startup/{phase.replace(' ', '_')}_s": s for phase, s in phases.items()}
        row["startup/total_s"] = total
        return f"first step {total:.1f} s after start ({parts})", row
