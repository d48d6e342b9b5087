"""Orbax checkpoints: a step directory holds the train state, the data iterator's
position and the resolved config.

The data position is one JSON {data shard: grain state} for the whole job. Orbax writes
JSON items from the primary process only, so `save` first gathers every process's shards
onto all of them; on restore every process reads the file and takes its own shards.
With `config.data.num_shards` fixed, a checkpoint resumes on any process count that
divides it; the train state is restored onto the new run's mesh and shardings.

Orbax writes each step into a temporary directory and renames it when complete, so a
crash or Ctrl-C mid-save leaves the previous step as the latest good checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys

import jax
import orbax.checkpoint as ocp

from t5x_lite import config as config_lib
from t5x_lite import fileio
from t5x_lite.errors import UserError
from t5x_lite.train import distributed
from t5x_lite.train import workdir as workdir_lib

# Config sections that must match between a checkpoint and the run that restores it.
STRUCTURAL_SECTIONS = ("model", "objective", "tokenizer")
ITEMS = ("state", "data", "config")
# Where a damaged step is moved: `checkpoints/30.damaged` (orbax ignores the name).
DAMAGED_SUFFIX = ".damaged"


class Checkpointer:
    def __init__(self, workdir: str, *, every: int, keep: int, set_aside_damaged: bool = True):
        """`set_aside_damaged`: move a damaged step out of the way (a trainer that
        resumes), or only pass over it (eval, generate: they write nothing there)."""
        if keep < 1:  # config validation says which key; this guards library callers
            raise UserError(f"config.train.keep_checkpoints={keep} must be >= 1")
        # A string orbax turns into an epath.Path: gs:// goes to tensorstore's own driver.
        self.directory = fileio.absolute(fileio.join(workdir, "checkpoints"))
        self.every = every
        self.set_aside_damaged = set_aside_damaged
        self._passed_over: set[int] = set()  # damaged steps left in place
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=ITEMS,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether `save` writes `step` without being forced."""
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state, data_state: dict, config, *, force: bool = False) -> bool:
        """Every process calls this each step with its own {shard: state}; a collective
        on the steps that save. A save that fails (here, or an earlier one in the
        background) is a UserError: training never goes on past a lost checkpoint."""
        if not (force or self.due(step)):
            return False
        if step in self.manager.all_steps():
            return False
        data_state = {
            s: v for shards in distributed.gather_json(data_state) for s, v in shards.items()
        }
        items = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config_lib.to_dict(config)),
        )
        with self._save_errors(step):
            self.manager.check_for_errors()
            return self._write(step, items)

    def _write(self, step: int, items) -> bool:
        return self.manager.save(step, args=items, force=True)

    def check_for_errors(self) -> None:
        """Raise (one line) if a save running in the background has failed."""
        with self._save_errors(None):
            self.manager.check_for_errors()

    @contextlib.contextmanager
    def _save_errors(self, step: int | None):
        try:
            yield
        except UserError:
            raise
        except Exception as error:  # orbax re-raises a background save's error as is
            what = f"saving checkpoint step {step}" if step is not None else "a checkpoint save"
            workdir = os.path.dirname(self.directory)  # a string cut: right for URLs too
            os_error = _os_error(error)
            why = (
                workdir_lib.describe_os_error(os_error, workdir)
                if os_error is not None
                else f"{type(error).__name__}: {_first_line(error)}"
            )
            raise UserError(
                f"{what} failed, so training stopped: {why}; the latest saved step is "
                f"{self._saved_step()} (rerun the same command to resume from it)"
            ) from None

    def _saved_step(self) -> int | None:
        with contextlib.suppress(Exception):
            self.manager.reload()
            return self.manager.latest_step()
        return None

    def newest_intact(self, config) -> int | None:
        """The newest step whose files look whole, after checking that its config fits
        `config` (one-line UserError if not). Damaged steps on the way are reported in
        one line each (and moved aside); None if there is no step at all."""
        steps = set(self.manager.all_steps()) - self._passed_over
        for step in sorted(steps, reverse=True):
            problem = self.inspect(step)
            if problem is None:
                self._check_config(step, config)
                return step
            self._damaged(step, problem)
        damaged = self._damaged_steps()
        if damaged:
            raise UserError(
                f"no intact checkpoint in {self.directory} (damaged: {', '.join(damaged)}); "
                "remove the damaged steps to start over from step 0, or use a new --workdir"
            )
        return None

    def inspect(self, step: int) -> str | None:
        """What is wrong with step `step`'s files, or None if they look whole: each item
        present, its metadata whole JSON, the train state's array index present. (Array
        files are only read by a restore: see `restore`.)"""
        step_dir = fileio.join(self.directory, str(step))
        for item in ITEMS:
            if not fileio.isdir(fileio.join(step_dir, item)):
                return f"{item}/ is missing"
        for item, name in (("state", "_METADATA"), ("data", "metadata"), ("config", "metadata")):
            path = fileio.join(step_dir, item, name)
            if not fileio.isfile(path):
                return f"{item}/{name} is missing"
            try:
                text = fileio.read_text(path)
            except (OSError, UnicodeDecodeError) as error:
                return f"{item}/{name} is unreadable ({error})"
            if not text.strip():
                return f"{item}/{name} is empty"
            try:
                value = json.loads(text)
            except ValueError:
                return f"{item}/{name} is not valid JSON"
            if not isinstance(value, dict):
                return f"{item}/{name} is not a JSON object"
        if not fileio.isfile(fileio.join(step_dir, "state", "manifest.ocdbt")):
            return "state/manifest.ocdbt is missing"
        return None

    def _check_config(self, step: int, config) -> None:
        saved_config = self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        ).config
        changed = config_lib.diff(saved_config, config, STRUCTURAL_SECTIONS)
        if changed:
            raise UserError(
                f"the checkpoint in {self.directory} was made with a different config "
                f"({'; '.join(changed[:3])}); use a new --workdir or the original settings"
            )

    def restore(self, abstract_state, config, set_data_state=None):
        """(step, state, {shard: data state}) of the newest step that restores, onto the
        shardings of `abstract_state` (ShapeDtypeStructs with shardings); None if there
        is no checkpoint. `set_data_state(data)` (e.g. a data iterator's `set_state`)
        is part of the check: a step whose data state it refuses is damaged too."""
        step = self.newest_intact(config)
        while step is not None:
            try:
                state, data = self.restore_step(step, abstract_state)
                if set_data_state is not None:
                    set_data_state(data)
                return step, state, data
            except UserError:
                raise
            except Exception as error:  # tensorstore raises bare Exceptions
                if _out_of_memory(error):
                    raise
                self._damaged(step, f"{type(error).__name__}: {_first_line(error)}")
                step = self.newest_intact(config)
        return None

    def restore_step(self, step: int, abstract_state):
        """Step `step`'s train state and {shard: data state}, nothing checked."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        data = restored.data
        if not all(key.isdigit() for key in data):  # made before data shards: one process
            data = {"0": data}
        return restored.state, data

    def _damaged(self, step: int, problem: str) -> None:
        """Say (once, from process 0) that `step` is damaged, and move it aside so that
        the next save does not count it: `checkpoints/<step>.damaged`."""
        step_dir = fileio.join(self.directory, str(step))
        if not self.set_aside_damaged:
            _warn(f"checkpoint step {step} is damaged ({problem}); using an earlier step")
            self._passed_over.add(step)
            return
        target = _free_name(f"{step_dir}{DAMAGED_SUFFIX}")
        if jax.process_index() == 0:
            _warn(
                f"checkpoint step {step} is damaged ({problem}); moved it to "
                f"{target} and resuming from the newest intact step"
            )
            fileio.as_path(step_dir).rename(target)
        distributed.barrier(f"set aside step {step}")
        self.manager.reload()

    def _damaged_steps(self) -> list[str]:
        if not fileio.isdir(self.directory):
            return []
        names = [n for n in fileio.listdir(self.directory) if DAMAGED_SUFFIX in n]
        names += [str(step) for step in sorted(self._passed_over)]
        return sorted(names)

    def close(self, *, quiet: bool = False) -> None:
        """Wait for a save in flight and close; `quiet`: after another error, whose
        message wins over a failing save's."""
        if quiet:
            with contextlib.suppress(Exception):
                self.manager.close()
            return
        with self._save_errors(None):
            self.manager.wait_until_finished()
        self.manager.close()


