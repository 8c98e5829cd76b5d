"Agreement with pytorch-metric-learning and property checks for `structloss.contrastive`."
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close

from structloss.contrastive import InfoNCELoss, NTXentLoss, SupConLoss

import pytorch_metric_learning.losses as pml_losses  # a test dependency: a broken install fails, not skips


def batch(n, d, n_classes, seed, dtype=torch.float64, views=None):
    g = torch.Generator().manual_seed(seed)
    shape = (n, d) if views is None else (n, views, d)
    return torch.randn(*shape, generator=g, dtype=dtype), torch.randint(0, n_classes, (n,), generator=g)


def value_and_grads(fn, x, y):
    x = x.clone().requires_grad_()
    v = fn(x, y)
    v.backward()
    return v.detach(), x.grad


# --- agreement with PML ------------------------------------------------------------------------------

def test_ntxent_alias():
    assert NTXentLoss is InfoNCELoss
    assert pml_losses.NTXentLoss().temperature == InfoNCELoss().temperature == 0.07


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("temperature", [0.07, 0.3, 1.0])
@pytest.mark.parametrize("n_classes", [2, 5, 40])  # 40 classes for 16 samples: many singletons
def test_infonce_matches_pml_ntxent(seed, temperature, n_classes):
    x, y = batch(16, 8, n_classes, seed)
    v1, g1 = value_and_grads(InfoNCELoss(temperature), x, y)
    v2, g2 = value_and_grads(pml_losses.NTXentLoss(temperature=temperature), x, y)
    assert_close(v1, v2)
    assert_close(g1, g2)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("views", [None, 2, 3])
@pytest.mark.parametrize("n_classes", [2, 6, 40])
def test_supcon_matches_pml(seed, views, n_classes):
    """Flattened views and repeated labels fed to PML give the same value and gradient."""
    assert pml_losses.SupConLoss().temperature == SupConLoss().temperature == 0.1
    x, y = batch(12, 8, n_classes, seed, views=views)
    v1, g1 = value_and_grads(SupConLoss(), x, y)
    V = 1 if views is None else views
    pml = lambda t, lab: pml_losses.SupConLoss()(t.reshape(-1, t.shape[-1]), lab.repeat_interleave(V))
    v2, g2 = value_and_grads(pml, x, y)
    assert_close(v1, v2)
    assert_close(g1, g2)


@pytest.mark.parametrize("loss,pml", [(InfoNCELoss(), pml_losses.NTXentLoss()), (SupConLoss(), pml_losses.SupConLoss())])
def test_degenerate_batches_match_pml(loss, pml):
    x = torch.randn(5, 3, dtype=torch.float64)
    for y in (torch.arange(5), torch.zeros(5, dtype=torch.long)):  # no positive pair; no negative pair
        v1, g1 = value_and_grads(loss, x, y)
        assert float(v1) == 0.0 and float(pml(x, y)) == 0.0
        assert torch.equal(g1, torch.zeros_like(x))


def test_float32_agreement_default_dtype():
    x, y = batch(32, 16, 4, 0, dtype=torch.float32)
    assert_close(InfoNCELoss()(x, y), pml_losses.NTXentLoss()(x, y), rtol=1e-5, atol=1e-5)
    assert_close(SupConLoss()(x, y), pml_losses.SupConLoss()(x, y), rtol=1e-5, atol=1e-5)


# --- properties --------------------------------------------------------------------------------------

labels_st = st.lists(st.integers(-3, 4), min_size=2, max_size=12)


@settings(max_examples=30, deadline=None)
@given(labels=labels_st, seed=st.integers(0, 10_000), tau=st.sampled_from([0.05, 0.1, 0.5]))
def test_permutation_scale_and_relabel_invariance(labels, seed, tau):
    y = torch.tensor(labels)
    x, _ = batch(len(y), 5, 2, seed)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    relabel = 7 * y + 100  # an injective map of the ids
    for loss in (InfoNCELoss(tau), SupConLoss(tau)):
        v = loss(x, y)
        assert torch.isfinite(v) and float(v) >= 0
        assert_close(loss(x[perm], y[perm]), v)
        assert_close(loss(3.5 * x, y), v)  # cosine similarities ignore the norm
        assert_close(loss(x, relabel), v)
        assert 0 <= float(loss.active_ratio(x, y)) <= 1


@settings(max_examples=30, deadline=None)
@given(labels=labels_st, seed=st.integers(0, 10_000))
def test_supcon_lower_bound(labels, seed):
    """Jensen: l_i >= log |P(i)|, so the loss is at least the mean of log |P(i)| over anchors with positives."""
    y = torch.tensor(labels)
    x, _ = batch(len(y), 5, 2, seed)
    n_pos = (y[:, None] == y[None, :]).sum(1) - 1
    has_pos = n_pos > 0
    if not has_pos.any() or (y == y[0]).all():
        assert float(SupConLoss()(x, y)) == 0.0
        return
    bound = torch.log(n_pos[has_pos].double()).mean()
    assert float(SupConLoss()(x, y)) >= float(bound) - 1e-12


def test_supcon_two_views_unlabelled_is_simclr():
    x, _ = batch(6, 4, 2, 0, views=2)
    assert_close(SupConLoss(0.5)(x), InfoNCELoss(0.5)(x.reshape(12, 4), torch.arange(6).repeat_interleave(2)))


def test_supcon_reaches_bound_when_classes_collapse():
    """Each class on its own axis, tau small: the loss equals log|P(i)| averaged, and no anchor is active."""
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    x = torch.nn.functional.one_hot(y, 3).double()
    expected = (3 * math.log(2) + 2 * 0.0 + 4 * math.log(3)) / 9
    assert_close(SupConLoss(0.005)(x, y).item(), expected, rtol=0, atol=1e-9)
    assert float(SupConLoss(0.005).active_ratio(x, y)) == 0.0
    assert float(SupConLoss(1.0).active_ratio(x, y)) == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_small_temperature(dtype):
    x, y = batch(10, 6, 3, 1, dtype=torch.float32, views=2)
    for loss in (SupConLoss(0.01),):
        v = loss((1000 * x).to(dtype), y)
        assert v.dtype == dtype and torch.isfinite(v)
    x2, y2 = batch(10, 6, 3, 1, dtype=torch.float32)
    v = InfoNCELoss(0.01)((1000 * x2).to(dtype), y2)
    assert v.dtype == dtype and torch.isfinite(v)


def test_errors():
    x, y = batch(4, 3, 2, 0, views=2)
    with pytest.raises(ValueError, match="one label per sample"):
        SupConLoss()(x, y.repeat_interleave(2))
    with pytest.raises(ValueError, match=r"\[N, V, d\]"):
        SupConLoss()(x[None], y)
    with pytest.raises(ValueError, match="at least two views"):
        SupConLoss()(x[:, 0])
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0)
