"""Pretraining configs: objective, data, model, optimizer and trainer of one run.

Launch (a tiny GPT on the offline corpus that ships with CPython, about a minute):

    t5x-lite train --config=gin_configs/pretrain.py:gpt_tiny \
        --config.train.num_steps=200 --workdir=runs/gpt_tiny

A BERT-style run is the same command with another variant:

    t5x-lite train --config=gin_configs/pretrain.py:bert_tiny --workdir=runs/bert_tiny

Variants (`--config=gin_configs/pretrain.py:<variant>`):
  gpt_tiny       GPT, d_model 128, 4 layers: the "run locally" size (`make demo`, tests).
  gpt_tiny_prefix_lm
                 gpt_tiny as a prefix LM: bidirectional over a random prefix, loss on
                 the rest.
  gpt_small      GPT, d_model 512, 8 layers, sequence 512: the benchmark size.
  shakespeare_char
                 nanoGPT's CPU recipe: a character-level GPT (4 x 4 x 128, block 64)
                 on Tiny Shakespeare, 2,000 steps of batch 12.
  bert_tiny      BERT: masked LM (15%, 80/10/10), static masks, next-sentence prediction;
                 d_model 128, 2 layers.
  bert_small     the same at 4 layers x 512 (BERT-Small); bert_base: 12 x 768 (110M).
  roberta_tiny   RoBERTa: dynamic masking, no NSP, rows of whole documents;
                 roberta_small / roberta_base as for BERT.
  spanbert_tiny  SpanBERT: whole-word span masking, no NSP.
  t5_tiny        T5 1.1 style: encoder-decoder, span corruption (15%, mean span 3),
                 Adafactor with the inverse-square-root schedule; 2 + 2 layers of 128.
  t5_small       T5 1.1 small (8 + 8 x 512); t5_base: T5 1.1 base (12 + 12 x 768).
  t5_tiny_prefix_lm, t5_tiny_bert_style, t5_tiny_deshuffling
                 t5_tiny with the other objectives of the T5 paper's comparison;
                 t5_base_prefix_lm, t5_base_bert_style, t5_base_deshuffling the same
                 at T5-base.

Any leaf can be overridden on the command line, e.g.
`--config.data.train.kind=text --config.data.train.path=input.txt`; an unknown key or a
value of the wrong type is an error. The resolved config is written to
`<workdir>/config.json`.
"""

import os

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
        # Data shards, each its own pipeline feeding batch_size / num_shards rows of every
        # batch; processes split the shards. A fixed number (e.g. 8) makes the batches
        # independent of the process count, so a checkpoint resumes on any number of
        # processes that divides it; 0 = one shard per process.
        num_shards=0,
        # Length buckets for one-example rows (see gin_configs/finetune.py); pretraining
        # packs its rows full, so both stay 0.
        bucket_multiple=0,
        bucket_window=0,
    )

    # config.objective and config.model come from the family: gpt_sections / bert_sections.

    # Multi-process runs (one process per host): "auto" initializes jax.distributed when
    # the environment describes a multi-process job (Cloud TPU pod slices, SLURM, or
    # JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); "on" always; "off"
    # never. The keys below override what the environment says ('' / 0 / -1 = from it).
    config.distributed = dict(
        initialize="auto",  # auto | on | off
        coordinator_address="",  # host:port of process 0
        num_processes=0,
        process_id=-1,
    )

    config.partitioning = dict(
        # Mesh axis sizes; -1 = all remaining devices.
        mesh=dict(data=-1, fsdp=1, tensor=1),
        rules=DEFAULT_RULES,
    )

    config.optimizer = dict(
        name="adamw",  # adamw | adafactor (T5's)
        learning_rate=3e-3,
        # cosine: warmup, then down to end_lr_fraction * peak; linear: the same with a
        # straight line down (BERT's fine-tuning); constant: warmup, then flat;
        # rsqrt (T5): flat for warmup_steps, then peak * sqrt(warmup_steps / step).
        schedule="cosine",
        warmup_steps=50,
        end_lr_fraction=0.1,
        b1=0.9,  # adamw
        b2=0.95,  # adamw
        eps=1e-8,  # adamw
        weight_decay=0.1,  # decoupled; not applied to biases, LayerNorm scales; 0 = off
        adafactor_decay_rate=0.8,  # second-moment decay exponent: beta2_t = 1 - t**-0.8
        adafactor_clipping_threshold=1.0,  # clip each update's RMS to this
        adafactor_multiply_by_parameter_scale=True,  # relative step sizes
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
        # Gradient accumulation: each step runs batch_size / microbatches rows at a time
        # and sums the gradients; the update equals one step on the whole batch.
        microbatches=1,
        checkpoint_every=200,
        keep_checkpoints=2,  # >= 1: the final step is always kept
        # A step whose loss or gradient norm is NaN or inf: 'stop' ends the run with an
        # error (its last checkpoint stays good); 'skip_step' drops that step's update
        # and counts it in the metrics (train/skipped_steps).
        nan_policy="stop",
        progress_bar=True,
    )

    # Decoder-only and encoder-decoder runs print a sample at the end (not encoders).
    config.sample = dict(
        prompt="The ",
        max_new_tokens=80,  # 0 = no sample
        # Decoder-only: sampling with a truncated distribution.
        temperature=0.8,  # 0 = greedy
        top_k=0,  # keep only the k most likely tokens; 0 = off
        top_p=1.0,  # nucleus: smallest set with probability >= top_p; 1.0 = off
        seed=0,
        # Encoder-decoder: the prompt is the encoder input, decoded by search.
        beam_size=1,  # 1 = greedy
        length_penalty_alpha=0.6,  # beam scores: log p / ((5 + length) / 6) ** alpha
    )
    return config


