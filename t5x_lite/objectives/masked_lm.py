"""BERT / RoBERTa / SpanBERT masked language modeling, optionally with next sentence
prediction (NSP).

Selection. Candidates are the non-special tokens of the example ([CLS], [SEP], pad and
every other special id are never selected); k = max(1, round(mask_rate * candidates))
of them are chosen (Python's round: halves go to the even neighbour). A "word" is a
run of candidates that begins at a word-start id, or right after a special token.
  token       k candidates uniformly at random (BERT).
  whole_word  words visited in random order, each taken whole if the total stays <= k,
              else skipped (BERT's whole word masking); at least one word is taken.
  span        spans of whole words (SpanBERT): length in words ~ Geometric(p) clipped to
              span_max_length, start uniform over the word starts where a span of that
              length overlaps no earlier span; repeated until >= k tokens are selected,
              so the last span overshoots k by about half a span per example. When no
              free stretch is long enough the length shrinks to the longest that fits.
              Words are counted across special tokens, so a span may run over [SEP].
Corruption. Each selected token becomes [MASK] with probability replace_with_mask, a
uniformly random non-special id with probability replace_with_random, else stays. In
span mode the choice is made once per span, as SpanBERT does, so a span is either all
[MASK], all random or all kept.

Examples. Without NSP: the document is cut into consecutive chunks of seq_len - 2
tokens (`chunk_length`; the last one shorter), each one [CLS] chunk [SEP] example with
token types 0, packed by concatenation into full rows (RoBERTa's FULL-SENTENCES).
With NSP, one [CLS] A [SEP] B [SEP] example per row, packed as BERT's
create_pretraining_data does, with words as its segments (the token stream marks no
sentences). From the first unused token a chunk takes as many whole words as fit
seq_len - 3 tokens; A is the chunk up to a random word start inside it, and B is
(label 0, "IsNext") the rest of the chunk or (label 1) a span of another document,
starting at a word start and as long as the true B would be, so that B's length does
not give it away; the two are equally likely, and each label-1 pair draws its own other
document. IsNext uses the whole chunk; label 1 uses only A and, as BERT puts back its
unused segments, the rest of the chunk starts the next pair. A chunk of one word has no
true continuation: A is that word, or its first (seq_len - 3) // 2 tokens so that a B
as long fits (the rest starts the next pair), and B comes from another document (label
1). Pairs are built to fit the row, so nothing is truncated: every token of the
document is in exactly one A or IsNext B per epoch, and a document yields as many pairs
as that takes. Masking is applied to each final example.

Scored positions. With `max_predictions` > 0 the loss scores only the first that many
selected positions of each row (in row order), as BERT's max_predictions_per_seq caps
them, and the model computes the MLM head (a vocabulary-wide projection, ~40% of a
BERT-small step's FLOPs at vocabulary 32k) only there: the positions are taken on device
(`device_features`), so packing and the data pipeline are unchanged. The default, -1,
sets the cap to `default_max_predictions` (~1.1x the expected count plus 8, a multiple
of 8), which rows leave unscored only by rare chance; the metrics count the selected
positions a cap left out (`mlm/unscored`). 0 scores every position with a full-length
head.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.data import packing
from t5x_lite.errors import UserError
from t5x_lite.objectives import base
from t5x_lite.objectives.registry import register

MASKING_MODES = ("token", "whole_word", "span")
IS_NEXT, NOT_NEXT = 0, 1  # nsp_labels values
_RATE_SUM_TOLERANCE = 1e-6


def clipped_geometric_probs(p: float, max_length: int) -> np.ndarray:
    """[max_length] P(span length = 1..max_length) for Geometric(p) clipped (renormalized)."""
    lengths = np.arange(1, max_length + 1)
    probs = p * (1 - p) ** (lengths - 1)
    return probs / probs.sum()


def _check_unit_interval(key: str, value: float, *, open_at_zero: bool) -> None:
    low_ok = value > 0 if open_at_zero else value >= 0
    if not (low_ok and value <= 1):
        bounds = "(0, 1]" if open_at_zero else "[0, 1]"
        raise UserError(f"config.objective.{key}={value} must be in {bounds}")


def _validate_knobs(knobs: dict) -> None:
    """One-line UserErrors, each naming the config.objective key to change."""
    rates = ("replace_with_mask", "replace_with_random", "keep_original")
    for key in rates:
        _check_unit_interval(key, knobs[key], open_at_zero=False)
    total = sum(knobs[key] for key in rates)
    if abs(total - 1) > _RATE_SUM_TOLERANCE:
        raise UserError(f"config.objective.{' + '.join(rates)} = {total:g}, must be 1")
    _check_unit_interval("mask_rate", knobs["mask_rate"], open_at_zero=True)
    _check_unit_interval("span_geometric_p", knobs["span_geometric_p"], open_at_zero=True)
    if knobs["masking"] not in MASKING_MODES:
        raise UserError(
            f"config.objective.masking={knobs['masking']!r} is not one of {MASKING_MODES}"
        )
    if knobs["span_max_length"] < 1:
        raise UserError(f"config.objective.span_max_length={knobs['span_max_length']} must be >= 1")
    if knobs["max_predictions"] < -1:
        raise UserError(
            f"config.objective.max_predictions={knobs['max_predictions']} must be -1 (a cap"
            " from seq_len and mask_rate), 0 (score every position) or a positive cap"
        )
    nsp = knobs["next_sentence_prediction"]
    minimum, layout = (5, "[CLS] A [SEP] B [SEP]") if nsp else (3, "[CLS] document [SEP]")
    if knobs["seq_len"] < minimum:
        raise UserError(
            f"config.objective.seq_len={knobs['seq_len']} is too short for {layout}"
            f" (next_sentence_prediction={nsp} needs >= {minimum}); raise config.objective.seq_len"
        )


def _check_vocab(ids: dict[str, int], word_start: np.ndarray, special: np.ndarray) -> None:
    """Programming errors in what `build` (or a test) passes in."""
    if word_start.ndim != 1 or word_start.shape != special.shape:
        raise ValueError(
            f"word_start {word_start.shape} and special {special.shape} must be [vocab]"
        )
    for name, token_id in ids.items():
        if not (0 <= token_id < len(special) and special[token_id]):
            raise ValueError(f"{name}={token_id} must be a special id of the vocabulary")
    if special.all():
        raise ValueError("the vocabulary has no non-special ids to mask or sample")


def _word_ids(tokens: np.ndarray, candidates: np.ndarray, word_start: np.ndarray) -> np.ndarray:
    """[length] index of each candidate's word (0, 1, ...), -1 at special tokens."""
    after_special = np.concatenate([[True], ~candidates[:-1]])
    starts = candidates & (word_start[tokens] | after_special)
    return np.where(candidates, np.cumsum(starts) - 1, -1)


