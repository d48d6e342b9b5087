"""The run directory: checked usable and locked before anything is written to it, and
the disk errors met while writing it turned into one line that says what to do.

The lock is `<workdir>/train.lock`, holding the host, pid and start time of the
process that trains there (process 0 of a job). A second trainer in the same directory
is refused with one line naming that process, instead of both racing over the
checkpoints. A lock left by a process that died (kill -9, a crash) on this host is
taken over with a warning; one from another host cannot be checked from here, so the
message says which file to remove. Object stores (gs://) have no exclusive create: a
URL workdir is not locked.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
from collections.abc import Iterator

from t5x_lite import fileio
from t5x_lite.errors import UserError

LOCK_FILE = "train.lock"

# Locks this process holds: path -> how many nested `hold`s (fine-tuning takes the
# lock before it copies its tokenizer in, then trains, which takes it again).
_held: dict[str, int] = {}


def describe_os_error(error: OSError, workdir: str) -> str:
    """One line for a failed write under `workdir`: what happened and what to change."""
    where = f"--workdir {workdir}"
    if error.errno == errno.ENOSPC or error.errno == errno.EDQUOT:
        return f"no space left on the disk of {where}; free space or use another --workdir"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where} is not writable ({error.strerror}); use a directory you can write to"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{where} is a file, not a directory; give a directory for the run"
    name = f" ({error.filename})" if error.filename else ""
    return f"writing to {where} failed: {error.strerror or error}{name}"


def prepare(workdir: str) -> None:
    """Make `workdir` (a one-line error if it is a file or cannot be written)."""
    if not fileio.is_url(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file, not a directory; give a directory")
    try:
        fileio.makedirs(workdir)
    except OSError as error:
        raise UserError(describe_os_error(error, workdir)) from None


@contextlib.contextmanager
def hold(workdir: str, *, enabled: bool = True) -> Iterator[None]:
    """Hold the workdir's lock while the block runs (nothing if not `enabled`: the
    processes of a job other than 0, or a URL workdir)."""
    if not enabled or fileio.is_url(workdir):
        prepare(workdir)
        yield
        return
    path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    if path in _held:
        _held[path] += 1
    else:
        prepare(workdir)
        _acquire(path, workdir)
        _held[path] = 1
    try:
        yield
    finally:
        _held[path] -= 1
        if not _held[path]:
            del _held[path]
            _release(path)


def _me() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": process_start_time(pid)}


def _acquire(path: str, workdir: str) -> None:
    for _ in range(2):  # a stale lock is removed once, then taken like a free one
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _take_over_if_stale(path, workdir)
            continue
        except OSError as error:
            raise UserError(describe_os_error(error, workdir)) from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(_me()) + "\n")
        return
    raise UserError(f"--workdir {workdir} was locked again while starting; retry")


def _take_over_if_stale(path: str, workdir: str) -> None:
    """Remove the lock at `path` if its process is gone; else a one-line refusal."""
    owner = _read(path)
    if owner is not None and owner.get("host") != socket.gethostname():
        raise UserError(
            f"--workdir {workdir} is locked by pid {owner.get('pid')} on host "
            f"{owner.get('host')}; if that run has ended, remove {path}"
        )
    if owner is not None and _alive(owner):
        raise UserError(
            f"--workdir {workdir} is in use by another trainer (pid {owner['pid']} on "
            f"this host); wait for it to end or stop it, or use another --workdir"
        )
    was = f"pid {owner.get('pid')}" if owner else "an unreadable lock"
    print(
        f"warning: taking over the lock of --workdir {workdir} from {was}, which is no "
        "longer running",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _read(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.loads(f.read())
    except FileNotFoundError:
        return {}  # released in between: free now
    except (OSError, ValueError):
        return None  # torn by a crash while it was written
    return owner if isinstance(owner, dict) else None


def _alive(owner: dict) -> bool:
    """Whether the process that wrote the lock still runs (and is not a later process
    that reuses its pid, when the start time tells)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, run by another user
    started = process_start_time(pid)
    return owner.get("started") is None or started is None or started == owner["started"]


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])  # field 22 of stat(5); fields here start at field 3
    except (OSError, IndexError, ValueError):
        return None


def _release(path: str) -> None:
    owner = _read(path)
    if owner and owner.get("pid") == os.getpid():
        with contextlib.suppress(OSError):
            os.remove(path)