def _model_common(config) -> dict:
    """Model keys shared by every architecture."""
    return dict(
        vocab_size=config.tokenizer.get_ref("vocab_size"),
        # computation dtype: float32 | bfloat16 (params stay float32); on a CPU, bf16 is
        # faster only with bf16 instructions (AVX512-BF16, AMX): README "bf16 on CPU".
        dtype="float32",
        remat_policy="none",  # none | full | dots_saveable
        # auto = einsum on CPU, dot_product_attention elsewhere (chosen when traced);
        # dot_product_attention = jax.nn.dot_product_attention (cuDNN's fused kernel on GPUs);
        # einsum = the same math spelled out, ~1.6x faster attention backward on XLA:CPU.
        attention_impl="auto",
    )


def gpt_sections(config) -> None:
    """GPT: decoder-only Transformer (pre-LN, learned positions), causal LM."""
    config.objective = dict(name="causal_lm", seq_len=128)
    config.model = dict(
        arch="decoder_only",
        d_model=128,
        num_layers=4,
        num_heads=4,
        head_dim=32,
        d_ff=512,
        dropout_rate=0.0,
        tie_embeddings=True,
        max_len=config.objective.get_ref("seq_len"),
        num_classes=0,  # > 0 (fine-tuning): a classifier at the [EXTRACT] token
        **_model_common(config),
    )


def bert_sections(config, *, nsp: bool, dynamic: bool, masking: str) -> None:
    """BERT family: encoder-only Transformer (post-LN, token types), masked LM."""
    config.objective = dict(
        name="masked_lm",
        seq_len=128,
        mask_rate=0.15,  # share of non-special tokens selected for prediction
        # What a selected token becomes (BERT's 80/10/10); must sum to 1.
        replace_with_mask=0.8,
        replace_with_random=0.1,
        keep_original=0.1,
        masking=masking,  # token | whole_word | span (SpanBERT)
        span_geometric_p=0.2,  # span masking: lengths ~ Geometric(p) words ...
        span_max_length=10,  # ... clipped here
        dynamic_masking=dynamic,  # True: new mask each epoch (RoBERTa); False: fixed (BERT)
        # True: [CLS] A [SEP] B [SEP], B the true continuation half the time (BERT);
        # False: full rows of whole documents (RoBERTa).
        next_sentence_prediction=nsp,
        # Selected positions scored per row; the MLM head runs only there (BERT's
        # max_predictions_per_seq). -1: ~1.1x the expected count + 8, from seq_len and
        # mask_rate; 0: every position, with a full-length head.
        max_predictions=-1,
    )
    config.model = dict(
        arch="encoder_only",
        d_model=128,
        num_layers=2,
        num_heads=2,
        head_dim=64,
        d_ff=512,
        type_vocab_size=2,
        dropout_rate=0.1,
        layer_norm="post",  # post (original BERT) | pre
        layer_norm_epsilon=1e-12,
        activation="gelu",  # gelu (exact, as BERT) | gelu_tanh
        max_len=config.objective.get_ref("seq_len"),
        num_classes=0,  # > 0 (fine-tuning): a classifier on the pooled [CLS]
        **_model_common(config),
    )
    config.loss.z_loss = 0.0  # BERT's objective as published
    config.data.batch_size = 32
    config.optimizer.learning_rate = 1e-3
    config.optimizer.b2 = 0.999
    config.optimizer.weight_decay = 0.01


def gpt_tiny(config):
    gpt_sections(config)


def gpt_tiny_prefix_lm(config):
    """gpt_tiny trained as a prefix LM: bidirectional attention over a random prefix,
    loss on the rest (the decoder-only row of the T5 paper's architecture table)."""
    gpt_sections(config)
    config.objective = dict(
        name="prefix_lm",
        seq_len=config.objective.get_ref("seq_len"),  # model.max_len follows it
        split="random",  # random: prefix length uniform over the chunk; fixed: see below
        prefix_fraction=0.5,  # fixed split: this share of the chunk is the prefix
    )


