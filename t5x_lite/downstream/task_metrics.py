"""Evaluation metrics for fine-tuned tasks: classification and text-to-text (numpy only).

Classification takes integer class ids in [0, num_classes):
    accuracy            fraction of predictions equal to the label
    macro_f1            mean of the per-class F1 over ALL num_classes. A class with no
                        true and no predicted examples has F1 0 (as sklearn's
                        `f1_score(average='macro', labels=range(num_classes),
                        zero_division=0)`), so a class missing from a small eval set
                        lowers the score instead of being left out of the mean.
    matthews_corrcoef   the multi-class MCC (Gorodkin's R_K) from the confusion matrix;
                        0.0 when undefined (all labels or all predictions one class). For
                        2 classes it is the phi coefficient.

Text-to-text compares strings after SQuAD's answer normalization (lowercase, no
punctuation, no articles a/an/the, single spaces):
    exact_match   1.0 if the prediction equals a reference, max over references
    token_f1      F1 of the bag-of-tokens overlap, max over references

Mismatched lengths or no examples raise ValueError: they are bugs in the caller.
"""

from __future__ import annotations

import collections
import re
import string

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _class_ids(labels, predictions, num_classes: int | None = None):
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.ndim != 1 or labels.shape != predictions.shape:
        raise ValueError(
            f"labels {labels.shape} and predictions {predictions.shape} must be 1-D and the"
            " same length"
        )
    if labels.size == 0:
        raise ValueError("no examples")
    if num_classes is not None:
        for name, ids in (("labels", labels), ("predictions", predictions)):
            if not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"{name} must be integer class ids, got dtype {ids.dtype}")
            if ids.min() < 0 or ids.max() >= num_classes:
                raise ValueError(f"{name} must be in [0, {num_classes}), got {ids}")
    return labels, predictions


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """[num_classes (true), num_classes (predicted)] counts, as int64."""
    labels, predictions = _class_ids(labels, predictions, num_classes)
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(labels, predictions) -> float:
    labels, predictions = _class_ids(labels, predictions)
    return float(np.mean(labels == predictions))


def macro_f1(labels, predictions, num_classes: int) -> float:
    counts = confusion_matrix(labels, predictions, num_classes).astype(np.float64)
    true_positives = np.diag(counts)
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (#predicted + #true), 0 where both are 0.
    denominator = counts.sum(axis=0) + counts.sum(axis=1)
    per_class = np.divide(
        2 * true_positives,
        denominator,
        out=np.zeros(num_classes),
        where=denominator > 0,
    )
    return float(per_class.mean())


def matthews_corrcoef(labels, predictions, num_classes: int) -> float:
    counts = confusion_matrix(labels, predictions, num_classes).astype(np.float64)
    total = counts.sum()
    correct = np.trace(counts)
    true_per_class = counts.sum(axis=1)
    predicted_per_class = counts.sum(axis=0)
    covariance = correct * total - predicted_per_class @ true_per_class
    variance_predicted = total**2 - predicted_per_class @ predicted_per_class
    variance_true = total**2 - true_per_class @ true_per_class
    denominator = np.sqrt(variance_predicted * variance_true)
    return float(covariance / denominator) if denominator > 0 else 0.0


def classification_metrics(labels, predictions, num_classes: int) -> dict:
    return {
        "accuracy": accuracy(labels, predictions),
        "macro_f1": macro_f1(labels, predictions, num_classes),
        "mcc": matthews_corrcoef(labels, predictions, num_classes),
        "num_examples": len(labels),
    }


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_references(references: str | list[str]) -> list[str]:
    references = [references] if isinstance(references, str) else list(references)
    if not references:
        raise ValueError("no references")
    return references


def exact_match(prediction: str, references: str | list[str]) -> float:
    prediction = normalize_answer(prediction)
    return max(
        float(prediction == normalize_answer(reference)) for reference in _as_references(references)
    )


def _token_f1(prediction_tokens: list[str], reference_tokens: list[str]) -> float:
    if not prediction_tokens or not reference_tokens:
        return float(prediction_tokens == reference_tokens)  # 1.0 only when both empty
    common = collections.Counter(prediction_tokens) & collections.Counter(reference_tokens)
    num_common = sum(common.values())
    if num_common == 0:
        return 0.0
    precision = num_common / len(prediction_tokens)
    recall = num_common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: str | list[str]) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    return max(
        _token_f1(prediction_tokens, normalize_answer(reference).split())
        for reference in _as_references(references)
    )


def text_to_text_metrics(predictions: list[str], references: list[str | list[str]]) -> dict:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references; they must pair up"
        )
    if not predictions:
        raise ValueError("no examples")
    pairs = list(zip(predictions, references))
    return {
        "exact_match": float(np.mean([exact_match(*pair) for pair in pairs])),
        "token_f1": float(np.mean([token_f1(*pair) for pair in pairs])),
        "num_examples": len(predictions),
    }
