"""The lines of metrics.jsonl: decoding them, and reporting the ones that are not records.

One JSON `MetricRecord` per line. Everything that reads the file (the store, the plot)
decodes it here, so there is one definition of what a record line is: a line that
`MetricRecord` decodes and validates. The last line counts only once it has its newline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ._record import MetricRecord

__all__ = ["BadLine", "ScanReport", "is_record_line", "parse_lines", "read_metrics_file"]

record_decoder = msgspec.json.Decoder(MetricRecord)


class BadLine(msgspec.Struct, frozen=True):
    """A line of a metrics file that is not a valid record (1-based line number)."""

    line: int
    reason: str
    text: str


class ScanReport(msgspec.Struct, frozen=True):
    """What a full read of a metrics file found."""

    records: int
    bad_lines: list[BadLine]
    torn_tail: bool  # the file ends in an incomplete line (a writer is mid-batch, or crashed)


def is_record_line(line: bytes) -> bool:
    try:
        record_decoder.decode(line)
    except msgspec.DecodeError:
        return False
    return True


def read_metrics_file(path: str | os.PathLike[str]) -> Iterator[MetricRecord]:
    """The records of a metrics.jsonl file, in file order, read without a store.

    Skips what a store's reads skip: lines that are not valid records and a torn last line
    (a writer mid-append). For a finished run's file (the plot); a live store's buffered
    records are not in the file yet, so read those through the store.
    """
    records, _bad, _torn = parse_lines(Path(path).read_bytes())
    return iter(records)


def parse_lines(
    data: bytes, needles: tuple[bytes, ...] = ()
) -> tuple[list[MetricRecord], list[BadLine], bool]:
    """Decode the complete lines of `data`; return records, bad lines and whether it is torn.

    With `needles`, only lines containing the first needle are decoded (see `_select_lines`); a
    record that could match the caller's filter is never left out.
    """
    cut = data.rfind(b"\n") + 1
    body, torn = data[:cut], bool(data[cut:])
    selected = _select_lines(body, needles)
    if selected is not None:
        chosen, starts = selected
    else:
        chosen, starts = body, None
    try:
        return record_decoder.decode_lines(chosen), [], torn  # the fast path: one call
    except msgspec.DecodeError:
        pass
    records: list[MetricRecord] = []
    bad: list[BadLine] = []
    for index, line in enumerate(chosen.split(b"\n")[:-1]):
        if not line.strip():
            continue
        try:
            records.append(record_decoder.decode(line))
        except msgspec.DecodeError as error:
            number = index + 1 if starts is None else body.count(b"\n", 0, starts[index]) + 1
            text = line[:200].decode("utf-8", errors="replace")
            bad.append(BadLine(number, str(error), text))
    return records, bad, torn


def _select_lines(body: bytes, needles: tuple[bytes, ...]) -> tuple[bytes, list[int]] | None:
    """The lines holding the first needle (a JSON-encoded string), and where each starts.

    The caller filters the decoded records exactly; this only spares decoding lines that
    cannot match.
    Sound because, in a line without a backslash, a JSON string can only be spelled one way:
    a record whose metric is "loss" must contain the bytes `"loss"`. A body with any backslash
    (an escaped string somewhere) is not filtered: None means "decode everything".
    """
    if not needles or b"\\" in body:
        return None
    needle = needles[0]
    find, rfind = body.find, body.rfind
    pieces: list[bytes] = []
    starts: list[int] = []
    position = 0
    while (hit := find(needle, position)) >= 0:
        start = rfind(b"\n", 0, hit) + 1
        position = find(b"\n", hit) + 1  # the body ends with a newline
        pieces.append(body[start:position])
        starts.append(start)
    return b"".join(pieces), starts
