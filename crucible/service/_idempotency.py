"""Idempotency keys, scoped per token and run, and bound to the batch they first came with.

A client's `Idempotency-Key` means "this batch, once". The store dedupes on the key it is
given, which is global; so the service hands it a key derived from the token, the run, the
client's key AND a digest of the batch. Two clients (or two runs) that pick the same key
therefore never shadow each other, and a different batch under a reused key can never be
dropped as a "duplicate": at worst it is stored as what it is, a different batch.

The ledger remembers, for the last `capacity` keys, which batch each scoped key came with,
so a reused key with a different body is answered 409 instead of being stored. (A key older
than that, or one seen before a restart, is no longer checked; its batch is then stored,
never lost.) It also tells a first delivery from a retry, so a retry is neither pushed to
live subscribers nor counted twice.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from enum import Enum

import msgspec

from ._errors import ApiError

__all__ = ["IdempotencyLedger", "KeyState", "check_key"]

_KEY_MAX = 200


def check_key(key: str | None) -> str | None:
    """The `Idempotency-Key` header, if it is 1-200 printable ASCII characters; else 422."""
    if key is not None and not (0 < len(key) <= _KEY_MAX and key.isascii() and key.isprintable()):
        raise ApiError(
            422,
            "invalid_parameter",
            f"Idempotency-Key must be 1-{_KEY_MAX} printable ASCII characters",
        )
    return key


def _hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))  # length-prefixed: no ambiguous joins
        digest.update(data)
    return digest.hexdigest()


class KeyState(Enum):
    NEW = "new"  # first time this scoped key is seen (by this process)
    RETRY = "retry"  # seen with the same batch: store (the store dedupes) but do not publish


class IdempotencyLedger:
    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._digests: OrderedDict[str, str] = OrderedDict()  # scoped key -> batch digest

    def claim(self, token: str, run_id: str, key: str, batch: object) -> tuple[str, KeyState]:
        """The store key for this batch, and whether it is new; 409 for a reused key.

        `batch` is the decoded request (its canonical JSON is digested, so a retry that
        re-serialises the same batch differently still matches).
        """
        scoped = _hash(token, run_id, key)
        digest = _hash(msgspec.json.encode(batch))
        known = self._digests.get(scoped)
        if known is not None and known != digest:
            raise ApiError(
                409,
                "idempotency_key_reused",
                f"Idempotency-Key {key!r} was already used for a different batch of run "
                f"{run_id!r}; send a new key with every new batch",
            )
        state = KeyState.RETRY if known is not None else KeyState.NEW
        self._digests[scoped] = digest
        self._digests.move_to_end(scoped)
        if len(self._digests) > self._capacity:
            self._digests.popitem(last=False)
        return f"svc:{scoped}:{digest}", state

    def forget(self, token: str, run_id: str, key: str) -> None:
        """Undo a NEW claim whose batch was not stored, so a retry is not taken for a dupe."""
        self._digests.pop(_hash(token, run_id, key), None)