def _free_name(path: str) -> str:
    """`path`, or `path.1`, `path.2`... : the first that does not exist."""
    candidate, i = path, 0
    while fileio.exists(candidate):
        i += 1
        candidate = f"{path}.{i}"
    return candidate


def _warn(line: str) -> None:
    if jax.process_index() == 0:
        print(f"warning: {line}", file=sys.stderr, flush=True)


def _first_line(error: BaseException, limit: int = 160) -> str:
    line = (str(error).strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind `error` (itself, or its cause or context), if any."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        if "No space left on device" in str(error):
            return OSError(errno.ENOSPC, "No space left on device")
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _out_of_memory(error: BaseException) -> bool:
    """Not damage: the restore itself ran out of (device) memory."""
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


def abstract_with_shardings(tree, shardings):
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        tree,
        shardings,
    )


# The heads nothing trained in a run (models/heads.py), next to its checkpoints.
HEADS_FILE = "heads.json"


def write_untrained_heads(workdir: str, untrained, origin: str) -> None:
    fileio.makedirs(workdir)
    heads = {"untrained": sorted(untrained), "origin": origin}
    fileio.write_text(fileio.join(workdir, HEADS_FILE), json.dumps(heads, indent=2))


def read_untrained_heads(workdir: str) -> frozenset:
    """The heads a run never trained (runs older than heads.json: none known)."""
    path = fileio.join(workdir, HEADS_FILE)
    if not fileio.isfile(path):
        return frozenset()
    try:
        return frozenset(json.loads(fileio.read_text(path))["untrained"])
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{path} is not readable ({error}); restore or remove it") from None
