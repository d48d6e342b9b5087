"""Packing: variable-length examples -> fixed-length rows with segment ids and positions.

An example is a dict of 1-D int32 arrays. Features are grouped by the name prefix
before the first "_" (`decoder_input_tokens`, `decoder_loss_weights` -> `decoder`);
within a group every feature has the same length per example and the same row length.
Each output row holds every feature padded with 0 to its row length, plus for each
group `<group>_segment_ids` (1, 2, ... per example in the row, 0 in padding) and
`<group>_positions` (position inside that example, 0 in padding). An example has the
same segment id in every group, so encoder-decoder attention can match segments.

Three modes (an objective's `pack_mode` is one of the PACK_* constants below):
  concat     one group; examples are concatenated and cut into full rows. An example
             that straddles a row boundary continues in the next row under a new
             segment id with positions restarting at 0, so positions stay < row length.
             Only the final row of a finite stream is padded.
  first_fit  each example, truncated to the row lengths, goes whole into the first of
             at most `num_open_rows` open rows with room in every group; when none has
             room and all slots are taken, the oldest open row is emitted. A row is
             emitted as soon as one of its groups is full.
  none       one example per row: each feature truncated to its row length and padded;
             segment id 1 and positions 0..n-1 over the example, 0 in padding.

Iterators save their parent's state plus their pending tokens (as plain lists of
ints), so a restored iterator continues with exactly the rows it would have produced.
"""

from __future__ import annotations

from collections.abc import Mapping

import grain
import numpy as np

Example = dict[str, np.ndarray]

PACK_CONCAT = "concat"  # concatenate documents and cut into rows; documents may straddle rows
PACK_FIRST_FIT = "first_fit"  # whole examples placed into the first row with room; never split
PACK_NONE = "none"  # one example per row, each feature truncated/padded to its row length


def feature_group(feature: str) -> str:
    return feature.split("_", 1)[0]


