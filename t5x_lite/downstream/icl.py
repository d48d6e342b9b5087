"""GPT-3-style in-context learning: classify by the likelihood of each label word after a
prompt of k labelled demonstrations, with no gradient step (params are only read).

A prompt is k demonstrations, each the template filled with its example and followed by
" " + its label word, then the query filled the same way without a label, joined by a
separator:

    Review: great film
    Sentiment: positive

    Review: bad plot
    Sentiment:

Tokenization. The tokenizer prefixes every encoded text with a word start ("▁", the
dummy prefix), and the template ends without a trailing space. So the prompt and the
label word are encoded separately and concatenated: encode("positive") starts with
"▁positive"-style pieces, which is exactly how " positive" is spelled after the prompt
text (pieces never cross a space), and how each demonstration spells its own label.
  decoder_only:     context = [BOS] + encode(prompt), continuation = encode(word)
  encoder_decoder:  inputs = encode(prompt) + [EOS], targets = encode(word) + [EOS],
                    teacher-forced from decoder_start_id
  encoder_only:     not supported: in-context learning needs a model that generates.
The predicted class is the label word of highest total log-likelihood (not normalized by
its length), as in GPT-3's classification evaluation.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

from t5x_lite import families
from t5x_lite.downstream import task_metrics
from t5x_lite.errors import UserError

_TEMPLATE_FIELDS = ("a", "b")


def _template_fields(template: str) -> set[str]:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise UserError(f"template {template!r} is not a format string: {error}") from None
    unknown = sorted(fields - set(_TEMPLATE_FIELDS))
    if unknown:
        raise UserError(
            f"template {template!r} uses unknown field(s) {unknown}; use {{a}} and {{b}} "
            "(write {{ and }} for literal braces)"
        )
    return fields


def format_example(template: str, example, label_word: str | None) -> str:
    """The template with {a} = example.text_a and {b} = example.text_b, then " " +
    label_word when one is given."""
    if "b" in _template_fields(template) and example.text_b is None:
        raise UserError(
            f"template {template!r} uses {{b}} but the task's examples have one sentence; "
            "drop {b} from the template"
        )
    text = template.format(a=example.text_a, b=example.text_b)
    return text if label_word is None else f"{text} {label_word}"


def build_prompt(
    template: str,
    demonstrations: Sequence,
    query,
    label_words: Sequence[str],
    separator: str = "\n\n",
) -> str:
    """k demonstrations, each with its label word, then the query without one; k = 0
    gives the query alone."""
    parts = [format_example(template, demo, label_words[demo.label]) for demo in demonstrations]
    return separator.join(parts + [format_example(template, query, None)])


def choose_demonstrations(train_examples: Sequence, k: int, rng: np.random.Generator) -> list:
    """k distinct train examples drawn uniformly by `rng` (same rng state, same draw)."""
    if not 0 <= k <= len(train_examples):
        raise UserError(
            f"cannot draw {k} demonstrations from {len(train_examples)} train examples; "
            "use fewer shots or more train examples"
        )
    return [train_examples[i] for i in rng.choice(len(train_examples), size=k, replace=False)]


def classify(
    arch: str,
    model,
    params,
    tokenizer,
    prompts: Sequence[str],
    label_words: Sequence[str],
    *,
    batch_size: int,
    decoder_start_id: int | None = None,
) -> np.ndarray:
    """float64 [len(prompts), len(label_words)]: log p(label word | prompt), tokenized
    as the family of `arch` does (the module docstring). decoder_start_id is required
    for encoder_decoder."""
    family = families.get(arch)
    if not label_words or not all(word.strip() for word in label_words):
        raise UserError(f"label words {list(label_words)} must be non-empty words")
    prompt_ids = tokenizer.encode_batch(list(prompts))
    word_ids = tokenizer.encode_batch(list(label_words))
    scores = family.score_label_words(
        model,
        params,
        tokenizer,
        prompt_ids,
        word_ids,
        batch_size=batch_size,
        decoder_start_id=decoder_start_id,
    )
    return scores.reshape(len(prompt_ids), len(word_ids))


def evaluate_in_context(
    arch: str,
    model,
    params,
    tokenizer,
    train_examples: Sequence,
    test_examples: Sequence,
    *,
    shots: Sequence[int],
    template: str,
    label_words: Sequence[str],
    seed: int,
    batch_size: int,
    decoder_start_id: int | None = None,
    fit_context: bool = False,
) -> dict[int, dict]:
    """For each k in `shots`: {'accuracy', 'macro_f1', 'num_examples', 'predictions'
    (label index per test example), 'log_likelihoods' [num_test, num_labels],
    'mean_shots' (demonstrations actually in the prompts)}.

    Test example i gets its own k demonstrations, drawn with
    np.random.default_rng([seed, k, i]): the draw for one example does not depend on
    the others, nor on which other k are evaluated. A decoder prompt longer than the
    model's context is an error, unless `fit_context`: then its first demonstrations
    are dropped until it fits (GPT-3 used as many as fit its window).
    """
    if not test_examples:
        raise UserError("no test examples to evaluate in-context learning on")
    labels = np.array([example.label for example in test_examples])
    if not ((labels >= 0) & (labels < len(label_words))).all():
        raise UserError(
            f"test labels must be class indices in [0, {len(label_words)}) to match the "
            f"{len(label_words)} label words; in-context evaluation needs a classification task"
        )
    results = {}
    fitter = families.get(arch).context_fitter(model, tokenizer, label_words)
    fit = fitter if fit_context else None
    for k in shots:
        prompts, used = [], []
        for i, example in enumerate(test_examples):
            demos = choose_demonstrations(train_examples, k, np.random.default_rng([seed, k, i]))
            prompt = build_prompt(template, demos, example, label_words)
            while fit and demos and not fit(prompt):
                demos = demos[1:]
                prompt = build_prompt(template, demos, example, label_words)
            prompts.append(prompt)
            used.append(len(demos))
        log_likelihoods = classify(
            arch,
            model,
            params,
            tokenizer,
            prompts,
            label_words,
            batch_size=batch_size,
            decoder_start_id=decoder_start_id,
        )
        predictions = np.argmax(log_likelihoods, axis=1)
        results[k] = {
            "accuracy": task_metrics.accuracy(labels, predictions),
            "macro_f1": task_metrics.macro_f1(labels, predictions, len(label_words)),
            "num_examples": len(test_examples),
            "predictions": predictions.tolist(),
            "log_likelihoods": log_likelihoods,
            "mean_shots": float(np.mean(used)),
        }
    return results
