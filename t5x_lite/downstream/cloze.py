"""Cloze probes: what does each pretraining objective put into a model's predictions?

A probe is a sentence with one blank `___`, optionally with candidate answers:

    Stanford University is located in ___, California.<TAB>Palo Alto|Berkeley

Each family answers in its own pretraining format:
  BERT (EncoderOnly)     blank -> [MASK]; the top_n single pieces at the mask, with their
                         softmax probability over the whole vocabulary (special pieces
                         are left out of the ranking, not renormalized away). A
                         multi-piece answer can only show up as its first piece.
  T5 (EncoderDecoder)    blank -> <extra_id_0>; beam search (top_n beams, no length
                         penalty); the answer is the text between <extra_id_0> and the
                         next sentinel or EOS, its probability exp(sum of log p of all
                         the beam's tokens, sentinels and EOS included), unnormalized
                         by length. Different beams may yield the same answer text.
  GPT (DecoderOnly)      with candidates: each full sentence (candidate in the blank)
                         scored from BOS; the probability is the softmax of those
                         sentence log-likelihoods, i.e. "probability among the
                         candidates". Without: the text before the blank is the prompt;
                         each of the top_n next pieces is extended greedily until the
                         next piece would start a new word (or is special), up to
                         GPT_MAX_PIECES pieces; the probability is that of the reported
                         piece sequence (the product of its pieces' probabilities).
BERT and T5 ignore candidates.

[MASK] and the sentinels stand for whole words, the space before the word included
(the pretraining objectives mask ids, and a word's first piece carries its space). The
tokenizer, though, spells "in [MASK]" as "▁in", "▁", "[MASK]": that lone "▁" piece
right before a [MASK] / sentinel is dropped, so probes look like pretraining inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np

from t5x_lite import fileio
from t5x_lite.downstream import scoring, search
from t5x_lite.errors import UserError
from t5x_lite.tokenizer import MASK_PIECE, NUM_SENTINELS

BLANK = "___"
GPT_MAX_PIECES = 4  # pieces in a GPT answer without candidates
T5_MAX_ANSWER_TOKENS = 8  # decoded tokens per T5 beam: sentinel, answer, sentinel, EOS
BATCH_SIZE = 8  # rows per scoring batch for GPT

Answer = tuple[str, float]  # (answer text, probability)


class Probe(NamedTuple):
    text: str  # the sentence, with exactly one BLANK
    candidates: tuple[str, ...]  # () = open answer
    line: int  # 1-based line number in the probes file

    def filled(self, answer: str) -> str:
        return self.text.replace(BLANK, answer)


def _probe_from_line(line: str, where: str, line_number: int) -> Probe:
    sentence, tab, candidates_text = line.partition("\t")
    sentence = sentence.strip()
    blanks = sentence.count(BLANK)
    if blanks != 1:
        raise UserError(f"{where}: a probe needs exactly one blank {BLANK}, this line has {blanks}")
    candidates = ()
    if tab:
        candidates = tuple(c.strip() for c in candidates_text.split("|"))
        if "\t" in candidates_text or not all(candidates):
            raise UserError(
                f"{where}: candidates after the tab must be non-empty and separated by |, "
                f"got {candidates_text!r}"
            )
    return Probe(sentence, candidates, line_number)


def read_probes(path: str) -> list[Probe]:
    """Probes from a UTF-8 text file: one per non-empty line, `sentence` or `sentence<TAB>
    candidate|candidate...`; lines starting with '#' are comments."""
    if not fileio.isfile(path):
        raise UserError(f"cloze probes file {path} does not exist; fix the path")
    raw_lines = fileio.read_bytes(path).split(b"\n")
    probes = []
    for line_number, raw in enumerate(raw_lines, start=1):
        where = f"{path}:{line_number}"
        try:
            line = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{where}: not valid UTF-8; save the file as UTF-8") from None
        if line.strip() and not line.lstrip().startswith("#"):
            probes.append(_probe_from_line(line, where, line_number))
    if not probes:
        raise UserError(
            f"{path} has no probes (only blank or # lines); write one sentence with a "
            f"{BLANK} blank per line"
        )
    return probes


def shorten(text: str, limit: int = 60) -> str:
    """`text` quoted for a one-line message: control characters escaped, long ones cut."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 5]}...' ({len(text)} chars)"


def _cloze_ids(tokenizer, text: str, blank_id: int) -> np.ndarray:
    """encode(text) without the lone "▁" piece the tokenizer puts before `blank_id`."""
    ids = tokenizer.encode(text)
    space_id = tokenizer.piece_to_id("\u2581")
    if tokenizer.id_to_piece(space_id) != "\u2581":
        return ids
    before_blank = (ids[:-1] == space_id) & (ids[1:] == blank_id)
    return ids[~np.append(before_blank, False)]


def _ranked_ids(tokenizer, model_vocab: int) -> np.ndarray:
    """bool [model_vocab]: ids an answer may be (the tokenizer's non-special pieces)."""
    allowed = np.zeros(model_vocab, bool)
    allowed[: tokenizer.vocab_size] = ~tokenizer.special_mask()
    return allowed


