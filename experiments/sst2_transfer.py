"""Does pretraining help? The README's SST-2 table, rerun from the CLI.

For each family (GPT, BERT, T5): pretrain a tiny model on SST-2's training sentences,
then fine-tune on 2,000 labelled ones (a seeded random sample) four ways, all with the
same recipe but the last: from the pretrained weights, from random weights (the
no-pretraining baseline), with the pretrained body frozen (a linear probe; not for T5,
whose text-to-text head is the whole decoder), and from the pretrained weights with the
variant's published recipe (`SAME_RECIPE` says why the others use another). Each cell is
the accuracy on the 872 SST-2 dev sentences.

    python experiments/sst2_transfer.py --data_dir=$T5X_LITE_DATA_DIR --workdir=runs/sst2

Every run is one `t5x-lite` command, printed before it runs, so a row can be rerun by
hand. A run whose results are already in the workdir is not run again: an interrupted
sweep resumes where it stopped. About 20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

from t5x_lite.train import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_EXAMPLES = 2000

# Pretraining: the family's tiny variant on SST-2 sentences (the last 500 held out),
# rows of 64 tokens and a vocabulary of ~1,000 pieces (what `make test-e2e` trains).
PRETRAIN = {
    "gpt": (
        "gpt_tiny",
        {
            "objective.seq_len": 64,
            "tokenizer.vocab_size": 1024,
            "train.num_steps": 400,
            "optimizer.warmup_steps": 20,
        },
    ),
    "bert": (
        "roberta_tiny",
        {
            "objective.seq_len": 64,
            "tokenizer.vocab_size": 1024,
            "train.num_steps": 700,
            "optimizer.warmup_steps": 30,
            "model.dropout_rate": 0.0,
        },
    ),
    "t5": (
        "t5_tiny",
        {
            "data.batch_size": 32,
            "tokenizer.vocab_size": 1000,
            "objective.inputs_length": 64,
            "objective.targets_length": 16,
            "train.num_steps": 400,
            "optimizer.warmup_steps": 100,
        },
    ),
}
# Fine-tuning: the finetune.py variant (the model's shapes come from the checkpoint).
FINETUNE = {"gpt": "gpt_tiny_sst2", "bert": "roberta_tiny_sst2", "t5": "t5_tiny_sst2"}
# The study's recipe, the same for every column but the last, so that those differ only
# in the initial weights: the variants' rate for random weights. The published rates
# (the variants' default for pretrained weights: 6.25e-5, 1e-4, 1e-3) assume a model
# pretrained at scale; the last column shows what they do to these tiny ones.
SAME_RECIPE = {
    "gpt": {"optimizer.learning_rate": 1e-3, "optimizer.schedule": "cosine"},
    "bert": {"optimizer.learning_rate": 1e-3, "optimizer.schedule": "cosine"},
    "t5": {"optimizer.learning_rate": 1e-2},
}
# Columns: how the fine-tuning run starts (and, for the last, its recipe).
SETTINGS = {
    "pretrained": {},
    "random": {"finetune.init": "random"},
    "frozen": {"finetune.freeze_body": "true"},
    "published": {},  # pretrained weights, the variant's published recipe
}
COLUMNS = {
    "pretrained": "pretrained, then fine-tuned",
    "random": "random init, fine-tuned",
    "frozen": "frozen pretrained body (linear probe)",
    "published": "pretrained, the published recipe",
}


def pretrain_command(family: str, data_dir: str, workdir: str) -> list[str]:
    variant, overrides = PRETRAIN[family]
    steps = overrides["train.num_steps"]
    return _command(
        "train",
        f"gin_configs/pretrain.py:{variant}",
        workdir,
        {
            "data.train.kind": "tsv",
            "data.train.column": "sentence",
            "data.train.path": os.path.join(data_dir, "sst2", "train.tsv"),
            "data.heldout_docs": 500,
            "train.eval_every": steps,  # held-out loss once, at the end
            "train.eval_batches": 0,
            "train.log_every": 100,
            "train.checkpoint_every": 0,  # the last step only
            "train.progress_bar": "false",
            "sample.max_new_tokens": 0,
            **overrides,
        },
    )


def finetune_command(
    family: str, setting: str, data_dir: str, pretrained: str, workdir: str
) -> list[str]:
    variant = FINETUNE[family]
    sst2 = os.path.join(data_dir, "sst2")
    return _command(
        "finetune",
        f"gin_configs/finetune.py:{variant}",
        workdir,
        {
            # The tokenizer always comes from the pretraining run, random init included.
            "finetune.checkpoint": pretrained,
            "task.train.path": os.path.join(sst2, "train.tsv"),
            "task.eval.path": os.path.join(sst2, "dev.tsv"),
            "task.train.max_examples": NUM_EXAMPLES,
            "train.eval_every": 100_000,  # dev is scored once, after training
            "train.checkpoint_every": 0,
            "train.progress_bar": "false",
            **SETTINGS[setting],
            **({} if setting == "published" else SAME_RECIPE[family]),
        },
    )


def _command(subcommand: str, config: str, workdir: str, overrides: dict) -> list[str]:
    return [
        "t5x-lite",
        subcommand,
        f"--config={config}",
        f"--workdir={workdir}",
        *(f"--config.{key}={value}" for key, value in overrides.items()),
    ]


def config_of(command: list[str], resolve: bool = True):
    """The config a printed `t5x-lite` command runs, parsed and loaded as the CLI does
    (config paths relative to the repository root) -> (config, workdir). A fine-tuning
    command's config is completed from its checkpoint, which must exist, unless
    `resolve` is False."""
    from t5x_lite import api
    from t5x_lite import main as cli

    args, extra = cli.build_parser().parse_known_args(command[1:])
    overrides = api.parse_overrides(extra)
    config = api.load_config(os.path.join(ROOT, args.config), overrides)
    if args.command == "finetune" and resolve:
        api.resolve_finetuning(config, [key for key, _ in overrides])
    return config, args.workdir


def settings_of(family: str) -> list[str]:
    return [s for s in SETTINGS if not (family == "t5" and s == "frozen")]


def pretraining_summary(family: str, metrics_jsonl: str) -> str:
    """The pretraining cell: steps, rows and the last held-out figure."""
    rows = metrics_lib.read_rows(metrics_jsonl)  # skips a torn last line
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    last = evals[-1] if evals else {}
    variant, overrides = PRETRAIN[family]
    steps = overrides["train.num_steps"]
    if family == "bert":
        figure = f"held-out MLM accuracy {100 * last.get('eval/mlm/accuracy', float('nan')):.1f}%"
    else:
        figure = f"held-out loss {last.get('eval/lm/loss', float('nan')):.2f}"
    return f"`{variant}`, {steps} steps; {figure}"


def accuracy_cell(family: str, metrics: dict) -> str:
    if family == "t5":
        generated, ranked = metrics["generated"]["accuracy"], metrics["ranked"]["accuracy"]
        return f"{100 * generated:.1f}% generated, {100 * ranked:.1f}% ranked"
    return f"{100 * metrics['classifier']['accuracy']:.1f}%"


def table(results: dict) -> str:
    """{family: {"pretraining": str, setting: metrics dict}} -> a markdown table."""
    lines = [
        "| family | pretraining | " + " | ".join(COLUMNS.values()) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for family, cells in results.items():
        row = [family.upper(), cells["pretraining"]]
        for setting in SETTINGS:
            row.append(accuracy_cell(family, cells[setting]) if setting in cells else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _done_marker(family: str, setting: str | None, out: str) -> str:
    """The file a finished run leaves: pretraining's last checkpoint, a fine-tuning
    run's dev metrics."""
    if setting is None:
        return os.path.join(out, "checkpoints", str(PRETRAIN[family][1]["train.num_steps"]))
    return os.path.join(out, "eval", "dev", "metrics.json")