def default_max_predictions(seq_len: int, mask_rate: float) -> int:
    """The scored positions per row that max_predictions=-1 stands for: the expected
    selections of a full row with 10% and 8 positions of room (span masking overshoots
    by about half a span per example; a row may end one example and start another), as a
    multiple of 8, at most seq_len."""
    room = math.ceil(1.1 * mask_rate * seq_len) + 8
    return min(seq_len, -(-room // 8) * 8)


def _num_to_select(num_candidates: int, mask_rate: float) -> int:
    return max(1, round(mask_rate * num_candidates)) if num_candidates else 0


def select_whole_words(word_lengths: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """[num_words] bool: BERT's greedy pass over the words in random order, taking each
    word that keeps the token total <= k and skipping those that would overflow it."""
    order = rng.permutation(len(word_lengths))
    lengths = word_lengths[order]  # in visiting order
    totals = np.cumsum(lengths)
    taken = np.arange(len(order)) < np.searchsorted(totals, k, side="right")  # fitting prefix
    budget = k - int(lengths[taken].sum())
    # Less than the next word is left, so this runs at most a few times per example.
    while budget > 0:
        fits = np.flatnonzero(~taken & (lengths <= budget))
        if len(fits) == 0:
            break
        taken[fits[0]] = True
        budget -= int(lengths[fits[0]])
    if not taken.any():  # every word is longer than k: take one anyway
        taken[0] = True
    chosen = np.zeros(len(word_lengths), bool)
    chosen[order[taken]] = True
    return chosen


def select_spans(
    word_lengths: np.ndarray, k: int, length_probs: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """[num_words] span index of each word (0, 1, ... in drawing order), -1 if unselected.

    Loops over spans (each needs the free words its predecessors left), never tokens.
    """
    num_words = len(word_lengths)
    span_of_word = np.full(num_words, -1)
    # Each span selects >= 1 token, so k lengths always suffice.
    lengths = 1 + np.searchsorted(np.cumsum(length_probs), rng.random(k), side="right")
    lengths = np.minimum(lengths, len(length_probs))  # guards the float cumsum's last bin
    selected, span = 0, 0
    while selected < k:
        free_before = np.concatenate([[0], np.cumsum(span_of_word < 0)])  # [num_words + 1]
        length = min(int(lengths[span]), num_words)
        while True:  # shrinks only when no free stretch is long enough
            free_run = free_before[length:] - free_before[: num_words - length + 1]
            starts = np.flatnonzero(free_run == length)
            if len(starts):
                break
            length -= 1
        start = starts[rng.integers(len(starts))]
        span_of_word[start : start + length] = span
        selected += int(word_lengths[start : start + length].sum())
        span += 1
    return span_of_word


@register("masked_lm")
class MaskedLM(base.Objective):
    """Masked LM (+ NSP) for encoder-only models; see the module docstring."""

    architectures = ("encoder_only",)
    ids_from_tokenizer = ("mask_id", "cls_id", "sep_id", "word_start", "special")

    def __init__(
        self,
        *,
        seq_len: int,
        mask_rate: float,
        replace_with_mask: float,
        replace_with_random: float,
        keep_original: float,
        masking: str,
        span_geometric_p: float,
        span_max_length: int,
        dynamic_masking: bool,
        next_sentence_prediction: bool,
        mask_id: int,
        cls_id: int,
        sep_id: int,
        word_start: np.ndarray,
        special: np.ndarray,
        max_predictions: int = -1,
    ):
        _validate_knobs(dict(locals()))  # the config.objective knobs, by name
        self.word_start = np.asarray(word_start, bool)  # [vocab]
        self.special = np.asarray(special, bool)  # [vocab]
        _check_vocab(
            dict(mask_id=mask_id, cls_id=cls_id, sep_id=sep_id), self.word_start, self.special
        )
        self.seq_len = seq_len
        self.mask_rate = mask_rate
        self.replace_with_mask = replace_with_mask
        self.replace_with_random = replace_with_random
        self.masking = masking
        self.span_length_probs = clipped_geometric_probs(span_geometric_p, span_max_length)
        self.next_sentence_prediction = next_sentence_prediction
        self.mask_id, self.cls_id, self.sep_id = mask_id, cls_id, sep_id
        self.random_ids = np.flatnonzero(~self.special).astype(np.int32)  # [num_random_ids]
        self.dynamic_randomness = dynamic_masking
        self.uses_other_document = next_sentence_prediction
        self.pack_mode = packing.PACK_NONE if next_sentence_prediction else packing.PACK_CONCAT
        # [CLS] chunk [SEP] per example; sentence pairs are not fixed chunks (`preprocess`).
        self.chunk_length = None if next_sentence_prediction else seq_len - 2
        if max_predictions == -1:
            max_predictions = default_max_predictions(seq_len, mask_rate)
        self.max_predictions = min(max_predictions, seq_len)
        if self.max_predictions:
            mlm = base.LossTerm(
                "mlm", "mlm_logits", "mlm_target_tokens", "mlm_loss_weights",
                selected_from="encoder_loss_weights",
            )  # fmt: skip
        else:
            mlm = base.LossTerm(
                "mlm", "mlm_logits", "encoder_target_tokens", "encoder_loss_weights"
            )
        nsp = base.LossTerm("nsp", "nsp_logits", "nsp_labels", "nsp_weights")
        self.loss_terms = (mlm, nsp) if next_sentence_prediction else (mlm,)

    def feature_lengths(self):
        lengths = {
            "encoder_input_tokens": self.seq_len,
            "encoder_target_tokens": self.seq_len,
            "encoder_loss_weights": self.seq_len,
            "encoder_token_type_ids": self.seq_len,
        }
        if self.next_sentence_prediction:
            lengths.update(nsp_labels=1, nsp_weights=1)
        return lengths

    def device_features(self, batch):
        """Adds mlm_positions (int32 [batch, P], P = max_predictions: the row's selected
        positions in order, then unselected ones) and mlm_target_tokens /
        mlm_loss_weights gathered there, for the head and the loss to read."""
        if not self.max_predictions:
            return batch
        weights = batch["encoder_loss_weights"]
        count = min(self.max_predictions, weights.shape[1])
        # top_k breaks ties towards the lower index: selected positions in row order,
        # then the unselected ones (weight 0) from the row's start.
        _, positions = jax.lax.top_k((weights > 0).astype(jnp.int32), count)
        gather = lambda feature: jnp.take_along_axis(feature, positions, axis=1)  # noqa: E731
        return {
            **batch,
            "mlm_positions": positions.astype(jnp.int32),
            "mlm_target_tokens": gather(batch["encoder_target_tokens"]),
            "mlm_loss_weights": gather(weights),
        }

    def preprocess(self, tokens, rng, other_document=None):
        """One document -> its examples: consecutive chunks without NSP, sentence pairs
        with it (see the module docstring)."""
        tokens = np.asarray(tokens, np.int32)
        if not self.next_sentence_prediction:
            return super().preprocess(tokens, rng)
        if other_document is None:
            raise ValueError("next sentence prediction needs the `other_document` function")
        examples = []
        # Each pair is masked before the next is drawn, so the first pair of a document
        # draws what a document of one pair does.
        for a, b, label in self.sentence_pairs(tokens, other_document, rng):
            targets = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]])
            token_types = np.repeat([0, 1], [len(a) + 2, len(b) + 1])
            example = self.masked_example(targets, token_types, rng)
            example.update(nsp_labels=np.array([label], np.int32), nsp_weights=np.ones(1, np.int32))
            examples.append(example)
        return examples

    def make_example(self, tokens, rng):
        targets = np.concatenate([[self.cls_id], np.asarray(tokens, np.int32), [self.sep_id]])
        return self.masked_example(targets, np.zeros(len(targets)), rng)

    def masked_example(self, targets, token_types, rng) -> dict[str, np.ndarray]:
        """[length] original ids and token types -> the masked LM features, int32."""
        inputs, weights = self.corrupt(targets.astype(np.int32), rng)
        example = {
            "encoder_input_tokens": inputs,
            "encoder_target_tokens": targets,
            "encoder_loss_weights": weights,
            "encoder_token_type_ids": token_types,
        }
        return {name: values.astype(np.int32) for name, values in example.items()}

    def select(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """[length] -> [length] decision group of each selected token, -1 elsewhere.

        Tokens of one group share the mask/random/keep decision: one token per group in
        token and whole_word modes, one span per group in span mode.
        """
        candidates = ~self.special[tokens]
        k = _num_to_select(int(candidates.sum()), self.mask_rate)
        groups = np.full(len(tokens), -1)
        if k == 0:
            return groups
        if self.masking == "token":
            chosen = rng.choice(np.flatnonzero(candidates), k, replace=False)
            groups[chosen] = np.arange(k)
            return groups
        word_of = _word_ids(tokens, candidates, self.word_start)
        word_lengths = np.bincount(word_of[candidates])  # [num_words]
        if self.masking == "whole_word":
            chosen_words = select_whole_words(word_lengths, k, rng)
            selected = candidates & chosen_words[word_of]  # word_of -1 is masked out
            groups[selected] = np.arange(selected.sum())
            return groups
        span_of_word = select_spans(word_lengths, k, self.span_length_probs, rng)
        return np.where(candidates, span_of_word[word_of], -1)

    def corrupt(self, targets: np.ndarray, rng: np.random.Generator):
        """[length] original ids -> (inputs, loss_weights), both [length] int32."""
        groups = self.select(targets, rng)
        selected = groups >= 0
        draw = rng.random(int(groups.max()) + 1)[groups[selected]]  # one draw per group
        to_mask = draw < self.replace_with_mask
        to_random = ~to_mask & (draw < self.replace_with_mask + self.replace_with_random)
        new_ids = np.where(to_mask, self.mask_id, targets[selected])
        random_ids = self.random_ids[rng.integers(len(self.random_ids), size=int(selected.sum()))]
        new_ids = np.where(to_random, random_ids, new_ids)
        inputs = targets.copy()
        inputs[selected] = new_ids
        return inputs, selected.astype(np.int32)

    def sentence_pairs(self, tokens: np.ndarray, other_document, rng: np.random.Generator):
        """One document -> (A, B, nsp label) for each of its pairs, in order, each drawn
        when the caller asks for it (see the module docstring)."""
        budget = self.seq_len - 3  # [CLS] A [SEP] B [SEP]
        split_points = 1 + np.flatnonzero(self.word_start[tokens[1:]])  # word starts after 0
        boundaries = np.concatenate([[0], split_points, [len(tokens)]])  # sorted
        start = 0
        # Binary searches, not masks over the document: a long one costs O(pairs log n).
        while start < len(tokens):
            last = int(boundaries[np.searchsorted(boundaries, start + budget, "right") - 1])
            end = last if last > start else start + budget  # the whole words that fit
            first = np.searchsorted(split_points, start, "right")
            inside = split_points[first : np.searchsorted(split_points, end, "left")]
            wants_next = rng.random() < 0.5
            if len(inside):
                split = int(inside[rng.integers(len(inside))])
                a, true_b = tokens[start:split], tokens[split:end]
            else:  # one word: no true continuation; A leaves room for a B as long
                split = end = min(end, start + budget // 2)
                a, wants_next = tokens[start:end], False
                true_b = a
            if wants_next:
                b = true_b
                start = end
            else:  # an empty other document (it tokenized to nothing) is replaced by this one
                other = np.asarray(other_document(rng), np.int32)
                b = self.random_b(other if len(other) else tokens, len(true_b), rng)
                start = split  # the rest of the chunk is put back for the next pair
            yield a, b, IS_NEXT if wants_next else NOT_NEXT

    def random_b(self, other: np.ndarray, length: int, rng: np.random.Generator):
        """Up to `length` tokens of `other` from a random word start; starts that leave
        room for the full length are preferred, so B's length does not give it away."""
        starts = np.flatnonzero(self.word_start[other])
        if len(starts) == 0:
            starts = np.zeros(1, np.int64)
        fitting = starts[starts + length <= len(other)]
        starts = fitting if len(fitting) else starts
        start = int(starts[rng.integers(len(starts))])
        return other[start : start + length]
