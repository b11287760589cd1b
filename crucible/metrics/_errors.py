"""The typed errors of crucible.metrics: each message names what is wrong and what to do."""

from __future__ import annotations


class MetricsError(Exception):
    """Base class of every error raised by a metrics store."""


class InvalidRecord(MetricsError, ValueError):
    """A metric record (or one record of a batch) failed validation; nothing was stored.

    `field` names the offending field; `index` is the record's position in a batch passed
    to `record_many` (None for a single record).
    """

    def __init__(self, field: str, problem: str, *, index: int | None = None) -> None:
        self.field = field
        self.problem = problem
        self.index = index
        where = f"record #{index} of the batch: " if index is not None else ""
        super().__init__(f"{where}invalid {field!r}: {problem}")

    def at_index(self, index: int) -> InvalidRecord:
        """The same error, located at position `index` of a batch."""
        return InvalidRecord(self.field, self.problem, index=index)


class StoreClosed(MetricsError, RuntimeError):
    """The store was closed; open a new one to record or read again."""


class StoreWriteError(MetricsError, OSError):
    """The background writer could not persist buffered records.

    The records stay buffered and the writer keeps retrying; the cause is chained.
    """


class MetricNotFound(MetricsError, LookupError):
    """No record exists for this run and metric."""

    def __init__(self, run_id: str, metric: str) -> None:
        self.run_id = run_id
        self.metric = metric
        super().__init__(f"no records for metric {metric!r} in run {run_id!r}")


class ServiceUnavailable(MetricsError, ConnectionError):
    """The metric service could not be reached or failed; the cause is chained.

    Only reads raise it: records are kept in the offline buffer until the service is back.
    """


class CorruptLinesWarning(UserWarning):
    """A JSONL metrics file holds lines that are not valid records; they were skipped.

    The file is left as it is: use `JsonlMetricsStore.scan()` for the line numbers.
    """