def run(command: list[str], log_path: str) -> None:
    """Run one t5x-lite command (from the repo root, with this interpreter's CLI)."""
    print("$", shlex.join(command), flush=True)
    argv = [sys.executable, "-m", "t5x_lite.main", *command[1:]]
    with open(log_path, "w") as log:
        done = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"error: the run above failed (exit {done.returncode}); see {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("T5X_LITE_DATA_DIR", ""))
    parser.add_argument("--workdir", default="runs/sst2_transfer")
    parser.add_argument("--families", default="gpt,bert,t5", help="comma-separated")
    parser.add_argument("--print_only", action="store_true", help="print the commands")
    args = parser.parse_args(argv)
    families = args.families.split(",")
    unknown = sorted(set(families) - set(PRETRAIN))
    if unknown:
        parser.error(f"--families: unknown {unknown}; choose from {sorted(PRETRAIN)}")
    for name in ("train.tsv", "dev.tsv"):
        if not os.path.isfile(os.path.join(args.data_dir, "sst2", name)):
            parser.error(
                f"--data_dir={args.data_dir!r} has no sst2/{name}; point it (or "
                "T5X_LITE_DATA_DIR) at the shared data folder"
            )
    data_dir, workdir = os.path.abspath(args.data_dir), os.path.abspath(args.workdir)

    results = {}
    for family in families:
        pretrained = os.path.join(workdir, family, "pretrain")
        runs = [(None, pretrain_command(family, data_dir, pretrained), pretrained)]
        for setting in settings_of(family):
            out = os.path.join(workdir, family, setting)
            command = finetune_command(family, setting, data_dir, pretrained, out)
            runs.append((setting, command, out))
        if args.print_only:
            print("\n".join(shlex.join(command) for _, command, _ in runs))
            continue
        cells = {}
        for setting, command, out in runs:
            if not os.path.exists(_done_marker(family, setting, out)):
                os.makedirs(out, exist_ok=True)
                run(command, os.path.join(out, "log.txt"))
            if setting is None:
                cells["pretraining"] = pretraining_summary(
                    family, os.path.join(out, "metrics.jsonl")
                )
            else:
                with open(_done_marker(family, setting, out)) as f:
                    cells[setting] = json.load(f)
        results[family] = cells
    if results:
        print(table(results))
        # GPT/BERT metrics carry the majority class (T5's ranked ones do too); all agree.
        majority = next(
            scores["majority_class_accuracy"]
            for cells in results.values()
            for scores in cells["pretrained"].values()
            if "majority_class_accuracy" in scores
        )
        print(
            f"(SST-2 dev; {NUM_EXAMPLES} training examples; majority class {100 * majority:.1f}%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