def gpt_small(config):
    gpt_sections(config)
    config.tokenizer.vocab_size = 8192
    config.objective.seq_len = 512
    config.model.update(d_model=512, num_layers=8, num_heads=8, head_dim=64, d_ff=2048)
    config.data.batch_size = 8
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 200
    config.train.num_steps = 10_000
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000


def shakespeare_char(config):
    """nanoGPT's CPU recipe (its README's "I only have a macbook" run of
    config/train_shakespeare_char.py): Tiny Shakespeare, one token per character, 4
    layers x 4 heads x 128, block 64, batch 12, 2,000 iterations, AdamW 1e-3 (betas 0.9,
    0.99, weight decay 0.1) with 100 warmup steps and cosine decay to 1e-4, gradient
    clipping at 1, no dropout, fp32. Its validation split, the last 10% of the text, is
    here the last 955 of the 7,222 blank-line separated passages; the loss is scored on
    20 batches, as nanoGPT's eval_iters=20. Differences that remain: documents are
    packed with EOS between them and attend only within themselves, each begins with
    sentencepiece's word-start piece, and newlines inside a passage are byte-fallback
    tokens of the character vocabulary.

        T5X_LITE_DATA_DIR=../shared/data t5x-lite train \
            --config=gin_configs/pretrain.py:shakespeare_char --workdir=runs/shakespeare_char
    """
    gpt_sections(config)
    data_dir = os.environ.get("T5X_LITE_DATA_DIR", "data")
    config.data.train = source("text", os.path.join(data_dir, "tinyshakespeare", "input.txt"))
    config.data.heldout_docs = 955  # 10.0% of the characters
    config.data.batch_size = 12
    # Every character of the text is a piece: 64 characters (newlines come from byte
    # fallback), 256 bytes and the special tokens.
    config.tokenizer.update(model_type="char", vocab_size=422)
    config.objective.seq_len = 64
    config.model.update(d_model=128, num_layers=4, num_heads=4, head_dim=32, d_ff=512)
    config.optimizer.update(
        learning_rate=1e-3, b2=0.99, warmup_steps=100, end_lr_fraction=0.1, weight_decay=0.1
    )
    config.loss.z_loss = 0.0
    config.train.update(
        num_steps=2000, eval_every=250, eval_batches=20, log_every=100, checkpoint_every=2000
    )


def _bert_small(config):
    """BERT-Small of Turc et al. (2019): 4 layers, 512 wide, 8 heads."""
    config.tokenizer.vocab_size = 8192
    config.model.update(d_model=512, num_layers=4, num_heads=8, head_dim=64, d_ff=2048)
    config.optimizer.learning_rate = 5e-4


def _bert_base(config):
    """BERT-Base: 12 layers, 768 wide, 12 heads, 110M parameters with a 30,522 vocabulary.

    Train its tokenizer on a real corpus (the embedded default is too small for 30k pieces)
    or point config.tokenizer.path at one.
    """
    config.tokenizer.vocab_size = 30_522
    config.objective.seq_len = 512
    config.model.update(d_model=768, num_layers=12, num_heads=12, head_dim=64, d_ff=3072)
    config.data.batch_size = 256
    config.optimizer.learning_rate = 1e-4
    config.optimizer.warmup_steps = 10_000
    config.train.num_steps = 1_000_000


def bert_tiny(config):
    """BERT as published: token masking, static masks, next-sentence prediction."""
    bert_sections(config, nsp=True, dynamic=False, masking="token")


def bert_small(config):
    bert_tiny(config)
    _bert_small(config)


def bert_base(config):
    bert_tiny(config)
    _bert_base(config)


def roberta_tiny(config):
    """RoBERTa: dynamic masking, no NSP, rows filled with whole documents."""
    bert_sections(config, nsp=False, dynamic=True, masking="token")


def roberta_small(config):
    roberta_tiny(config)
    _bert_small(config)


def roberta_base(config):
    roberta_tiny(config)
    _bert_base(config)
    config.data.batch_size = 2048  # RoBERTa trains with much larger batches (8k in the paper)
    config.optimizer.b2 = 0.98
    config.optimizer.weight_decay = 0.01
    config.optimizer.learning_rate = 6e-4
    config.train.num_steps = 500_000


def spanbert_tiny(config):
    """SpanBERT: contiguous whole-word spans (Geometric(0.2) words, at most 10), no NSP."""
    bert_sections(config, nsp=False, dynamic=True, masking="span")


