"Agreement with pytorch-metric-learning and property checks for `structloss.proxies`."
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close

from structloss.proxies import ArcFaceLoss, CenterContrastiveLoss, CenterLoss, ProxyNCALoss

import pytorch_metric_learning.losses as pml_losses  # a test dependency: a broken install fails, not skips


def batch(n, d, n_classes, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, n_classes, (n,), generator=g)


def grads(loss_fn, x, y, param):
    x = x.clone().requires_grad_()
    if param.grad is not None: param.grad = None
    v = loss_fn(x, y)
    v.backward()
    return v.detach(), x.grad, param.grad.clone()


# --- agreement with PML ------------------------------------------------------------------------------

def test_pml_defaults():
    p, a = pml_losses.ProxyNCALoss(3, 4), pml_losses.ArcFaceLoss(3, 4)
    ours_p, ours_a = ProxyNCALoss(3, 4), ArcFaceLoss(3, 4)
    assert p.softmax_scale == ours_p.softmax_scale == 1
    assert a.scale == ours_a.scale == 64
    assert math.isclose(a.margin, math.radians(ours_a.margin))
    assert tuple(p.proxies.shape) == tuple(ours_p.proxies.shape) and tuple(a.W.shape) == tuple(ours_a.weights.T.shape)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("softmax_scale", [1.0, 3.0])
@pytest.mark.parametrize("n_classes", [2, 7, 30])  # 30 classes for 20 samples: most classes missing
def test_proxy_nca_matches_pml(seed, softmax_scale, n_classes):
    ours = ProxyNCALoss(n_classes, 6, softmax_scale=softmax_scale, seed=seed).double()
    pml = pml_losses.ProxyNCALoss(n_classes, 6, softmax_scale=softmax_scale).double()
    with torch.no_grad(): pml.proxies.copy_(ours.proxies)
    x, y = batch(20, 6, n_classes, seed)
    v1, gx1, gp1 = grads(ours, x, y, ours.proxies)
    v2, gx2, gp2 = grads(pml, x, y, pml.proxies)
    assert_close(v1, v2)
    assert_close(gx1, gx2)
    assert_close(gp1, gp2)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("margin,scale", [(28.6, 64.0), (10.0, 16.0), (60.0, 8.0)])
@pytest.mark.parametrize("n_classes", [2, 7, 30])
def test_arcface_matches_pml(seed, margin, scale, n_classes):
    ours = ArcFaceLoss(n_classes, 6, margin=margin, scale=scale, seed=seed).double()
    pml = pml_losses.ArcFaceLoss(n_classes, 6, margin=margin, scale=scale).double()
    with torch.no_grad(): pml.W.copy_(ours.weights.T)
    x, y = batch(20, 6, n_classes, seed)
    v1, gx1, gw1 = grads(ours, x, y, ours.weights)
    v2, gx2, gw2 = grads(pml, x, y, pml.W)
    assert_close(v1, v2)
    assert_close(gx1, gx2)
    assert_close(gw1, gw2.T)


def test_float32_agreement_default_dtype():
    x, y = batch(64, 16, 10, 0, dtype=torch.float32)
    ours, pml = ProxyNCALoss(10, 16, seed=0), pml_losses.ProxyNCALoss(10, 16)
    with torch.no_grad(): pml.proxies.copy_(ours.proxies)
    assert_close(ours(x, y), pml(x, y), rtol=1e-5, atol=1e-5)
    ours, pml = ArcFaceLoss(10, 16, seed=0), pml_losses.ArcFaceLoss(10, 16)
    with torch.no_grad(): pml.W.copy_(ours.weights.T)
    assert_close(ours(x, y), pml(x, y), rtol=1e-5, atol=1e-4)


def test_arcface_finite_where_pml_is_not():
    """A sample exactly on its class weight: acos has an infinite derivative there; we stay finite."""
    ours = ArcFaceLoss(4, 3, seed=0)
    x = ours.weights.detach()[[1]].clone().requires_grad_()
    ours(x, torch.tensor([1])).backward()
    assert torch.isfinite(x.grad).all()


def test_pml_has_no_center_loss():
    assert not hasattr(pml_losses, "CenterLoss")  # why CenterLoss is tested against its loop only


# --- properties --------------------------------------------------------------------------------------

ALL = {
    "proxynca": lambda C, d: ProxyNCALoss(C, d, seed=0),
    "proxynca-paper": lambda C, d: ProxyNCALoss(C, d, exclude_positive=True, seed=0),
    "center": lambda C, d: CenterLoss(C, d, seed=0),
    "arcface": lambda C, d: ArcFaceLoss(C, d, seed=0),
    "ccl": lambda C, d: CenterContrastiveLoss(C, d, seed=0),
    "ccl-angular": lambda C, d: CenterContrastiveLoss(C, d, margin=20.0, margin_type="angular", seed=0),
}


