"""Host memory: glibc's malloc keeps what XLA:CPU frees, so the next step reuses it. The
`t5x-lite` command does this by default; T5X_LITE_KEEP_FREED_MEMORY=0 turns it off.

XLA:CPU allocates each step's temporaries afresh and frees them after the step. glibc
serves the allocating threads (XLA's) from arenas of their own, whose heaps cannot grow
past 64 MB, fall back to mmap for anything larger and are unmapped when they empty; so
each step faults in and zeroes pages it had a moment ago. `keep_freed_memory()` has
malloc serve every thread from the main heap (one arena), never mmap a chunk, and never
give freed memory back (`mallopt`: M_ARENA_MAX 1, M_MMAP_MAX 0, M_TRIM_THRESHOLD -1).
Once the heap has settled, a step reuses pages it already has.

What it saves (2-core AMD EPYC, warm compile cache, whole commands, off then on):
- `finetune t5_tiny_sst2` (2,000 examples, 375 steps): 5.2 million page faults and
  11-13 s of system time -> 0.28 million and 2.1-2.4 s; 37.7-46.4 s -> 33.9-41.1 s wall.
  `bert_tiny_sst2` 12.3-12.6 -> 11.6-11.8 s, `gpt_tiny_sst2` 21.9 -> 20.3 s.
- Large steps, in earlier measurements: `gpt_small` or `t5_small` at batch 8 x 512
  allocated ~4.7 GB of temporaries a step (~1.5 GB since `models/recompute.py`): 1.3-1.5
  million faults and 5-8 s of system time in a 12-15 s step; kept, the median step went
  13.3-13.8 -> 10.7 s (`gpt_small`), 12.5-13.9 -> 10.7-10.9 s (`t5_small`). Transparent
  huge pages cut the faults ~25x but not the system time: the zeroing is the cost.
- It is not ours alone: PyTorch's train steps gained as much with the same settings
  (`gpt_small` fp32 8.8-9.0 -> 7.2-7.9 s), so `bench --compare` gives its process ours
  (`--torch_malloc=same`). The development machine is a VM whose balloon reports free
  pages to the host, which likely makes fresh pages dearer there than on bare metal.

The price: the heap can take several copies of the temporaries before it settles. Seen
on `t5_small` (4.7 GB of temporaries) with glibc 2.36 (Debian 12): resident memory 6.4
-> 11.0 -> 15.7 GB over the first three steps, then steady; in another run one extra copy
at step 2 and another at step 9. The likely cause (not proven): an aligned allocation,
as XLA's are, needs a hole larger than the chunk it freed, so a freed temporary that
small allocations have since fenced in is not reused. When it is on by default and the
process's peak resident memory passes half the machine's, the training loop says so once
(`memory_note`), naming the setting that turns it off.

The CLI applies it before JAX starts (a thread that has already allocated keeps its own
arena); a program that imports t5x_lite is left as it is. Where the C library is not glibc
it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource

from t5x_lite.errors import UserError

ENV = "T5X_LITE_KEEP_FREED_MEMORY"
# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8

# The share of the machine's memory that the process's peak must pass for `memory_note`.
NOTE_SHARE = 0.5

# Set by the CLI: whether it kept freed memory without being asked to (the default).
_kept_by_default = False
_noted = False
_kept = False  # whether keep_freed_memory() applied in this process


def wanted() -> bool:
    """Whether to keep freed memory: T5X_LITE_KEEP_FREED_MEMORY=1 or unset (the default)
    yes, 0 no."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UserError(f"{ENV}={value!r}; use 1 (keep freed memory) or 0 (malloc's default)")


def apply_setting() -> bool:
    """The CLI's start: keep freed memory unless T5X_LITE_KEEP_FREED_MEMORY=0; ->
    whether it applied."""
    global _kept_by_default
    if not wanted():
        return False
    applied = keep_freed_memory()
    _kept_by_default = applied and not os.environ.get(ENV, "").strip()
    return applied


def memory_note(peak_bytes: int | None = None, total_bytes: int | None = None) -> str:
    """Once, where freed memory is kept by default and the process's peak resident memory
    has passed NOTE_SHARE of the machine's: a line saying so and how to turn it off;
    otherwise "". The arguments replace the measured figures (tests)."""
    global _noted
    if _noted or not _kept_by_default:
        return ""
    if peak_bytes is None:  # Linux reports ru_maxrss in KiB
        peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if total_bytes is None:
        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if peak_bytes <= NOTE_SHARE * total_bytes:
        return ""
    _noted = True
    return (
        f"note: peak resident memory {peak_bytes / 2**30:.1f} of {total_bytes / 2**30:.1f} "
        f"GiB; freed memory is kept for reuse by default ({ENV}=0 gives it back, "
        "at the cost of page faults each step; t5x_lite/host_memory.py)"
    )


def keep_freed_memory() -> bool:
    """One malloc arena, no mmapped chunks, no trimming; -> whether it applied (glibc
    only). Call it before JAX starts its threads: a thread that has already allocated
    keeps its own arena."""
    global _kept
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim
    _kept = all(libc.mallopt(param, value) == 1 for param, value in settings)
    return _kept


def kept() -> bool:
    """Whether this process keeps freed memory (keep_freed_memory() applied)."""
    return _kept
