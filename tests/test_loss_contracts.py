"""Contracts shared by every loss: one active-ratio mechanism, reference sets, per-sample reductions.

- `active_ratio` is implemented once, in `EmbeddingLoss`; each loss says which terms it has and which are
  active in `active_terms` (an override may only adapt the inputs and call the base class).
- Batch-global losses take a reference set (`ref_emb`, `ref_labels`, `self_in_ref`): with the batch itself
  as the reference and `self_in_ref=True` they equal the plain call in value and gradient; a reference is a
  set (its order does not matter); a detached reference (a memory) sends gradient to the batch only.
- A loss with a `reduction` argument gives one finite loss per sample with `reduction="none"`, and a clear
  error for an unknown reduction.
"""
from __future__ import annotations
import inspect

import pytest
import torch

from structloss.core import EmbeddingLoss
from structloss.greediness import find_losses
from reference_check import assert_batch_is_its_own_reference

LOSSES = find_losses(verbose=False)
C, D = 5, 6
# the batch-global losses that must accept a reference set (issue: cross-batch memory, distributed)
MUST_TAKE_REFERENCE = {"ContrastiveLoss", "TripletMarginLoss", "InfoNCELoss", "SupConLoss",
                       "SoftSilhouetteLoss", "GraphSmoothnessLoss", "MagnetLoss", "LatentBoostLoss"}
MUST_HAVE_REDUCTION = {"ContrastiveLoss", "TripletMarginLoss", "InfoNCELoss", "SupConLoss",
                       "SoftSilhouetteLoss", "ProxyNCALoss", "ArcFaceLoss", "GraphSmoothnessLoss",
                       "MagnetLoss", "LatentBoostLoss"}
REFERENCE = sorted(n for n, c in LOSSES.items() if getattr(c, "supports_reference", False))
WITH_REDUCTION = sorted(n for n, c in LOSSES.items()
                        if "reduction" in inspect.signature(c.__init__).parameters)


def make(name, **kwargs):
    "The loss with `kwargs`, plus `num_classes` and `embedding_size` wherever its constructor takes them."
    params = inspect.signature(LOSSES[name]).parameters
    for key, value in (("num_classes", C), ("embedding_size", D)):
        if key in params: kwargs.setdefault(key, value)
    return LOSSES[name](**kwargs)


def batch(seed=0, n=14):
    "Float64 embeddings and labels with ties (repeated rows), a singleton class and a missing class id."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    x[3] = x[1]                                              # a tie
    y = torch.tensor([0, 0, 1, 0, 1, 1, 2, 2, 0, 1, 2, 4, 4, 1])[:n]   # class 3 missing, 4 has two
    y[n - 1] = 3 if n > 13 else y[n - 1]                      # class 3 as a singleton
    return x, y


def test_active_ratio_is_one_mechanism():
    "No loss re-implements `active_ratio`: each defines `active_terms`, overrides only delegate to the base."
    for name, cls in LOSSES.items():
        assert "active_terms" in {k for c in cls.__mro__ if c is not EmbeddingLoss for k in vars(c)}, name
        for klass in cls.__mro__:
            if klass is EmbeddingLoss: break
            if "active_ratio" in vars(klass):
                assert "super().active_ratio" in inspect.getsource(vars(klass)["active_ratio"]), \
                    f"{klass.__name__}.active_ratio re-implements the base class's mechanism"


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_active_ratio_in_unit_interval(name):
    x, y = batch()
    r = make(name).active_ratio(x.float(), y)
    assert r.ndim == 0 and r.dtype == torch.float32 and 0 <= float(r) <= 1


def test_required_losses_take_a_reference_set():
    assert MUST_TAKE_REFERENCE <= set(REFERENCE), MUST_TAKE_REFERENCE - set(REFERENCE)


def test_required_losses_have_per_sample_reduction():
    assert MUST_HAVE_REDUCTION <= set(WITH_REDUCTION), MUST_HAVE_REDUCTION - set(WITH_REDUCTION)


@pytest.mark.parametrize("name", REFERENCE)
def test_batch_as_its_own_reference_equals_plain_call(name):
    assert_batch_is_its_own_reference(make(name).double(), *batch())


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_is_a_set_and_a_memory_gets_no_gradient(name):
    """Reference order does not matter; gradient reaches a reference that asks for it, and a
    detached one (a memory) gives the batch the same value and gradient."""
    x, y = batch(1)
    m, my = batch(2)
    loss = make(name).double()
    a = x.clone().requires_grad_()
    memory = m.clone().requires_grad_()
    v = loss(a, y, ref_emb=memory, ref_labels=my)
    g_a, g_m = torch.autograd.grad(v, (a, memory))
    perm = torch.randperm(len(my), generator=torch.Generator().manual_seed(0))
    v_perm = loss(a, y, ref_emb=memory[perm], ref_labels=my[perm])
    torch.testing.assert_close(v_perm, v, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(v) and torch.isfinite(g_m).all() and g_m.abs().sum() > 0
    b = x.clone().requires_grad_()
    stored = m.clone()                                          # a memory: stored rows, no graph
    detached = loss(b, y, ref_emb=stored, ref_labels=my)
    g_b, = torch.autograd.grad(detached, b)
    torch.testing.assert_close(detached, v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_b, g_a, rtol=1e-8, atol=1e-10)
    assert stored.grad is None and detached.grad_fn is not None


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_errors_are_clear(name):
    x, y = batch()
    loss = make(name)
    with pytest.raises(ValueError, match="go together"):
        loss(x.float(), y, ref_emb=x.float())
    with pytest.raises(ValueError, match="same embedding space|d = "):
        loss(x.float(), y, ref_emb=x.float()[:, :2], ref_labels=y)


@pytest.mark.parametrize("name", sorted(set(LOSSES) - set(REFERENCE)))
def test_losses_without_reference_refuse_one(name):
    x, y = batch()
    with pytest.raises(TypeError, match="reference set"):
        make(name)(x.float(), y, ref_emb=x.float(), ref_labels=y)


@pytest.mark.parametrize("name", WITH_REDUCTION)
def test_reduction_none_gives_one_loss_per_sample(name):
    x, y = batch()
    loss = make(name, reduction="none").double()
    a = x.clone().requires_grad_()
    per_sample = loss(a, y)
    assert per_sample.shape[0] == len(y) and torch.isfinite(per_sample).all()
    per_sample.sum().backward()
    assert torch.isfinite(a.grad).all()
    with pytest.raises(ValueError, match="reduction"):
        make(name, reduction="median")