def t5_sections(config) -> None:
    """T5 (1.1 style by default): encoder-decoder, relative position bias, span corruption."""
    config.objective = dict(
        name="span_corruption",
        inputs_length=128,  # encoder row length (T5: 512)
        targets_length=32,  # decoder row length (T5: 114, what 512 raw tokens leave at 15%)
        noise_density=0.15,  # share of raw tokens corrupted
        mean_noise_span_length=3.0,  # 1.0 = i.i.d. token noise
        corrupted_span="sentinel",  # sentinel: one sentinel per span | drop: tokens removed
    )
    config.model = dict(
        arch="encoder_decoder",
        d_model=128,
        num_encoder_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        head_dim=32,
        d_ff=512,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        mlp="gated_gelu",  # gated_gelu (T5 1.1) | relu (T5 1.0)
        # False: separate output layer (T5 1.1); True: logits from the embedding scaled
        # by d_model**-0.5 (T5 1.0).
        tie_embeddings=False,
        dropout_rate=0.0,  # T5 1.1 pretrains without dropout
        layer_norm_epsilon=1e-6,
        **_model_common(config),
    )
    config.loss.z_loss = 1e-4  # T5X's default
    config.sample.update(prompt="The <extra_id_0> of the <extra_id_1> .", max_new_tokens=32)
    config.optimizer.update(
        name="adafactor",
        schedule="rsqrt",
        learning_rate=0.01,
        warmup_steps=10_000,
        weight_decay=0.0,
        grad_clip_norm=0.0,
    )


def t5_objective(config, name: str) -> None:
    """Swap in another objective of the T5 paper's comparison (its Table 3/4 rows)."""
    lengths = dict(
        inputs_length=config.objective.inputs_length,
        targets_length=config.objective.targets_length,
    )
    if name == "prefix_lm":
        # 'random': prefix length uniform over the chunk; 'fixed': prefix_fraction of it.
        config.objective = dict(name=name, split="random", prefix_fraction=0.5, **lengths)
    elif name == "bert_style":
        # 15% corrupted, target = the whole original text; 0.9/0.1/0 is T5's row (no keep).
        config.objective = dict(
            name=name,
            noise_density=0.15,
            replace_with_mask=0.9,
            replace_with_random=0.1,
            keep_original=0.0,
            **lengths,
        )
    elif name == "deshuffling":
        config.objective = dict(name=name, **lengths)
    else:
        raise ValueError(f"unknown T5 objective {name!r}")


def t5_tiny(config):
    t5_sections(config)
    config.optimizer.warmup_steps = 1000  # a flat 0.01 for a short run, as T5's first 10k


def t5_small(config):
    """T5 1.1 small: 8 + 8 layers, 512 wide, 6 heads of 64, gated-GELU 1024, untied head."""
    t5_sections(config)
    config.tokenizer.vocab_size = 32_128
    config.objective.update(inputs_length=512, targets_length=114)
    config.model.update(
        d_model=512, num_encoder_layers=8, num_decoder_layers=8, num_heads=6, head_dim=64, d_ff=1024
    )
    config.data.batch_size = 128
    config.train.num_steps = 524_288


def t5_base(config):
    """T5 1.1 base: 12 + 12 layers, 768 wide, 12 heads of 64, gated-GELU 2048."""
    t5_small(config)
    config.model.update(
        d_model=768, num_encoder_layers=12, num_decoder_layers=12, num_heads=12, d_ff=2048
    )


def _t5_with(size, name):
    """A T5 size trained with another objective (the T5 paper's objective tables)."""

    def variant(config):
        size(config)
        t5_objective(config, name)

    return variant


VARIANTS = {
    "gpt_tiny": gpt_tiny,
    "gpt_tiny_prefix_lm": gpt_tiny_prefix_lm,
    "gpt_small": gpt_small,
    "shakespeare_char": shakespeare_char,
    "bert_tiny": bert_tiny,
    "bert_small": bert_small,
    "bert_base": bert_base,
    "roberta_tiny": roberta_tiny,
    "roberta_small": roberta_small,
    "roberta_base": roberta_base,
    "spanbert_tiny": spanbert_tiny,
    "t5_tiny": t5_tiny,
    "t5_small": t5_small,
    "t5_base": t5_base,
    "t5_tiny_prefix_lm": _t5_with(t5_tiny, "prefix_lm"),
    "t5_tiny_bert_style": _t5_with(t5_tiny, "bert_style"),
    "t5_tiny_deshuffling": _t5_with(t5_tiny, "deshuffling"),
    "t5_base_prefix_lm": _t5_with(t5_base, "prefix_lm"),
    "t5_base_bert_style": _t5_with(t5_base, "bert_style"),
    "t5_base_deshuffling": _t5_with(t5_base, "deshuffling"),
}


def get_config(arg=None):
    variant = arg or "gpt_tiny"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    config = base_config()
    VARIANTS[variant](config)
    return config
