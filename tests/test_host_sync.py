"""No host-device synchronisation inside a loss's forward and backward when `num_classes` is given.

A CPU stand-in for `torch.cuda.set_sync_debug_mode("error")`: under `FakeTensorMode` tensors carry shapes
and dtypes but no values, so every operation that would make the host wait for a GPU (`.item()`, `bool()`,
`torch.unique`, `nonzero`, boolean-mask indexing) raises instead of running. The value checks that run on
CPU by design (finiteness, class-id range) are switched off, as they are on a GPU.
"""
import inspect
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import structloss.core as core
from structloss.greediness import find_losses
from structloss.objectives import Objective

N, C, D = 32, 4, 8
LOSSES = find_losses(verbose=False)


def takes_num_classes(cls) -> bool:
    return "num_classes" in inspect.signature(cls.__init__).parameters


def make_loss(cls):
    "The loss with `num_classes=C` (and `embedding_size`) wherever its constructor takes them."
    params = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in (("num_classes", C), ("embedding_size", D)) if k in params})


def run_without_values(fn):
    "Call `fn(z, y)` on value-less tensors; raises if anything in it reads a tensor's values on the host."
    with mock.patch.object(core, "reads_values", lambda x: False), FakeTensorMode(allow_non_fake_inputs=True):
        z = torch.randn(N, D, requires_grad=True)
        y = torch.arange(N) % C
        out = fn(z, y)
        out.backward()
    return out


def test_harness_catches_a_sync():
    "The stand-in is not vacuous: `.item()`, `unique` and boolean indexing inside forward are caught."
    for bad in (lambda z, y: z.sum() * float(z.sum().item()),
                lambda z, y: z[:, : len(torch.unique(y))].sum(),
                lambda z, y: z[y > 0].sum()):
        with pytest.raises(Exception, match="[Dd]ata.?[Dd]ependent|DynamicOutputShape|_local_scalar_dense|nonzero|unique"):
            run_without_values(bad)
    assert run_without_values(lambda z, y: (z ** 2).sum()).shape == ()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_forward_backward_without_host_sync(name):
    loss = make_loss(LOSSES[name])
    out = run_without_values(lambda z, y: loss(z, y))
    assert out.shape == ()


def test_objective_without_host_sync():
    "CE + a silhouette term through `Objective`, with logits, as in training."
    from structloss.silhouette import SoftSilhouetteLoss
    objective = Objective({"sil": (SoftSilhouetteLoss(num_classes=C), 0.5)}, ce_weight=1.0)
    head = torch.nn.Linear(D, C)

    def step(z, y):
        total = objective(head(z), z, y)
        return total[0] if isinstance(total, tuple) else total
    run_without_values(step)
