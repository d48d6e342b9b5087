"""The one trainer. Every objective and architecture goes through `train`.

Read top to bottom: mesh, data, model & optimizer (shapes via `jax.eval_shape`), shard &
init, step functions, restore, loop (with evals, metrics and checkpoints).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import signal
import sys
import threading
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5x_lite import config as config_lib
from t5x_lite import fileio, host_memory, models, validate
from t5x_lite.data import inputs, packing
from t5x_lite.errors import Interrupted, UserError
from t5x_lite.models import heads
from t5x_lite.train import checkpoints, distributed, losses, optim, partitioning, startup
from t5x_lite.train import metrics as metrics_lib
from t5x_lite.train import workdir as workdir_lib
from t5x_lite.train.state import TrainState


@dataclasses.dataclass
class Run:
    """Everything built from a config that train, bench and downstream commands share."""

    config: object
    mesh: jax.sharding.Mesh
    rules: tuple
    tokenizer: object
    objective: object
    model: nn.Module
    tx: object
    state_shardings: object
    abstract_state: object

    def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zeros shaped like a packed batch (features, segment ids, positions)."""
        return packing.zero_batch(self.objective.feature_lengths(), batch_size)


def build_run(config, tokenizer, devices=None, wrap_optimizer=None) -> Run:
    """Mesh (over `devices`, default all), objective, model, optimizer and the train
    state's shapes and shardings; settings that cannot shard fail here, before compiling.
    `wrap_optimizer(tx, params)` (params may be shapes) may change the optimizer, e.g.
    to freeze parameters."""
    validate.check(config)
    mesh = partitioning.make_mesh(config.partitioning.mesh, devices)
    rules = partitioning.rules(config.partitioning)
    partitioning.check_batch_size(config.data.batch_size, mesh)
    objective = inputs.build_objective(config, tokenizer)
    # Model and optimizer; shapes and shardings without allocating anything.
    model = models.build_model(config.model)
    tx = optim.make_optimizer(config.optimizer, config.train.num_steps)
    run = Run(config, mesh, rules, tokenizer, objective, model, tx, None, None)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed_params = jax.eval_shape(params_initializer(run), jax.random.key(0))
    params = nn.meta.unbox(boxed_params)
    if wrap_optimizer is not None:
        run.tx = wrap_optimizer(run.tx, params)
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        opt_state=jax.eval_shape(run.tx.init, params),
    )
    run.state_shardings = _state_shardings(run, boxed_params, abstract)
    partitioning.check_divisible(boxed_params, run.state_shardings.params)
    run.abstract_state = checkpoints.abstract_with_shardings(abstract, run.state_shardings)
    return run


def params_initializer(run: Run):
    """rng -> params still wrapped with their logical axis names."""
    return lambda rng: run.model.init({"params": rng}, run.dummy_batch(1), deterministic=True)[
        "params"
    ]


def _init(run: Run):
    def init(rng):
        params = nn.meta.unbox(params_initializer(run)(rng))
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=run.tx.init(params)
        )

    return init


def _state_shardings(run: Run, boxed_params, abstract: TrainState) -> TrainState:
    """Params sharded by their logical names; optimizer moments shaped like a parameter
    share its sharding (FSDP for Adam's mu/nu), anything else (Adafactor's factored row
    and column statistics, counters) is small and replicated."""
    param_shardings = partitioning.logical_shardings(boxed_params, run.mesh, run.rules)
    replicated = partitioning.replicated(run.mesh)
    opt_shardings = optax.tree_map_params(
        run.tx,
        lambda leaf, param, sharding: sharding if leaf.shape == param.shape else replicated,
        abstract.opt_state,
        abstract.params,
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)


def init_state(run: Run, seed: int) -> TrainState:
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
        return jax.jit(_init(run), out_shardings=run.state_shardings)(jax.random.key(seed))


