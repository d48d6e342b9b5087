"""The workdir lock: held while training, refused to a second live trainer, taken over
from a dead one (with a warning), and re-entrant within one process."""

import json
import os
import subprocess
import sys

import pytest

from t5x_lite.errors import UserError
from t5x_lite.train import workdir as workdir_lib


def _lock(workdir, **owner) -> str:
    path = os.path.join(workdir, workdir_lib.LOCK_FILE)
    with open(path, "w") as f:
        f.write(json.dumps(owner))
    return path


def test_held_while_the_block_runs_and_reentrant(tmp_path):
    workdir = str(tmp_path / "run")
    path = os.path.join(workdir, workdir_lib.LOCK_FILE)
    with workdir_lib.hold(workdir):
        owner = json.load(open(path))
        assert owner["pid"] == os.getpid() and owner["host"] == os.uname().nodename
        with workdir_lib.hold(workdir):  # fine-tuning, then its trainer
            assert os.path.exists(path)
        assert os.path.exists(path)
    assert not os.path.exists(path)


def test_a_dead_process_lock_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock(tmp_path, host=os.uname().nodename, pid=dead.pid, started=1)
    with workdir_lib.hold(str(tmp_path)):
        pass
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: taking over the lock") and str(dead.pid) in line


def test_a_reused_pid_is_not_the_owner(tmp_path, capsys):
    # Our own pid, but another start time: the process that wrote the lock is gone.
    _lock(tmp_path, host=os.uname().nodename, pid=os.getpid(), started=-1)
    with workdir_lib.hold(str(tmp_path)):
        pass
    assert "taking over the lock" in capsys.readouterr().err


def test_a_torn_lock_is_taken_over(tmp_path, capsys):
    (tmp_path / workdir_lib.LOCK_FILE).write_text('{"host": "x", "pi')
    with workdir_lib.hold(str(tmp_path)):
        pass
    assert "from an unreadable lock" in capsys.readouterr().err


def test_a_live_lock_and_another_hosts_lock_are_refused(tmp_path):
    _lock(tmp_path, host=os.uname().nodename, pid=os.getppid(), started=None)
    refused = pytest.raises(UserError, match=f"in use by another trainer \\(pid {os.getppid()}")
    with refused, workdir_lib.hold(str(tmp_path)):
        pass
    path = _lock(tmp_path, host="elsewhere", pid=123, started=None)
    refused = pytest.raises(UserError, match=f"pid 123 on host elsewhere; .*remove {path}")
    with refused, workdir_lib.hold(str(tmp_path)):
        pass
    assert os.path.exists(path)  # not ours to remove


def test_disabled_or_url_workdirs_take_no_lock(tmp_path):
    with workdir_lib.hold(str(tmp_path / "run"), enabled=False):
        assert os.listdir(tmp_path / "run") == []