def group_row_lengths(feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """Feature row lengths -> row length per group; features of a group must agree."""
    lengths: dict[str, int] = {}
    for feature, length in feature_lengths.items():
        group = feature_group(feature)
        if lengths.setdefault(group, length) != length:
            raise ValueError(
                f"feature {feature!r} has row length {length} but other {group!r} features"
                f" have {lengths[group]}"
            )
        if length <= 0:
            raise ValueError(f"feature {feature!r} has non-positive row length {length}")
    return lengths


def zero_batch(feature_lengths: Mapping[str, int], rows: int) -> dict[str, np.ndarray]:
    """All-zero int32 [rows, row length] arrays shaped like a packed batch of these
    features: every feature, then each group's segment ids and positions. Segment id 0
    is padding, so these rows carry zero loss weight (and serve as a model's dummy input)."""
    lengths = dict(feature_lengths)
    for group, length in group_row_lengths(feature_lengths).items():
        lengths[f"{group}_segment_ids"] = lengths[f"{group}_positions"] = length
    return {name: np.zeros((rows, length), np.int32) for name, length in lengths.items()}


def segments_and_positions(lengths: list[int], row_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of the examples in a row -> (segment_ids, positions), each [row_length].

    A zero length keeps its segment id unused, so ids stay aligned across groups.
    """
    lengths_array = np.asarray(lengths, dtype=np.int64)  # [num_examples]
    used = int(lengths_array.sum())
    starts = np.cumsum(lengths_array) - lengths_array  # [num_examples]
    segment_ids = np.zeros(row_length, np.int32)
    positions = np.zeros(row_length, np.int32)
    segment_ids[:used] = np.repeat(np.arange(1, len(lengths) + 1), lengths_array)
    positions[:used] = np.arange(used) - np.repeat(starts, lengths_array)
    return segment_ids, positions


def _pad(values: np.ndarray, row_length: int) -> np.ndarray:
    row = np.zeros(row_length, np.int32)
    row[: len(values)] = values
    return row


def _example_lengths(example: Example, feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """Per-group length of one example; checks it has exactly the packed features."""
    if example.keys() != feature_lengths.keys():
        raise ValueError(
            f"example has features {sorted(example)}, expected {sorted(feature_lengths)}"
        )
    lengths: dict[str, int] = {}
    for feature, values in example.items():
        group = feature_group(feature)
        if values.ndim != 1:
            raise ValueError(f"feature {feature!r} has shape {values.shape}; packing needs 1-D")
        if lengths.setdefault(group, len(values)) != len(values):
            raise ValueError(
                f"feature {feature!r} has {len(values)} values but other {group!r} features"
                f" have {lengths[group]}"
            )
    return lengths


class PackIterDataset(grain.IterDataset):
    """Packs a stream of examples into rows; see the module docstring for the modes."""

    def __init__(
        self,
        parent: grain.IterDataset,
        *,
        feature_lengths: Mapping[str, int],
        pack_mode: str,
        num_open_rows: int,
    ):
        super().__init__(parent)
        self._feature_lengths = dict(feature_lengths)
        self._group_lengths = group_row_lengths(feature_lengths)
        self._pack_mode = pack_mode
        self._num_open_rows = num_open_rows
        if pack_mode == PACK_CONCAT and len(self._group_lengths) != 1:
            raise ValueError(f"concat packing needs one feature group, got {self._group_lengths}")
        if pack_mode not in (PACK_CONCAT, PACK_FIRST_FIT, PACK_NONE):
            raise ValueError(f"unknown pack mode {pack_mode!r}")
        if num_open_rows < 1:
            raise ValueError(f"num_open_rows={num_open_rows} must be >= 1")

    def __iter__(self) -> grain.DatasetIterator:
        parent = iter(self._parent)
        if self._pack_mode == PACK_CONCAT:
            return _ConcatPackIterator(parent, self._feature_lengths)
        if self._pack_mode == PACK_NONE:
            return _OneExamplePerRowIterator(parent, self._feature_lengths)
        return _FirstFitPackIterator(parent, self._feature_lengths, self._num_open_rows)

    def __str__(self) -> str:
        return f"PackIterDataset(pack_mode={self._pack_mode}, lengths={self._feature_lengths})"


class _ConcatPackIterator(grain.DatasetIterator):
    """Concat mode: a queue of pending pieces (whole examples or the rest of one)."""

    def __init__(self, parent: grain.DatasetIterator, feature_lengths: Mapping[str, int]):
        super().__init__(parent)
        self._feature_lengths = dict(feature_lengths)
        (self._group,) = group_row_lengths(feature_lengths)
        self._row_length = next(iter(feature_lengths.values()))
        self._pieces: list[Example] = []  # oldest first; all features of a piece equally long
        self._buffered = 0  # tokens in self._pieces

    def __next__(self) -> Example:
        while self._buffered < self._row_length:
            try:
                example = next(self._parent)
            except StopIteration:
                if not self._pieces:
                    raise
                break  # the final row is emitted padded
            length = _example_lengths(example, self._feature_lengths)[self._group]
            if length:
                self._pieces.append({f: example[f].astype(np.int32) for f in self._feature_lengths})
                self._buffered += length
        return self._cut_row()

    def _cut_row(self) -> Example:
        """Takes the first row_length tokens (or all, at the end) out of the pieces.

        Works piece by piece, never re-copying the pending tail, so one very long
        document costs linear time however many rows it fills.
        """
        parts: dict[str, list[np.ndarray]] = {f: [] for f in self._feature_lengths}
        row_lengths: list[int] = []
        room = self._row_length
        while self._pieces and room > 0:
            piece = self._pieces[0]
            take = min(len(next(iter(piece.values()))), room)
            for feature, values in piece.items():
                parts[feature].append(values[:take])
                piece[feature] = values[take:]  # the rest is a new segment in the next row
            row_lengths.append(take)
            room -= take
            if len(next(iter(piece.values()))) == 0:
                self._pieces.pop(0)
        self._buffered -= self._row_length - room
        row = {f: _pad(np.concatenate(parts[f]), self._row_length) for f in self._feature_lengths}
        segment_ids, positions = segments_and_positions(row_lengths, self._row_length)
        row[f"{self._group}_segment_ids"] = segment_ids
        row[f"{self._group}_positions"] = positions
        return row

    def get_state(self) -> dict:
        return {
            "parent": self._parent.get_state(),
            "pieces": [{f: values.tolist() for f, values in p.items()} for p in self._pieces],
        }

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._pieces = [
            {f: np.asarray(values, np.int32) for f, values in piece.items()}
            for piece in state["pieces"]
        ]
        self._buffered = sum(len(next(iter(piece.values()))) for piece in self._pieces)


class _OneExamplePerRowIterator(grain.DatasetIterator):
    """none mode: every example becomes its own row; nothing is pending between rows."""

    def __init__(self, parent: grain.DatasetIterator, feature_lengths: Mapping[str, int]):
        super().__init__(parent)
        self._feature_lengths = dict(feature_lengths)
        self._group_lengths = group_row_lengths(feature_lengths)

    def __next__(self) -> Example:
        example = next(self._parent)
        lengths = _example_lengths(example, self._feature_lengths)
        row = {
            feature: _pad(example[feature][:length].astype(np.int32), length)
            for feature, length in self._feature_lengths.items()
        }
        for group, row_length in self._group_lengths.items():
            used = min(lengths[group], row_length)
            segment_ids, positions = segments_and_positions([used], row_length)
            row[f"{group}_segment_ids"] = segment_ids
            row[f"{group}_positions"] = positions
        return row

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state()}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])


class _OpenRow:
    """A first_fit row being filled: per-feature token chunks, per-group example lengths."""

    def __init__(self, features: list[str], groups: list[str]):
        self.chunks: dict[str, list[np.ndarray]] = {feature: [] for feature in features}
        self.lengths: dict[str, list[int]] = {group: [] for group in groups}

    def has_room(self, lengths: Mapping[str, int], group_lengths: Mapping[str, int]) -> bool:
        return all(
            sum(self.lengths[group]) + lengths[group] <= group_lengths[group]
            for group in group_lengths
        )

    def add(self, example: Example, lengths: Mapping[str, int]) -> None:
        for feature, chunk in self.chunks.items():
            chunk.append(example[feature][: lengths[feature_group(feature)]].astype(np.int32))
        for group, group_lengths in self.lengths.items():
            group_lengths.append(lengths[group])

    def any_group_full(self, group_lengths: Mapping[str, int]) -> bool:
        return any(sum(self.lengths[group]) == group_lengths[group] for group in group_lengths)

    def render(
        self, feature_lengths: Mapping[str, int], group_lengths: Mapping[str, int]
    ) -> Example:
        row = {
            feature: _pad(np.concatenate(self.chunks[feature] or [np.zeros(0, np.int32)]), length)
            for feature, length in feature_lengths.items()
        }
        for group, lengths in self.lengths.items():
            segment_ids, positions = segments_and_positions(lengths, group_lengths[group])
            row[f"{group}_segment_ids"] = segment_ids
            row[f"{group}_positions"] = positions
        return row

    def to_state(self) -> dict:
        return {
            "tokens": {f: np.concatenate(c).tolist() if c else [] for f, c in self.chunks.items()},
            "lengths": {group: list(lengths) for group, lengths in self.lengths.items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> _OpenRow:
        row = cls(list(state["tokens"]), list(state["lengths"]))
        row.chunks = {f: [np.asarray(t, np.int32)] for f, t in state["tokens"].items()}
        row.lengths = {group: list(lengths) for group, lengths in state["lengths"].items()}
        return row


class _FirstFitPackIterator(grain.DatasetIterator):
    """first_fit mode: up to `num_open_rows` rows being filled, and rows ready to emit."""

    def __init__(
        self,
        parent: grain.DatasetIterator,
        feature_lengths: Mapping[str, int],
        num_open_rows: int,
    ):
        super().__init__(parent)
        self._feature_lengths = dict(feature_lengths)
        self._group_lengths = group_row_lengths(feature_lengths)
        self._num_open_rows = num_open_rows
        self._open_rows: list[_OpenRow] = []  # oldest first
        self._ready_rows: list[_OpenRow] = []  # finished, emitted first-in first-out

    def __next__(self) -> Example:
        while not self._ready_rows:
            try:
                example = next(self._parent)
            except StopIteration:
                if not self._open_rows:
                    raise
                self._ready_rows, self._open_rows = self._open_rows, []
                break
            self._place(example)
        return self._ready_rows.pop(0).render(self._feature_lengths, self._group_lengths)

    def _place(self, example: Example) -> None:
        lengths = {
            group: min(length, self._group_lengths[group])  # longer examples are truncated
            for group, length in _example_lengths(example, self._feature_lengths).items()
        }
        row = next((r for r in self._open_rows if r.has_room(lengths, self._group_lengths)), None)
        if row is None:
            if len(self._open_rows) == self._num_open_rows:
                self._ready_rows.append(self._open_rows.pop(0))
            row = _OpenRow(list(self._feature_lengths), list(self._group_lengths))
            self._open_rows.append(row)
        row.add(example, lengths)
        if row.any_group_full(self._group_lengths):
            self._open_rows.remove(row)
            self._ready_rows.append(row)

    def get_state(self) -> dict:
        return {
            "parent": self._parent.get_state(),
            "open_rows": [row.to_state() for row in self._open_rows],
            "ready_rows": [row.to_state() for row in self._ready_rows],
        }

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._open_rows = [_OpenRow.from_state(row) for row in state["open_rows"]]
        self._ready_rows = [_OpenRow.from_state(row) for row in state["ready_rows"]]


def pack(
    dataset: grain.IterDataset,
    *,
    feature_lengths: Mapping[str, int],
    pack_mode: str,
    num_open_rows: int,
) -> PackIterDataset:
    """Packs `dataset`'s examples into rows of `feature_lengths` (see module docstring)."""
    return PackIterDataset(
        dataset, feature_lengths=feature_lengths, pack_mode=pack_mode, num_open_rows=num_open_rows
    )
