"""``async with backend:``, for every backend that has ``aclose``."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncClosing:
    """Leaving ``async with`` awaits ``aclose()``, however the block ended."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
