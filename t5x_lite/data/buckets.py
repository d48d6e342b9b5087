"""Length buckets: batches of rows cut to the length their examples need.

Fine-tuning rows hold one example each (PACK_NONE), padded to the row length: SST-2
sentences average ~20 tokens in 64-token rows, so most of a step's compute would go to
padding. Two steps remove most of it:

  trim     each feature group of a batch (`encoder`, `decoder`, ...; see packing) is cut
           to the smallest multiple of `multiple` that holds the batch's longest example
           in that group (never longer than the row). Only padding is removed: segment id
           0 marks it, and the models mask it, so every example's outputs are unchanged.
  windows  in training, `window` batches' worth of rows are read at a time, sorted by
           length and cut into batches, which are then emitted in a random order; each
           batch then holds examples of similar length and trims well. Every row is still
           used once per pass, and the randomness comes from (seed, window index), so a
           resumed run sees the same batches.

A batch's shape then varies from step to step within a few buckets (row length /
`multiple` of them at most); jit compiles each shape once (and the persistent cache
keeps them for the next run).
"""

from __future__ import annotations

import grain
import numpy as np

from t5x_lite.data.packing import feature_group

_WINDOW_PURPOSE = 3  # mixed with the seed, unlike the pipeline's other draws


def used_lengths(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per feature group, each row's real length: [rows] int (the count of non-zero
    segment ids; PACK_NONE and first_fit rows keep their padding at the end)."""
    return {
        name.removesuffix("_segment_ids"): np.count_nonzero(values, axis=-1)
        for name, values in batch.items()
        if name.endswith("_segment_ids")
    }


def bucket_length(used: int, multiple: int, row_length: int) -> int:
    """The smallest multiple of `multiple` >= `used` (at least one), at most the row."""
    return min(row_length, max(1, -(-used // multiple)) * multiple)


def trim(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """`batch` with each feature group cut to its bucket length (see the module
    docstring); the batch itself when `multiple` is 0."""
    if not multiple:
        return batch
    lengths = {}
    for group, used in used_lengths(batch).items():
        row_length = batch[f"{group}_segment_ids"].shape[1]
        lengths[group] = bucket_length(int(used.max(initial=0)), multiple, row_length)
    return {name: values[:, : lengths[feature_group(name)]] for name, values in batch.items()}


def pad_to_common(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Batches of one step (e.g. one per data shard) padded with zeros to the longest
    length of each feature, so they can be concatenated."""
    longest = {name: max(b[name].shape[1] for b in batches) for name in batches[0]}
    return [
        {
            name: np.pad(values, ((0, 0), (0, longest[name] - values.shape[1])))
            for name, values in batch.items()
        }
        for batch in batches
    ]


def row_length_key(row: dict[str, np.ndarray]) -> int:
    """How long a row's examples are, summed over its groups (the sort key)."""
    segments = (values for name, values in row.items() if name.endswith("_segment_ids"))
    return sum(int(np.count_nonzero(values)) for values in segments)


class SortedWindows(grain.IterDataset):
    """Rows in windows of `window * batch_size`, each sorted by length and emitted as
    `window` blocks of `batch_size` rows in a random order (see the module docstring).
    A finite parent's last window may be shorter; its last block then too."""

    def __init__(self, parent: grain.IterDataset, *, batch_size: int, window: int, seed: int):
        super().__init__(parent)
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size={batch_size} and window={window} must be >= 1")
        self._batch_size, self._window, self._seed = batch_size, window, seed

    def __iter__(self) -> grain.DatasetIterator:
        return _SortedWindowsIterator(
            iter(self._parent), batch_size=self._batch_size, window=self._window, seed=self._seed
        )

    def __str__(self) -> str:
        return f"SortedWindows(batch_size={self._batch_size}, window={self._window})"


class _SortedWindowsIterator(grain.DatasetIterator):
    """State: the parent's state where the current window began, the window's index and
    how many of its rows were emitted. Restoring rereads that window from the parent (the
    pipeline is deterministic) and continues after those rows."""

    def __init__(self, parent: grain.DatasetIterator, *, batch_size: int, window: int, seed: int):
        super().__init__(parent)
        self._batch_size, self._window, self._seed = batch_size, window, seed
        self._window_index = -1
        self._window_start = self._parent.get_state()
        self._rows: list[dict[str, np.ndarray]] = []
        self._emitted = 0

    def __next__(self) -> dict[str, np.ndarray]:
        if self._emitted == len(self._rows):
            self._read_window()
        self._emitted += 1
        return self._rows[self._emitted - 1]

    def _read_window(self) -> None:
        start = self._parent.get_state()
        rows = []
        for _ in range(self._batch_size * self._window):
            try:
                rows.append(next(self._parent))
            except StopIteration:
                break
        if not rows:
            raise StopIteration
        self._window_index += 1
        self._window_start, self._emitted = start, 0
        self._rows = self._order(rows, self._window_index)

    def _order(self, rows: list[dict[str, np.ndarray]], window_index: int) -> list:
        by_length = sorted(range(len(rows)), key=lambda i: row_length_key(rows[i]))  # stable
        blocks = [
            by_length[i : i + self._batch_size] for i in range(0, len(rows), self._batch_size)
        ]
        rng = np.random.default_rng([self._seed, _WINDOW_PURPOSE, window_index])
        return [rows[i] for b in rng.permutation(len(blocks)) for i in blocks[b]]

    def get_state(self) -> dict:
        return {
            "parent": self._window_start,
            "window_index": self._window_index,
            "emitted": self._emitted,
        }

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._window_start, self._rows, self._emitted = state["parent"], [], 0
        self._window_index = max(state["window_index"], 0) - 1
        if state["window_index"] >= 0:  # reread the window, less what was emitted
            self._read_window()
            self._emitted = state["emitted"]
