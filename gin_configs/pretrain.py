"""Pretraining configs: objective, data, model, optimizer and trainer of one run.

Launch (a tiny GPT on the offline corpus that ships with CPython, about a minute):

    t5x-lite train --config=gin_configs/pretrain.py:gpt_tiny \
        --config.train.num_steps=200 --workdir=runs/gpt_tiny

Variants (`--config=gin_configs/pretrain.py:<variant>`):
  gpt_tiny   d_model 128, 4 layers: the "run locally" size, used by `make demo` and tests.
  gpt_small  d_model 512, 8 layers, sequence 512: the benchmark size (`t5x-lite bench`).

Any leaf can be overridden on the command line, e.g.
`--config.data.train.kind=text --config.data.train.path=input.txt`; an unknown key or a
value of the wrong type is an error. The resolved config is written to
`<workdir>/config.json`.
"""

import ml_collections

# Logical axis -> mesh axis. Parameters carry logical names (see t5x_lite/models); these
# rules turn them into shardings: data parallel over ('data', 'fsdp'), parameters sharded
# over 'fsdp' along `embed`, tensor parallelism over heads / MLP / vocabulary.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)


def source(kind: str, path: str = "", column: str = "", doc_mode: str = "paragraph"):
    """One data source; every key exists for every kind, the kind decides which are read."""
    return ml_collections.ConfigDict(
        dict(
            # text | tsv | jsonl | tfds | pydoc (CPython's embedded docs); eval also heldout | none
            kind=kind,
            path=path,  # text / tsv / jsonl file
            column=column,  # tsv / jsonl column, tfds feature
            # text: 'line' = one document per line, 'paragraph' = blank-line separated blocks
            doc_mode=doc_mode,
            tfds_name="",
            split="train",
            tfds_data_dir="",  # '' = TFDS's default data dir
        )
    )


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.tokenizer = dict(
        path="",  # '' = train one on the training documents into <workdir>/tokenizer.model
        vocab_size=2048,
        model_type="bpe",  # bpe | unigram | char
        max_sentences=200_000,  # documents sampled for tokenizer training
    )

    config.data = dict(
        train=source("pydoc"),
        # 'heldout' = the last `heldout_docs` training documents, removed from training.
        eval=source("heldout"),
        heldout_docs=100,
        batch_size=16,  # global batch, split over processes and the ('data', 'fsdp') axes
        shuffle=True,
    )

    config.objective = dict(name="causal_lm", seq_len=128)

    config.model = dict(
        arch="decoder_only",
        vocab_size=config.tokenizer.get_ref("vocab_size"),
        d_model=128,
        num_layers=4,
        num_heads=4,
        head_dim=32,
        d_ff=512,
        max_len=config.objective.get_ref("seq_len"),
        dropout_rate=0.0,
        tie_embeddings=True,
        dtype="float32",  # computation dtype: float32 | bfloat16 (params stay float32)
        remat_policy="none",  # none | full | dots_saveable
        # dot_product_attention = jax.nn.dot_product_attention (cuDNN's fused kernel on GPUs);
        # einsum = the same math spelled out, ~1.6x faster attention backward on XLA:CPU.
        attention_impl="dot_product_attention",
    )

    config.partitioning = dict(
        # Mesh axis sizes; -1 = all remaining devices.
        mesh=dict(data=-1, fsdp=1, tensor=1),
        rules=DEFAULT_RULES,
    )

    config.optimizer = dict(
        name="adamw",
        learning_rate=3e-3,
        schedule="cosine",  # cosine (to end_lr_fraction * peak) | constant (after warmup)
        warmup_steps=50,
        end_lr_fraction=0.1,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.1,  # decoupled; not applied to biases, LayerNorm scales
        grad_clip_norm=1.0,  # global norm; 0 disables
    )

    config.loss = dict(
        z_loss=1e-4,  # weight of log(Z)^2: keeps the softmax normalizer near 1 (PaLM)
        label_smoothing=0.0,
    )

    config.train = dict(
        num_steps=600,
        log_every=25,
        eval_every=200,
        eval_batches=8,  # 0 = the whole eval set
        checkpoint_every=200,
        keep_checkpoints=2,
        progress_bar=True,
    )

    config.sample = dict(
        prompt="The ",
        max_new_tokens=80,
        temperature=0.8,  # 0 = greedy
        seed=0,
    )
    return config


def gpt_tiny(config):
    del config  # the base is the tiny model


def gpt_small(config):
    config.tokenizer.vocab_size = 8192
    config.objective.seq_len = 512
    config.model.update(d_model=512, num_layers=8, num_heads=8, head_dim=64, d_ff=2048)
    config.data.batch_size = 8
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 200
    config.train.num_steps = 10_000
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000


VARIANTS = {"gpt_tiny": gpt_tiny, "gpt_small": gpt_small}


def get_config(arg=None):
    variant = arg or "gpt_tiny"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    config = base_config()
    VARIANTS[variant](config)
    return config