@functools.partial(jax.jit, static_argnames="model")
def _mlm_logits(model, params, batch):
    return model.apply({"params": params}, batch, deterministic=True)["mlm_logits"]


def _check_top_n(top_n: int) -> None:
    if top_n < 1:
        raise UserError(f"top_n={top_n} must be at least 1")


def fill_masks(model, params, tokenizer, text: str, *, top_n: int) -> list[list[Answer]]:
    """For each [MASK] in `text` (EncoderOnly; [CLS] text [SEP], token types 0): the top_n
    non-special pieces, decoded, with their softmax probability over the vocabulary."""
    _check_top_n(top_n)
    ids = _cloze_ids(tokenizer, text, tokenizer.mask_id)
    ids = np.concatenate([[tokenizer.cls_id], ids, [tokenizer.sep_id]])
    mask_positions = np.flatnonzero(ids == tokenizer.mask_id)
    if not mask_positions.size:
        raise UserError(
            f"no {MASK_PIECE} in {shorten(text)}; write {MASK_PIECE} where BERT should fill in"
        )
    if len(ids) > model.max_len:
        raise UserError(
            f"the prompt {shorten(text)} is {len(ids)} tokens with [CLS] and [SEP] but the "
            "model's context is "
            f"{model.max_len}; shorten it"
        )
    length = scoring.bucket_length(len(ids), model.max_len)
    batch = scoring.padded_features("encoder", [ids], 1, length)
    batch["encoder_token_type_ids"] = np.zeros_like(batch["encoder_input_tokens"])
    logits = np.asarray(_mlm_logits(model, params, batch)[0], np.float64)  # [length, vocab]
    allowed = _ranked_ids(tokenizer, logits.shape[-1])
    answers = []
    for position in mask_positions:
        probs = _softmax(logits[position])
        best = np.argsort(-np.where(allowed, probs, -1.0), kind="stable")[:top_n]
        answers.append([(tokenizer.decode([i]), float(probs[i])) for i in best])
    return answers


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def answer_bert(model, params, tokenizer, probes: Sequence[Probe], *, top_n: int):
    """Per probe, the top_n (piece, probability) at the blank; see the module docstring."""
    return [
        fill_masks(model, params, tokenizer, probe.filled(MASK_PIECE), top_n=top_n)[0]
        for probe in probes
    ]


def t5_span(tokenizer, tokens: Sequence[int]) -> str:
    """A T5 output "<extra_id_0> answer <extra_id_1> ... EOS" -> "answer": the text after
    a leading sentinel 0, up to the next sentinel or EOS (whichever comes first)."""
    first, last = tokenizer.sentinel_id(0), tokenizer.sentinel_id(NUM_SENTINELS - 1)
    tokens = [int(t) for t in tokens]
    if tokens and tokens[0] == first:
        tokens = tokens[1:]
    span = []
    for token in tokens:
        if token == tokenizer.eos_id or first <= token <= last:
            break
        span.append(token)
    return tokenizer.decode(span)


def answer_t5(
    model,
    params,
    tokenizer,
    probes: Sequence[Probe],
    *,
    top_n: int,
    max_answer_tokens: int = T5_MAX_ANSWER_TOKENS,
):
    """Per probe, up to top_n (span text, beam probability), best first; see the module
    docstring. All probes go through one beam search."""
    _check_top_n(top_n)
    if not probes:
        return []
    sentinel = tokenizer.sentinel_id(0)
    rows = [
        np.append(_cloze_ids(tokenizer, p.filled("<extra_id_0>"), sentinel), tokenizer.eos_id)
        for p in probes
    ]
    length = scoring.bucket_length(max(len(ids) for ids in rows))
    batch = scoring.padded_features("encoder", rows, len(rows), length)
    result = search.beam_search(
        model,
        params,
        batch,
        beam_size=top_n,
        max_length=max_answer_tokens,
        eos_id=tokenizer.eos_id,
        bos_id=tokenizer.bos_id,
        length_penalty_alpha=0.0,
        num_ids=tokenizer.vocab_size,
    )
    beam_tokens, beam_scores = np.asarray(result.beam_tokens), np.asarray(result.beam_scores)
    return [
        [
            (t5_span(tokenizer, tokens), float(np.exp(score)))
            for tokens, score in zip(beam_tokens[row], beam_scores[row])
            if np.isfinite(score)
        ]
        for row in range(len(probes))
    ]


def _check_fits(probe: Probe, length: int, max_len: int) -> None:
    if length > max_len:
        raise UserError(
            f"probe on line {probe.line} needs {length} tokens but the model's context is "
            f"{max_len}; shorten the probe"
        )


