"""Host memory, opt-in: glibc's malloc keeps what XLA:CPU frees, so the next step reuses
it (T5X_LITE_KEEP_FREED_MEMORY=1).

XLA:CPU allocates each step's temporaries afresh (~4.7 GB for `gpt_small` or `t5_small`
at batch 8 x 512 when this was measured; ~1.5 GB since `models/recompute.py`) and frees
them after the step. glibc serves an allocation that large
with a fresh mmap and unmaps it on free, and the allocating thread is one of XLA's, whose
own malloc arena cannot grow past 64 MB and falls back to mmap in any case. So every
step touches ~1.3-1.5 million new pages that the kernel must zero: 5-8 s of system time
in a 12-15 s step on the 2-core EPYC. (Transparent huge pages cut the faults ~25x but
not the system time: the zeroing is the cost.) `keep_freed_memory()` has malloc serve
every thread from the main heap (one arena), never mmap a chunk, and never give freed
memory back (`mallopt`: M_ARENA_MAX 1, M_MMAP_MAX 0, M_TRIM_THRESHOLD -1). Once the
heap has settled, a step reuses pages it already has: no page faults, and the step is
faster (medians of five steps alone: `gpt_small` 13.3-13.8 s -> 10.7 s, `t5_small`
12.5-13.9 s -> 10.7-10.9 s; in two consecutive `make bench-compare` runs, off then on:
13.5 -> 8.8 s, 14.1 -> 8.3 s, `roberta_small` 10.7 -> 6.5 s).

Why it is not the default: the heap can take several copies of the temporaries before
it settles. Seen on `t5_small` with glibc 2.36 (Debian 12): resident memory 6.4 -> 11.0
-> 15.7 GB over the first three steps, then steady; in another run one extra copy at
step 2 and another at step 9. The likely cause (not proven): an aligned allocation,
as XLA's are, needs a hole larger than the chunk it freed, so a freed temporary that
small allocations have since fenced in is not reused. Turn it on where memory allows
about three times the step's temporaries. The CLI applies it before JAX starts;
elsewhere nothing changes. Where the C library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

from t5x_lite.errors import UserError

ENV = "T5X_LITE_KEEP_FREED_MEMORY"
# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def wanted() -> bool:
    """Whether T5X_LITE_KEEP_FREED_MEMORY asks for it (unset: no)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UserError(f"{ENV}={value!r}; use 1 (keep freed memory) or 0 (malloc's default)")


def keep_freed_memory() -> bool:
    """One malloc arena, no mmapped chunks, no trimming; -> whether it applied (glibc
    only). Call it before JAX starts its threads: a thread that has already allocated
    keeps its own arena."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