def loss_sums(run: Run, params, batch, *, dropout_rng) -> dict:
    """Model outputs scored by each of the objective's loss terms -> {term: its sums}.
    Sums, not means: the caller normalizes (by the whole batch's weights when training
    in micro-batches)."""
    deterministic = dropout_rng is None
    rngs = {} if deterministic else {"dropout": dropout_rng}
    outputs = run.model.apply({"params": params}, batch, deterministic=deterministic, rngs=rngs)
    sums = {}
    for term in run.objective.loss_terms:
        sums[term.name] = losses.cross_entropy(
            outputs[term.output],
            batch[term.targets],
            batch[term.weights],
            label_smoothing=run.config.loss.label_smoothing,
            z_loss=run.config.loss.z_loss,
        )
        if term.selected_from:
            weighted = jnp.sum(batch[term.selected_from].astype(jnp.float32))
            sums[term.name]["unscored_sum"] = weighted - sums[term.name]["weight_sum"]
    return sums


def make_train_step(run: Run):
    """The jitted step: gradients summed over `config.train.microbatches` micro-batches,
    normalized by the whole batch's weights, so the update equals one full-batch step."""
    num_micro = run.config.train.microbatches
    check_microbatches(run.config.data.batch_size, num_micro, run.mesh)
    dropout_key = jax.random.key(run.config.seed + 1)
    skip_nonfinite = run.config.train.nan_policy == "skip_step"
    schedule = optim.learning_rate_schedule(run.config.optimizer, run.config.train.num_steps)

    def train_step(state: TrainState, batch):
        batch = run.objective.device_features(batch)
        # Dropout depends only on the step, so a resumed run draws the same masks.
        rng = jax.random.fold_in(dropout_key, state.step)
        weight_sums = _weight_sums(run, batch)
        if num_micro == 1:
            grads, sums = _grads_and_sums(run, state.params, batch, weight_sums, rng)
        else:
            grads, sums = _accumulate(run, state.params, batch, weight_sums, rng, num_micro)
        new_state = state.apply_gradients(grads, run.tx)
        grad_norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
        finite = jnp.isfinite(grad_norm)
        for term_sums in sums.values():
            finite &= jnp.isfinite(term_sums["loss_sum"])
        if skip_nonfinite:  # drop the update (the step still counts) and its metrics
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_state = new_state.replace(
                params=jax.tree.map(keep, new_state.params, state.params),
                opt_state=jax.tree.map(keep, new_state.opt_state, state.opt_state),
            )
            sums = jax.tree.map(lambda x: jnp.where(finite, x, jnp.zeros_like(x)), sums)
            grad_norm = jnp.where(finite, grad_norm, 0.0)
        extras = {
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step),
            "nonfinite_steps": 1 - finite.astype(jnp.int32),
            # The first non-finite step of a logging interval (summed with a minimum).
            FIRST_NONFINITE: jnp.where(finite, NO_STEP, state.step + 1).astype(jnp.int32),
        }
        return new_state, (sums, extras)

    replicated = partitioning.replicated(run.mesh)
    return jax.jit(
        train_step,
        in_shardings=(run.state_shardings, partitioning.batch_sharding(run.mesh)),
        out_shardings=(run.state_shardings, replicated),
        donate_argnums=0,
    )


# Step metrics that combine over a logging interval by minimum instead of sum.
FIRST_NONFINITE = "first_nonfinite_step"
NO_STEP = np.iinfo(np.int32).max


def add_step_metrics(pending, step_metrics):
    """Step metrics summed over a logging interval (on device: no host sync)."""
    if pending is None:
        return step_metrics
    return _sum_step_metrics(pending, step_metrics)


@jax.jit
def _sum_step_metrics(pending, step_metrics):
    """One dispatch for the whole tree. Leaf by leaf (~15 eager adds a step), the adds
    waited on the step still running, so the next batch was read only after it: 3.7 s
    of bert_tiny_sst2's 17 s command on 2 cores, against 0.1-0.2 s for this."""
    (sums, extras), (new_sums, new_extras) = pending, step_metrics
    combined = {
        key: (jnp.minimum if key == FIRST_NONFINITE else jnp.add)(extras[key], new_extras[key])
        for key in extras
    }
    return jax.tree.map(jnp.add, sums, new_sums), combined


