"""Imported by the fork server of ``run_kit.forked_cli``: pays the one-time import costs
(torch.optim's lazy imports on the first optimizer, matplotlib's pyplot) once, so forked
children start at once."""

import torch

import crucible.plot
import crucible.run
import crucible.training.backends.local

torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=0.0, foreach=False)
crucible.plot._pyplot()
