"""The Session actor's cost per train step: ``python -m bench.session_overhead [--steps N]``.

A backend that takes 50 ms per operation, executed in submission order, stands in for a
remote one. The same pipelined loop (submit forward_backward and optim_step, then await them)
runs against it directly (the baseline) and through open_training's supervised session
(journal, actor calls, the in-order completion task). Also printed by ``bench.training``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from typing import Any

import anyio
from tinker import types

from crucible.actors import open_runtime
from crucible.training import TrainingBackend, open_training
from crucible.training.backends.local import ByteTokenizer

OP_SECONDS = 0.05
ADAM = types.AdamParams(learning_rate=1e-3)
LOSS_INPUTS: dict[str, Any] = {"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]}
BATCH = [types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]), loss_fn_inputs=LOSS_INPUTS)]


class SleepyBackend:
    """Each operation finishes OP_SECONDS after the previous one (one model, in order)."""

    def __init__(self) -> None:
        self.tokenizer = ByteTokenizer()
        self._free_at = 0.0

    def info(self) -> types.GetInfoResponse:
        return types.GetInfoResponse(model_id="sleepy", model_data=types.ModelData())

    def _op(self, result: Any) -> Any:
        done_at = max(anyio.current_time(), self._free_at) + OP_SECONDS
        self._free_at = done_at

        async def finish() -> Any:
            await anyio.sleep_until(done_at)
            return result

        return finish()

    async def forward_backward(self, data: Sequence[types.Datum], loss_fn: str = "") -> Any:
        return self._op(types.ForwardBackwardOutput("ArrayRecord", [], {"loss:sum": 1.0}))

    async def optim_step(self, adam_params: types.AdamParams) -> Any:
        return self._op(types.OptimStepResponse(metrics={}))

    async def aclose(self) -> None:
        pass


async def loop(backend: Any, steps: int, pipelined: bool) -> float:
    """Pipelined: step k+1 is submitted before step k's results are awaited (the backend
    never idles, so per-op costs hide behind it). Sequential: every op is awaited before the
    next is submitted, which exposes the whole cost of each round trip."""
    started = anyio.current_time()
    pending = None
    for _ in range(steps):
        fb = await backend.forward_backward(BATCH)
        if not pipelined:
            await fb
        optim = await backend.optim_step(ADAM)
        if not pipelined:
            await optim
            continue
        if pending is not None:
            await pending[0]
            await pending[1]
        pending = (fb, optim)
    if pending is not None:
        await pending[0]
        await pending[1]
    return anyio.current_time() - started


async def through_session(steps: int, pipelined: bool) -> float:
    def make_backend(incarnation: int) -> TrainingBackend:
        return SleepyBackend()  # type: ignore[return-value]

    with tempfile.TemporaryDirectory() as log_dir:
        async with open_runtime() as rt, open_training(rt, make_backend, log_dir) as tree:
            return await loop(tree.session, steps, pipelined)


def run(steps: int) -> None:
    print(f"session overhead: {steps} train steps, {OP_SECONDS * 1e3:.0f} ms per backend op")
    print(f"  {'loop':10} {'direct ms/step':>15} {'session ms/step':>16} {'overhead':>10}")
    for pipelined in (True, False):
        direct = anyio.run(loop, SleepyBackend(), steps, pipelined)
        session = anyio.run(through_session, steps, pipelined)
        per_step = (session - direct) / steps
        print(
            f"  {'pipelined' if pipelined else 'sequential':10} {direct / steps * 1e3:15.3f}"
            f" {session / steps * 1e3:16.3f} {per_step / (direct / steps):+10.3%}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=200)
    run(parser.parse_args(argv).steps)


if __name__ == "__main__":
    main()
