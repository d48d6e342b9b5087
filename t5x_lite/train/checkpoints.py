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

import json

import jax
import orbax.checkpoint as ocp

from t5x_lite import config as config_lib
from t5x_lite import fileio
from t5x_lite.errors import UserError
from t5x_lite.train import distributed

# Config sections that must match between a checkpoint and the run that restores it.
STRUCTURAL_SECTIONS = ("model", "objective", "tokenizer")


class Checkpointer:
    def __init__(self, workdir: str, *, every: int, keep: int):
        # A string orbax turns into an epath.Path: gs:// goes to tensorstore's own driver.
        self.directory = fileio.absolute(fileio.join(workdir, "checkpoints"))
        self.every = every
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "data", "config"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, config, *, force: bool = False) -> bool:
        """Every process calls this each step with its own {shard: state}; a collective
        on the steps that save."""
        if not force and (self.every <= 0 or step % self.every):
            return False
        if step in self.manager.all_steps():
            return False
        data_state = {
            s: v for shards in distributed.gather_json(data_state) for s, v in shards.items()
        }
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(config_lib.to_dict(config)),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state, config):
        """Restore onto the shardings of `abstract_state` (ShapeDtypeStructs with shardings)."""
        saved_config = self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        ).config
        changed = config_lib.diff(saved_config, config, STRUCTURAL_SECTIONS)
        if changed:
            raise UserError(
                f"the checkpoint in {self.directory} was made with a different config "
                f"({'; '.join(changed[:3])}); use a new --workdir or the original settings"
            )
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

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