def _gpt_candidates(model, params, tokenizer, probes: Sequence[Probe]) -> list[list[Answer]]:
    """Per probe with candidates: (candidate, softmax of the sentences' log-likelihoods),
    most probable first."""
    sentences = [tokenizer.encode(p.filled(c)) for p in probes for c in p.candidates]
    probe_of = [p for p in probes for _ in p.candidates]
    for probe, ids in zip(probe_of, sentences):
        _check_fits(probe, 1 + len(ids), model.max_len)
    bos = np.array([tokenizer.bos_id])
    scores = scoring.decoder_log_likelihoods(
        model, params, [bos] * len(sentences), sentences, batch_size=BATCH_SIZE
    )
    answers, start = [], 0
    for probe in probes:
        probe_scores = scores[start : start + len(probe.candidates)]
        start += len(probe.candidates)
        probs = _softmax(probe_scores)
        order = np.argsort(-probe_scores, kind="stable")
        answers.append([(probe.candidates[i], float(probs[i])) for i in order])
    return answers


def _gpt_open(model, params, tokenizer, probes: Sequence[Probe], top_n: int):
    """Per probe: top_n next pieces after the text before the blank, each extended
    greedily to the end of its word; see the module docstring."""
    contexts = []
    for probe in probes:
        prefix = probe.text.split(BLANK)[0].rstrip()
        context = np.concatenate([[tokenizer.bos_id], tokenizer.encode(prefix)])
        _check_fits(probe, len(context) + GPT_MAX_PIECES, model.max_len)
        contexts.append(context)
    log_probs = scoring.decoder_next_log_probs(model, params, contexts, batch_size=BATCH_SIZE)
    allowed = _ranked_ids(tokenizer, log_probs.shape[-1])
    word_start = np.zeros_like(allowed)
    word_start[: tokenizer.vocab_size] = tokenizer.word_start_mask()
    # One row per (probe, first piece): [probe index, pieces, summed log-prob, growing].
    rows = []
    for probe_index, row_log_probs in enumerate(log_probs):
        best = np.argsort(-np.where(allowed, row_log_probs, -np.inf), kind="stable")[:top_n]
        rows += [[probe_index, [int(i)], float(row_log_probs[i]), True] for i in best]
    for _ in range(GPT_MAX_PIECES - 1):
        growing = [row for row in rows if row[3]]
        if not growing:
            break
        extended = [np.concatenate([contexts[row[0]], row[1]]) for row in growing]
        next_log_probs = scoring.decoder_next_log_probs(
            model, params, extended, batch_size=BATCH_SIZE
        )
        for row, row_log_probs in zip(growing, next_log_probs):
            # The model's own next choice among the tokenizer's ids, EOS included.
            choice = int(np.argmax(row_log_probs[: tokenizer.vocab_size]))
            if word_start[choice] or not allowed[choice]:
                row[3] = False
            else:
                row[1].append(choice)
                row[2] += float(row_log_probs[choice])
    answers = [[] for _ in probes]
    for probe_index, pieces, log_prob, _ in rows:
        answers[probe_index].append((tokenizer.decode(pieces), float(np.exp(log_prob))))
    return [sorted(answer, key=lambda a: -a[1]) for answer in answers]


def answer_gpt(model, params, tokenizer, probes: Sequence[Probe], *, top_n: int):
    """Per probe, (answer, probability) best first: ranked candidates when the probe has
    them, else up to top_n open answers; see the module docstring."""
    _check_top_n(top_n)
    with_candidates = [p for p in probes if p.candidates]
    open_probes = [p for p in probes if not p.candidates]
    ranked = iter(
        _gpt_candidates(model, params, tokenizer, with_candidates) if with_candidates else []
    )
    opened = iter(_gpt_open(model, params, tokenizer, open_probes, top_n) if open_probes else [])
    return [next(ranked) if p.candidates else next(opened) for p in probes]


def _cell(answer: Answer) -> str:
    text, prob = answer
    text = text.replace("\n", "\\n") if text.strip() else "(empty)"
    return f"{text} (p={prob:.3f})"


def format_table(probes: Sequence[Probe], answers_by_family: Mapping[str, Sequence]) -> str:
    """One block per probe: its sentence (and candidates), then one column per family
    with its answers as "answer (p=0.123)", best first. Blocks are separated by a blank
    line."""
    for family, answers in answers_by_family.items():
        if len(answers) != len(probes):
            raise ValueError(f"{family}: {len(answers)} answer lists for {len(probes)} probes")
    blocks = []
    for index, probe in enumerate(probes):
        title = probe.text
        if probe.candidates:
            title += f"  [candidates: {' | '.join(probe.candidates)}]"
        columns = [
            [family] + [_cell(answer) for answer in answers[index]]
            for family, answers in answers_by_family.items()
        ]
        widths = [max(len(cell) for cell in column) for column in columns]
        num_lines = max((len(column) for column in columns), default=0)
        lines = [title]
        for line in range(num_lines):
            cells = [
                (column[line] if line < len(column) else "").ljust(width)
                for column, width in zip(columns, widths)
            ]
            lines.append(("  " + "  ".join(cells)).rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
