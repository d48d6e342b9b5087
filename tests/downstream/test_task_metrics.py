"""Task metrics checked on hand-worked examples (sklearn is not a dependency)."""

import math

import numpy as np
import pytest

from t5x_lite.downstream import task_metrics

# Confusion matrix, rows = true class, columns = predicted class:
#   [[2, 1, 0],
#    [1, 2, 1],
#    [0, 1, 2]]
THREE_CLASS_LABELS = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
THREE_CLASS_PREDICTIONS = [0, 0, 1, 0, 1, 1, 2, 1, 2, 2]

# Binary, positive class 1: TP=3 (rows 0-2), FN=1 (row 3), FP=2 (rows 4-5), TN=4.
BINARY_LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
BINARY_PREDICTIONS = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


def test_confusion_matrix():
    counts = task_metrics.confusion_matrix(THREE_CLASS_LABELS, THREE_CLASS_PREDICTIONS, 3)
    np.testing.assert_array_equal(counts, [[2, 1, 0], [1, 2, 1], [0, 1, 2]])


def test_three_class_metrics_worked_by_hand():
    # accuracy = trace / total = 6 / 10.
    # F1_k = 2 TP / (#predicted_k + #true_k):
    #   class 0: 2*2 / (3 + 3) = 2/3;  class 1: 2*2 / (4 + 4) = 1/2;  class 2: 2*2 / (3 + 3) = 2/3
    #   macro = (2/3 + 1/2 + 2/3) / 3 = 11/18.
    # MCC: c = 6, s = 10, t = p = (3, 4, 3), sum p_k t_k = 9 + 16 + 9 = 34,
    #   (c s - sum p t) / sqrt((s^2 - sum p^2)(s^2 - sum t^2)) = (60 - 34) / sqrt(66 * 66) = 13/33.
    metrics = task_metrics.classification_metrics(THREE_CLASS_LABELS, THREE_CLASS_PREDICTIONS, 3)
    assert metrics == {
        "accuracy": pytest.approx(0.6),
        "macro_f1": pytest.approx(11 / 18),
        "mcc": pytest.approx(13 / 33),
        "num_examples": 10,
    }


def test_macro_f1_counts_a_class_with_no_examples_as_zero():
    # A 4th class that is never true nor predicted has F1 0: (2/3 + 1/2 + 2/3 + 0) / 4 = 11/24.
    # Its empty row and column change no term of the MCC.
    labels, predictions = THREE_CLASS_LABELS, THREE_CLASS_PREDICTIONS
    assert task_metrics.macro_f1(labels, predictions, 4) == pytest.approx(11 / 24)
    assert task_metrics.matthews_corrcoef(labels, predictions, 4) == pytest.approx(13 / 33)


def test_binary_mcc_is_the_phi_coefficient():
    tp, tn, fp, fn = 3, 4, 2, 1
    # (3*4 - 2*1) / sqrt(5 * 4 * 6 * 5) = 10 / sqrt(600) = 1 / sqrt(6).
    phi = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert phi == pytest.approx(1 / math.sqrt(6))
    mcc = task_metrics.matthews_corrcoef(BINARY_LABELS, BINARY_PREDICTIONS, 2)
    assert mcc == pytest.approx(phi)
    # class 1: 2*3 / (5 + 4) = 2/3; class 0: 2*4 / (5 + 6) = 8/11; mean = 23/33.
    f1 = task_metrics.macro_f1(BINARY_LABELS, BINARY_PREDICTIONS, 2)
    assert f1 == pytest.approx(23 / 33)
    assert task_metrics.accuracy(BINARY_LABELS, BINARY_PREDICTIONS) == pytest.approx(0.7)


def test_perfect_and_inverted_predictions():
    labels = [0, 1, 2, 2, 1, 0]
    assert task_metrics.classification_metrics(labels, labels, 3) == {
        "accuracy": 1.0,
        "macro_f1": 1.0,
        "mcc": 1.0,
        "num_examples": 6,
    }
    inverted = [1, 0, 0, 1]
    assert task_metrics.matthews_corrcoef([0, 1, 1, 0], inverted, 2) == pytest.approx(-1.0)


def test_predicting_one_class_gives_mcc_zero():
    # Every prediction 1: s^2 - sum p^2 = 16 - 16 = 0, so MCC is undefined and reported as 0.
    labels = [0, 1, 1, 0]
    assert task_metrics.matthews_corrcoef(labels, [1, 1, 1, 1], 2) == 0.0
    # class 1: 2*2 / (4 + 2) = 2/3, class 0: 0 -> macro 1/3.
    assert task_metrics.macro_f1(labels, [1, 1, 1, 1], 2) == pytest.approx(1 / 3)
    assert task_metrics.matthews_corrcoef([2, 2], [2, 2], 3) == 0.0  # one true class too


def test_classification_input_errors():
    with pytest.raises(ValueError, match="same length"):
        task_metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="no examples"):
        task_metrics.macro_f1([], [], 2)
    with pytest.raises(ValueError, match=r"predictions must be in \[0, 2\)"):
        task_metrics.matthews_corrcoef([0, 1], [0, 2], 2)
    with pytest.raises(ValueError, match="integer class ids"):
        task_metrics.macro_f1([0.0, 1.0], [0.0, 1.0], 2)


def test_normalize_answer():
    assert task_metrics.normalize_answer("The Cat, sat!  on a\tmat.") == "cat sat on mat"
    assert task_metrics.normalize_answer("An theatre, another") == "theatre another"
    assert task_metrics.normalize_answer("  ...  ") == ""


def test_exact_match():
    assert task_metrics.exact_match("The cat.", ["dog", "cat"]) == 1.0
    assert task_metrics.exact_match("cats", "cat") == 0.0


def test_token_f1_worked_by_hand():
    # "cat sat" vs "cat sat down": 2 common tokens, precision 2/2, recall 2/3,
    # F1 = 2 * 1 * 2/3 / (1 + 2/3) = (4/3) / (5/3) = 0.8.
    assert task_metrics.token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # Multiset overlap: "cat" is common once; precision 1/3, recall 1/2,
    # F1 = 2 * 1/6 / (5/6) = 0.4.
    assert task_metrics.token_f1("cat cat dog", "cat bird") == pytest.approx(0.4)
    assert task_metrics.token_f1("cat sat", ["dog", "Cat sat!"]) == 1.0  # max over references
    assert task_metrics.token_f1("dog", "cat") == 0.0


def test_token_f1_empty_answers():
    assert task_metrics.token_f1("", "") == 1.0
    assert task_metrics.token_f1("the", "!") == 1.0  # both normalize to nothing
    assert task_metrics.token_f1("", "cat") == 0.0
    assert task_metrics.token_f1("cat", "") == 0.0


def test_text_to_text_metrics():
    predictions = ["the cat sat", "Paris", "x"]
    references = ["a cat sat down", ["paris", "Paris, France"], "y"]
    # exact match: 0, 1, 0 -> 1/3; token F1: 0.8, 1, 0 -> 0.6.
    assert task_metrics.text_to_text_metrics(predictions, references) == {
        "exact_match": pytest.approx(1 / 3),
        "token_f1": pytest.approx(0.6),
        "num_examples": 3,
    }


def test_text_to_text_input_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        task_metrics.text_to_text_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no examples"):
        task_metrics.text_to_text_metrics([], [])
    with pytest.raises(ValueError, match="no references"):
        task_metrics.exact_match("a", [])
