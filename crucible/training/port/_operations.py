"""The names of the backend operations, declared once for every layer that names them.

The session journals and replays by these names, the fault injector targets them, the Tinker
backend decides from them whether a failure leaves its client unusable, and the recipe's
config validates ``fault_ops`` against them.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

OperationName = Literal[
    "forward_backward",
    "forward",
    "optim_step",
    "save_state",
    "load_state",
    "save_weights_for_sampler",
    "delete_checkpoint",
    "sampling_client",
    "sample",
    "compute_logprobs",
]
#: Every operation of a TrainingBackend and of its SamplingClients, in a stable order.
OPERATIONS: Final[tuple[OperationName, ...]] = get_args(OperationName)
#: Operations that change the model: after one fails, nobody knows the model's state.
STATE_OPERATIONS: Final[frozenset[OperationName]] = frozenset(
    {"forward_backward", "optim_step", "load_state"}
)
#: Operations that change nothing but whose result depends on their place in the sequence.
ORDERED_READS: Final[frozenset[OperationName]] = frozenset(
    {"forward", "save_state", "save_weights_for_sampler"}
)
#: The operations of a SamplingClient (on fixed weights).
SAMPLER_OPERATIONS: Final[frozenset[OperationName]] = frozenset({"sample", "compute_logprobs"})