@settings(max_examples=25, deadline=None)
@given(labels=st.lists(st.integers(0, 5), min_size=1, max_size=12), seed=st.integers(0, 10_000))
def test_permutation_invariance_and_active_ratio(labels, seed):
    y = torch.tensor(labels)
    x, _ = batch(len(y), 4, 6, seed)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for name, make in ALL.items():
        loss = make(6, 4).double()
        v = loss(x, y)
        assert torch.isfinite(v), name
        assert_close(loss(x[perm], y[perm]), v, msg=name)
        assert 0 <= float(loss.active_ratio(x, y)) <= 1
        if name != "proxynca-paper": assert v.item() >= 0


@pytest.mark.parametrize("name", [n for n in ALL if n != "center"])
def test_spherical_losses_ignore_the_norm(name):
    x, y = batch(10, 4, 6, 0)
    loss = ALL[name](6, 4).double()
    assert_close(loss(5 * x, y), loss(x, y))
    with torch.no_grad(): loss.class_vectors().mul_(0.1)
    assert_close(loss(5 * x, y), loss(x, y))


@pytest.mark.parametrize("name", list(ALL))
def test_label_errors_name_the_fix(name):
    loss = ALL[name](3, 4)
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"num_classes >= 6"):
        loss(x, torch.tensor([0, 1, 5, 2]))
    with pytest.raises(ValueError, match=r"\[0, num_classes=3\)"):
        loss(x, torch.tensor([0, -1, 1, 2]))
    with pytest.raises(ValueError, match="embedding_size=4"):
        loss(torch.randn(4, 5), torch.tensor([0, 1, 1, 2]))


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(name, dtype):
    x, y = batch(12, 4, 6, 2, dtype=torch.float32)
    loss = ALL[name](6, 4)
    v = loss((50 * x).to(dtype), y)
    assert v.dtype == dtype and torch.isfinite(v)
    assert_close(v.float(), loss((50 * x).to(dtype).double(), y).float(), rtol=2e-2, atol=2e-2)


def test_seeded_and_global_init_are_reproducible():
    for make in (ProxyNCALoss, CenterLoss, ArcFaceLoss, CenterContrastiveLoss):
        assert torch.equal(make(5, 3, seed=4).class_vectors(), make(5, 3, seed=4).class_vectors())
        torch.manual_seed(9); a = make(5, 3).class_vectors().detach().clone()
        torch.manual_seed(9); assert torch.equal(make(5, 3).class_vectors().detach(), a)


def test_center_loss_value_and_paper_update():
    x, y = batch(15, 3, 4, 1)
    loss = CenterLoss(4, 3, seed=0).double()
    c = loss.centers.detach().clone()
    assert_close(loss(x, y), 0.5 * ((x - c[y]) ** 2).sum(1).mean())
    loss.update_centers_(x, y, alpha=0.5)
    for j in range(4):
        n = int((y == j).sum())
        want = c[j] - 0.5 * (n * c[j] - x[y == j].sum(0)) / (1 + n)
        assert_close(loss.centers[j].detach(), want)


def test_center_update_converges_to_class_means():
    x, y = batch(20, 3, 4, 2)
    loss = CenterLoss(4, 3, seed=0).double()
    for _ in range(200): loss.update_centers_(x, y, alpha=0.5)
    for j in y.unique(): assert_close(loss.centers[j].detach(), x[y == j].mean(0))


def test_ccl_reduces_to_proxynca_and_arcface():
    x, y = batch(16, 5, 6, 3)
    base = dict(num_classes=6, embedding_size=5, seed=0)
    # no margin, no pull: a cosine softmax with scale s = ProxyNCA with sigma = s / 2
    assert_close(CenterContrastiveLoss(**base, scale=10.0, margin=0.0, pull_weight=0.0).double()(x, y),
                 ProxyNCALoss(**base, softmax_scale=5.0).double()(x, y))
    # angular margin, no pull: ArcFace
    assert_close(CenterContrastiveLoss(**base, scale=16.0, margin=20.0, margin_type="angular", pull_weight=0.0).double()(x, y),
                 ArcFaceLoss(**base, margin=20.0, scale=16.0).double()(x, y))
    # the pull term adds lambda * mean(1 - cos to own centre)
    ccl = CenterContrastiveLoss(**base, pull_weight=0.0).double()
    c = F.normalize(ccl.centers.detach(), dim=1)
    pull = (1 - (F.normalize(x, dim=1) * c[y]).sum(1)).mean()
    assert_close(CenterContrastiveLoss(**base, pull_weight=2.0).double()(x, y), ccl(x, y) + 2 * pull)


def test_nothing_to_learn_gives_zero_gradient():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(5, dtype=torch.long)
    for loss in (ProxyNCALoss(1, 3, seed=0).double(), ArcFaceLoss(1, 3, margin=0.0, seed=0).double()):
        x.grad = None
        v = loss(x, y); v.backward()
        assert v.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
        assert float(loss.active_ratio(x.detach(), y)) == 0.0
