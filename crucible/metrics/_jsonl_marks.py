"""`<path>.keys`: the idempotency marks of a metrics.jsonl file.

Before a keyed batch is written, a mark with the byte range it will occupy is appended. A mark
whose range lies past the end of the data file belongs to a batch that died while being
written: its partial records are cut off and the mark is voided by a `void` line, so retrying
the batch stores it exactly once. A key counts as stored while it has a valid mark.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence

import msgspec

__all__ = ["BatchMark", "encode_marks", "fold_marks", "remap_marks"]

_encoder = msgspec.json.Encoder()


class BatchMark(msgspec.Struct, frozen=True, omit_defaults=True):
    """One line of `<path>.keys`: a keyed batch occupies bytes [start, end) of the data file.

    A mark with an empty range (0, 0) says only that the key is stored: a rewrite that could
    not place the batch keeps its key that way.
    """

    key: str
    start: int
    end: int
    void: bool = False


_mark_decoder = msgspec.json.Decoder(BatchMark)


def encode_marks(marks: Sequence[BatchMark]) -> bytes:
    return b"".join(_encoder.encode(mark) + b"\n" for mark in marks)


def fold_marks(data: bytes, keys: dict[str, BatchMark], size: int) -> tuple[int, list[BatchMark]]:
    """Fold the complete mark lines `data` into `keys`, given a data file of `size` bytes.

    Returns the size the data file must be cut to (a batch that died mid-write leaves only
    part of its records) and the void marks to append for such batches.
    """
    marks: list[BatchMark] = []
    for line in data.split(b"\n")[:-1]:
        try:
            marks.append(_mark_decoder.decode(line))
        except msgspec.DecodeError:
            continue  # not ours to judge; marks only serve retries
    # A void line cancels the last mark before it with the same key and range (a retry
    # of that batch may later write an identical mark, which stays valid).
    later_voids: Counter[tuple[str, int, int]] = Counter()
    cancelled: set[int] = set()
    for index in range(len(marks) - 1, -1, -1):
        ident = (marks[index].key, marks[index].start, marks[index].end)
        if marks[index].void:
            later_voids[ident] += 1
        elif later_voids[ident]:
            later_voids[ident] -= 1
            cancelled.add(index)
    voids: list[BatchMark] = []
    for index, mark in enumerate(marks):
        if mark.void:
            if keys.get(mark.key) == msgspec.structs.replace(mark, void=False):
                del keys[mark.key]  # cancels a mark folded in by an earlier refresh
        elif index in cancelled:
            continue
        elif mark.end <= size:
            keys[mark.key] = mark
        else:  # the batch died mid-write: drop what reached the file, void the mark
            size = min(size, mark.start)
            voids.append(msgspec.structs.replace(mark, void=True))
    return size, voids


def remap_marks(
    keys: Mapping[str, BatchMark],
    starts: Sequence[int],
    new_starts: Sequence[int | None],
    ends: Sequence[int],
    *,
    forget_dropped: bool,
) -> list[BatchMark]:
    """The marks of a data file rewritten line by line.

    Line i spanned bytes [starts[i], ends[i]) and now starts at new_starts[i] (None: dropped).
    A mark keeps the new range of its batch's kept lines. A batch with no line left is
    forgotten when `forget_dropped` (re-sending it stores it again), else its key stays
    stored with an empty range.
    """
    remapped: list[BatchMark] = []
    for key, mark in keys.items():
        first = bisect.bisect_left(starts, mark.start)
        last = bisect.bisect_left(starts, mark.end)
        kept = [i for i in range(first, last) if new_starts[i] is not None]
        if mark.start < mark.end and kept:
            start = new_starts[kept[0]]
            end = new_starts[kept[-1]]
            assert start is not None and end is not None
            remapped.append(BatchMark(key, start, end + ends[kept[-1]] - starts[kept[-1]]))
        elif mark.start == mark.end or not forget_dropped:
            remapped.append(BatchMark(key, 0, 0))
    return remapped