def check_microbatches(batch_size: int, num_micro: int, mesh) -> None:
    """Every micro-batch must still give each data-parallel device the same number of rows."""
    dp = partitioning.data_parallel_size(mesh)
    if num_micro < 1 or batch_size % num_micro or (batch_size // num_micro) % dp:
        raise UserError(
            f"config.train.microbatches={num_micro} must split config.data.batch_size="
            f"{batch_size} into micro-batches whose rows are a multiple of the data-parallel "
            f"size {dp} (mesh data x fsdp); use a divisor of {max(batch_size // dp, 1)}"
        )


def _weight_sums(run: Run, batch) -> dict[str, jax.Array]:
    """Each loss term's weight sum over the whole batch: the full-batch normalizer that
    every micro-batch divides by (read from the weight features, no model needed)."""
    return {
        term.name: jnp.maximum(jnp.sum(batch[term.weights].astype(jnp.float32)), 1.0)
        for term in run.objective.loss_terms
    }


def _grads_and_sums(run: Run, params, batch, weight_sums, rng):
    """Gradient of sum_t loss_sum_t / weight_sums[t] on `batch` -> (grads, per-term sums)."""

    def loss_fn(p):
        sums = loss_sums(run, p, batch, dropout_rng=rng)
        total = sum(
            term.scale * sums[term.name]["loss_sum"] / weight_sums[term.name]
            for term in run.objective.loss_terms
        )
        return total, sums

    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, sums


def _accumulate(run: Run, params, batch, weight_sums, rng, num_micro: int):
    """Scan over micro-batches, summing float32 gradients and the metric sums.

    Micro-batch m takes rows m, m + M, m + 2M, ...: [B, ...] -> [B/M, M, ...] -> swap
    axes, so each device's rows of every micro-batch are rows it already holds."""
    micro_sharding = jax.sharding.NamedSharding(
        run.mesh, jax.sharding.PartitionSpec(None, partitioning.BATCH_AXES)
    )

    def split(feature):  # [batch, ...] -> [micro, batch / micro, ...]
        rows = feature.reshape(feature.shape[0] // num_micro, num_micro, *feature.shape[1:])
        return jax.lax.with_sharding_constraint(jnp.swapaxes(rows, 0, 1), micro_sharding)

    def body(carry, micro):
        index, micro_batch = micro
        micro_rng = jax.random.fold_in(rng, index)
        grads, sums = _grads_and_sums(run, params, micro_batch, weight_sums, micro_rng)
        acc_grads, acc_sums = carry
        acc_grads = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc_grads, grads)
        acc_grads = jax.lax.with_sharding_constraint(acc_grads, run.state_shardings.params)
        return (acc_grads, jax.tree.map(jnp.add, acc_sums, sums)), None

    micro_batches = {name: split(feature) for name, feature in batch.items()}
    zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    zero_grads = jax.lax.with_sharding_constraint(zero_grads, run.state_shardings.params)
    first = jax.tree.map(lambda feature: feature[0], micro_batches)
    sums_shape = jax.eval_shape(lambda b: loss_sums(run, params, b, dropout_rng=rng), first)
    zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
    (grads, sums), _ = jax.lax.scan(
        body, (zero_grads, zero_sums), (jnp.arange(num_micro), micro_batches)
    )
    return grads, sums


def make_eval_step(run: Run):
    def eval_step(params, batch):
        return loss_sums(run, params, run.objective.device_features(batch), dropout_rng=None)

    return jax.jit(
        eval_step,
        in_shardings=(run.state_shardings.params, partitioning.batch_sharding(run.mesh)),
        out_shardings=partitioning.replicated(run.mesh),
    )


def evaluate_loss(run: Run, eval_step, params, dataset, max_batches: int) -> dict[str, float]:
    """The loss terms' metrics summed over (at most `max_batches` of) `dataset`."""
    totals: dict = {}
    for i, host_batch in enumerate(dataset):
        if max_batches and i >= max_batches:
            break
        sums = eval_step(params, partitioning.host_batch_to_global(host_batch, run.mesh))
        totals = jax.tree.map(lambda a, b: a + b, totals, sums) if totals else sums
    out = {}
    for term, term_sums in jax.device_get(totals).items():
        out.update(metrics_lib.summarize(term_sums, f"eval/{term}"))
    return out


@dataclasses.dataclass
class TrainResult:
    run: Run
    state: TrainState
    history: list  # one dict of metrics per logged step
    workdir: str


@dataclasses.dataclass
class Start:
    """How a use of the trainer other than pretraining starts a run (fine-tuning builds
    one: see downstream/finetune.py). A field left None takes pretraining's way."""

    # (train, eval or None) documents or examples; None: read the config.data sources.
    documents: tuple | None = None
    # None: config.tokenizer.path, the workdir's tokenizer.model, or one trained.
    tokenizer: object | None = None
    # (run, fresh params) -> the first step's params (e.g. a pretrained body).
    initial_params: Callable | None = None
    # (optimizer, params) -> optimizer (e.g. a frozen body).
    wrap_optimizer: Callable | None = None
    # Heads the initial params have no trained weights for; None: all (a fresh start).
    untrained_heads: frozenset | None = None
    origin: str = "random initialization"  # where the initial params come from


def train(
    config, workdir: str, start: Start | None = None, clock: startup.Clock | None = None
) -> TrainResult:
    """Train (or resume) the run described by `config` in `workdir`. `clock`: the
    start-up phases a caller has marked already (fine-tuning's task and tokenizer);
    by default everything before this call counts as imports and config."""
    start = start or Start()
    if clock is None:
        clock = startup.Clock()
        clock.mark("imports and config")
    # Settings that cannot work fail here, before anything is read, written or compiled.
    validate.check(config)
    distributed.initialize(config)  # before anything touches devices
    partitioning.check_batch_size(
        config.data.batch_size, partitioning.make_mesh(config.partitioning.mesh)
    )
    _full_rows_across_processes(config)
    inputs.owned_shards(config.data, jax.process_index(), jax.process_count())
    inputs.check_objective(config)
    # One trainer per workdir (process 0 of a job holds the lock for all of them).
    with workdir_lib.hold(workdir, enabled=jax.process_index() == 0):
        try:
            return _train(config, workdir, start, clock)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            raise UserError(workdir_lib.describe_os_error(error, workdir)) from None


def _train(config, workdir: str, start: Start, clock: startup.Clock) -> TrainResult:
    train_docs, eval_docs = start.documents or inputs.load_documents(config.data)
    ckpt = checkpoints.Checkpointer(
        workdir, every=config.train.checkpoint_every, keep=config.train.keep_checkpoints
    )
    # A resume that the checkpoint refuses (another model) fails before config.json,
    # the run's record of its config, is overwritten.
    ckpt.newest_intact(config)
    if jax.process_index() == 0:  # one writer: processes may share the workdir
        config_lib.save(config, workdir)
    tokenizer = start.tokenizer or inputs.load_or_train_tokenizer(config, workdir, train_docs)
    run = build_run(config, tokenizer, wrap_optimizer=start.wrap_optimizer)
    train_ds = inputs.train_dataset(config, train_docs, run.tokenizer, run.objective)
    eval_ds = eval_docs and inputs.eval_dataset(
        config, eval_docs, run.tokenizer, run.objective, max_batches=config.train.eval_batches
    )
    if eval_ds:  # every process runs as many eval steps, or the collectives hang
        eval_ds.set_num_batches(distributed.max_over_processes(eval_ds.local_num_batches()))
    train_step, eval_step = make_train_step(run), make_eval_step(run)
    clock.mark("data and tokenizer")

    # Restore the newest intact step, or initialize from the seed (and the start's
    # initial params).
    train_iter = iter(train_ds)
    restored = ckpt.restore(run.abstract_state, config, train_iter.set_state)
    if restored is not None:
        first, state, _ = restored
        _say(f"resuming from step {first} ({fileio.join(ckpt.directory, str(first))})")
    else:
        first, state = 0, init_state(run, config.seed)
        if start.initial_params is not None:
            state = state.replace(params=start.initial_params(run, state.params))
        _record_untrained_heads(run, start, workdir)
    clock.mark("state")
    writer = metrics_lib.MetricWriter(workdir, first)
    loop = _Loop(run, ckpt, writer, train_iter, train_step, eval_step, eval_ds, clock)
    try:
        with stop_requests() as stop:
            state = loop.execute(state, first, stop)
    except KeyboardInterrupt:
        ckpt.close()  # lets a save in flight finish; a half-written step is never "latest"
        raise Interrupted(
            f"interrupted; the latest checkpoint is step {ckpt.latest_step()} in "
            f"{ckpt.directory}: rerun the same command to resume"
        ) from None
    except BaseException:
        ckpt.close(quiet=True)
        raise
    finally:
        writer.close()
    ckpt.close()
    if loop.stopped_at is not None:
        raise Interrupted(
            f"stopped at step {loop.stopped_at}; checkpoint saved; rerun the same command to resume"
        )
    return TrainResult(run, state, loop.history, workdir)


def _full_rows_across_processes(config) -> None:
    """Length buckets cut each process's batches to its own longest example, but the
    processes of a job must feed equal shapes: a multi-process run (where fine-tuning's
    default buckets cannot work) feeds full rows, says so, and its config.json says 0."""
    multiple, _ = inputs.bucketing(config.data)
    if multiple and jax.process_count() > 1:
        _say(
            f"config.data.bucket_multiple={multiple}: length buckets need a single process; "
            f"this {jax.process_count()}-process run feeds full rows (bucket_multiple=0)"
        )
        config.data.bucket_multiple = config.data.bucket_window = 0


def _say(line: str) -> None:
    if jax.process_index() == 0:
        print(line, flush=True)


def _record_untrained_heads(run: Run, start: Start, workdir: str) -> None:
    """heads.json: the heads nothing will have trained, the objective training some and
    the initial params bringing the others (see models/heads.py)."""
    model_config = config_lib.to_dict(run.config)["model"]
    outputs = [term.output for term in run.objective.loss_terms if term.scale > 0]
    untrained = heads.of_model(model_config) - heads.trained_by(model_config["arch"], outputs)
    if start.untrained_heads is not None:
        untrained &= start.untrained_heads
    if jax.process_index() == 0:
        checkpoints.write_untrained_heads(workdir, untrained, start.origin)


def _stop_agreed(stop: threading.Event, step: int, every: int) -> bool:
    """Whether the loop stops after `step`. One process checks its own request every
    step. The processes of a job agree every `every` steps (train.log_every, when the
    metrics come to the host anyway): a signal that reached any of them, or reached them
    between different steps, stops all of them after the same step, so they checkpoint
    it together instead of waiting on each other's collectives."""
    if jax.process_count() == 1:
        return stop.is_set()
    if step % every:
        return False
    return bool(distributed.max_over_processes(int(stop.is_set())))


@contextlib.contextmanager
def stop_requests():
    """While the loop runs, Ctrl-C or SIGTERM only asks it to stop after the current
    step; the loop then checkpoints that step and raises KeyboardInterrupt. A second
    signal raises at once. (Raising at an arbitrary bytecode could land inside orbax's
    save machinery and leave `close` waiting forever.)"""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be set from the main thread
        return

    def handle(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        print(
            f"{signal.Signals(signum).name}: stopping after this step (again to stop now)",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Loop:
    """The step loop: feed batches, log every `log_every`, evaluate, checkpoint."""

    def __init__(self, run, ckpt, writer, train_iter, train_step, eval_step, eval_ds, clock):
        self.run, self.ckpt, self.writer, self.clock = run, ckpt, writer, clock
        self.train_iter, self.train_step, self.eval_step = train_iter, train_step, eval_step
        self.eval_ds = eval_ds
        self.history: list[dict] = []
        self.stopped_at: int | None = None  # the step a requested stop saved

    def execute(self, state, start: int, stop: threading.Event):
        cfg = self.run.config.train
        progress = metrics_lib.Progress(start, cfg.num_steps, cfg.progress_bar)
        pending, tokens, tick, last_logged = None, 0, time.perf_counter(), start
        with jax.set_mesh(self.run.mesh), nn.logical_axis_rules(self.run.rules):
            for step in range(start + 1, cfg.num_steps + 1):
                host_batch = next(self.train_iter)
                batch = partitioning.host_batch_to_global(host_batch, self.run.mesh)
                state, step_metrics = self.train_step(state, batch)
                if step == start + 1:  # one wait, to time the start-up
                    jax.block_until_ready(step_metrics)
                    self.clock.mark("compile and first step")
                    progress.write(self.clock.report()[0])
                # Sum metrics on device: no host sync until the next log line.
                pending = add_step_metrics(pending, step_metrics)
                tokens += host_batch[next(iter(host_batch))].size * jax.process_count()
                stopping = _stop_agreed(stop, step, cfg.log_every)
                final = step == cfg.num_steps or stopping
                saving = final or self.ckpt.due(step)
                if step % cfg.log_every == 0 or final:
                    now = time.perf_counter()
                    row = self._log(step, pending, step - last_logged, tokens / (now - tick))
                    term = self.run.objective.loss_terms[0].name
                    progress.set_postfix(
                        loss=f"{row[f'train/{term}/loss']:.3f}",
                        tok_s=f"{row['train/tokens_per_s']:.0f}",
                    )
                    self._check_finite(pending)
                    self.ckpt.check_for_errors()  # a background save that failed
                    if note := host_memory.memory_note():
                        progress.write(note)
                    pending, tokens, tick, last_logged = None, 0, now, step
                elif saving:  # never checkpoint a state that went non-finite
                    self._check_finite(pending)
                progress.update(1)  # every step: a short run shows it moving
                if self.eval_ds is not None and (
                    step % cfg.eval_every == 0 or step == cfg.num_steps
                ):
                    row = evaluate_loss(
                        self.run, self.eval_step, state.params, self.eval_ds, cfg.eval_batches
                    )
                    self.writer.write(step, row)
                    self.history.append({"step": step, **row})
                    progress.write(_format(step, row))
                self.ckpt.save(
                    step, state, self.train_iter.get_state(), self.run.config, force=final
                )
                if stopping:
                    self.stopped_at = step
                    break
        progress.close()
        return state

    def _check_finite(self, pending) -> None:
        """Under nan_policy=stop, a one-line error naming the first non-finite step."""
        if pending is None or self.run.config.train.nan_policy != "stop":
            return
        extras = jax.device_get(pending[1])
        if not extras["nonfinite_steps"]:
            return
        self.ckpt.close(quiet=True)  # lets a save in flight finish
        raise UserError(
            f"the loss or gradient norm is not finite (NaN or inf) at step "
            f"{int(extras[FIRST_NONFINITE])}; training stopped and the last good checkpoint, "
            f"step {self.ckpt.latest_step()} in {self.ckpt.directory}, is intact. Lower "
            "config.optimizer.learning_rate (or set config.train.nan_policy=skip_step) "
            "and rerun to resume from it"
        )

    def _log(self, step, pending, num_steps, tokens_per_s):
        sums, extras = jax.device_get(pending)
        row = {}
        for term, term_sums in sums.items():
            row.update(metrics_lib.summarize(term_sums, f"train/{term}"))
        row["train/grad_norm"] = extras["grad_norm"] / num_steps
        row["train/learning_rate"] = extras["learning_rate"] / num_steps
        row["train/tokens_per_s"] = tokens_per_s
        if self.run.config.train.nan_policy == "skip_step":
            row["train/skipped_steps"] = extras["nonfinite_steps"]
        self.writer.write(step, row)
        self.history.append({"step": step, **row})
        return row


def _format(step: int, row: dict) -> str:
    shown = {k: v for k, v in row.items() if k.endswith(("loss", "perplexity", "accuracy"))}
    return f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items())
