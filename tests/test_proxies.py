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


# --- per-sample losses (reduction) and PML's own test cases -------------------------------------------

from pytorch_metric_learning.reducers import DoNothingReducer
from structloss.proxies import softmax_active, softmax_cross_entropy


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("softmax_scale", [1.0, 10.0])
def test_proxy_nca_per_sample_losses_match_pml(seed, softmax_scale):
    ours = ProxyNCALoss(7, 6, softmax_scale=softmax_scale, seed=seed, reduction="none").double()
    pml = pml_losses.ProxyNCALoss(7, 6, softmax_scale=softmax_scale, reducer=DoNothingReducer()).double()
    with torch.no_grad(): pml.proxies.copy_(ours.proxies)
    x, y = batch(20, 6, 7, seed)
    theirs = pml(x, y)["loss"]
    per_sample = ours(x, y)
    assert per_sample.shape == (20,)
    assert_close(per_sample[theirs["indices"]], theirs["losses"])   # PML drops exact zeros only
    # the relation to the other reductions
    assert_close(ProxyNCALoss(7, 6, softmax_scale=softmax_scale, seed=seed).double()(x, y), per_sample.mean())
    assert_close(ProxyNCALoss(7, 6, softmax_scale=softmax_scale, seed=seed, reduction="sum").double()(x, y),
                 per_sample.sum())


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("margin,scale", [(28.6, 64.0), (60.0, 8.0)])
def test_arcface_per_sample_losses_match_pml(seed, margin, scale):
    ours = ArcFaceLoss(7, 6, margin=margin, scale=scale, seed=seed, reduction="none").double()
    pml = pml_losses.ArcFaceLoss(7, 6, margin=margin, scale=scale, reducer=DoNothingReducer()).double()
    with torch.no_grad(): pml.W.copy_(ours.weights.T)
    x, y = batch(20, 6, 7, seed)
    theirs = pml(x, y)["loss"]
    per_sample = ours(x, y)
    assert_close(per_sample[theirs["indices"]], theirs["losses"])
    assert_close(ArcFaceLoss(7, 6, margin=margin, scale=scale, seed=seed).double()(x, y), per_sample.mean())


@pytest.mark.parametrize("name", list(ALL))
def test_reductions_relate(name):
    x, y = batch(12, 4, 6, 7)
    per_sample = ALL[name](6, 4).double()
    per_sample.reduction = "none"
    terms = per_sample(x, y)
    mean_loss = ALL[name](6, 4).double()
    assert terms.shape == (12,)
    assert_close(mean_loss(x, y), terms.mean())
    mean_loss.reduction = "sum"
    assert_close(mean_loss(x, y), terms.sum())
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        ProxyNCALoss(3, 4, reduction="avg")


@pytest.mark.parametrize("name", list(ALL))
def test_class_vector_losses_take_no_reference_set(name):
    x, y = batch(6, 4, 6, 0, dtype=torch.float32)
    with pytest.raises(TypeError, match="does not take a reference set"):
        ALL[name](6, 4)(x, y, ref_emb=x, ref_labels=y)


def angle_points(n=180):
    "PML's test batch: unit vectors at 0, 1, ..., n - 1 degrees in the plane."
    t = torch.deg2rad(torch.arange(n, dtype=torch.float64))
    return torch.stack([t.cos(), t.sin()], 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_pml_case_proxy_nca_on_angles(dtype):
    "PML's ProxyNCA test: 180 points on a half circle, 10 classes, against eq. 1 written out."
    torch.manual_seed(14892)
    softmax_scale = 1.0 if dtype == torch.float16 else 10.0
    loss = ProxyNCALoss(10, 2, softmax_scale=softmax_scale)
    x = angle_points().to(dtype).requires_grad_()
    y = torch.randint(0, 10, (180,))
    value = loss(x, y); value.backward()
    assert value.dtype == dtype and torch.isfinite(x.grad).all()
    xh, ph = F.normalize(x.detach().double(), dim=1), F.normalize(loss.proxies.detach().double(), dim=1)
    d2 = ((xh[:, None, :] - ph[None, :, :]) ** 2).sum(-1)                  # (N, C)
    want = -torch.log(torch.exp(-softmax_scale * d2[torch.arange(180), y])
                      / torch.exp(-softmax_scale * d2).sum(1)).mean()
    rtol = 1e-2 if dtype == torch.float16 else 1e-5
    assert_close(value.double(), want, rtol=rtol, atol=0)
    if dtype != torch.float16:   # the logits are -sigma times PML's squared distances
        assert_close(loss.logits(x.detach()).double(), -softmax_scale * torch.cdist(xh, ph) ** 2,
                     rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_pml_case_arcface_on_angles(dtype):
    "PML's ArcFace test: margin 30 degrees, scale 64, against a cross-entropy through acos."
    torch.manual_seed(0)
    loss = ArcFaceLoss(10, 2, margin=30.0, scale=64.0)
    x = angle_points().to(dtype).requires_grad_()
    y = torch.randint(0, 10, (180,))
    value = loss(x, y); value.backward()
    assert value.dtype == dtype and torch.isfinite(x.grad).all()
    cos = F.normalize(x.detach().double(), dim=1) @ F.normalize(loss.weights.detach().double(), dim=1).T
    own = cos[torch.arange(180), y]
    theta = torch.acos(own.clamp(-1, 1)); m = math.radians(30.0)
    logits = cos.clone()
    logits[torch.arange(180), y] = torch.where(theta <= math.pi - m, torch.cos(theta + m),
                                               own - m * math.sin(m))
    want = F.cross_entropy(64.0 * logits, y)
    rtol = 1e-2 if dtype == torch.float16 else 1e-5
    assert_close(value.double(), want, rtol=rtol, atol=1e-3 if dtype == torch.float16 else 1e-6)
    assert_close(loss.logits(x.detach().double(), y), 64.0 * logits)   # in float64 for any input


@pytest.mark.parametrize("margin", [None, ("cosine", 0.2, 8.0), ("angular", 0.5, 8.0), ("angular", 2.5, 3.0)])
@pytest.mark.parametrize("exclude", [False, True])
def test_hand_written_backward_equals_autograd(margin, exclude):
    "The one-pass backward of `softmax_cross_entropy` against autograd on the plain formula."
    if margin is not None and exclude: return
    g = torch.Generator().manual_seed(1)
    cos = torch.rand(9, 5, generator=g, dtype=torch.float64) * 2 - 1
    cos[0, 2] = 1.0                                                    # on its class vector
    y = torch.tensor([2, 0, 1, 4, 4, 3, 0, 1, 2])
    s = 1.0 if margin is None else margin[2]
    logits1, logits2 = (s * cos).requires_grad_(), (s * cos).requires_grad_()
    w = torch.linspace(0.5, 2, 9, dtype=torch.float64)
    ce, own = softmax_cross_entropy(logits1, y, exclude, margin, with_own=True)
    ((ce + 0.3 * own) * w).sum().backward()
    idx = y[:, None]
    x = logits2.gather(1, idx)
    if margin is None: t = x
    elif margin[0] == "cosine": t = x - margin[1] * s
    else:
        from structloss.proxies import additive_angular_margin
        t = s * additive_angular_margin(x / s, margin[1])
    fill = torch.full_like(t, -torch.inf) if exclude else t
    a = torch.where(torch.arange(5) == idx, fill, logits2)
    want = torch.logsumexp(a, 1) - t.squeeze(1)
    ((want + 0.3 * x.squeeze(1)) * w).sum().backward()
    assert_close(ce, want)
    assert_close(logits1.grad, logits2.grad)
    assert torch.autograd.gradcheck(lambda l: softmax_cross_entropy(l, y, exclude, margin),
                                    (torch.rand(9, 5, generator=g, dtype=torch.float64).requires_grad_(),))


def test_softmax_active_equals_the_one_hot_rule():
    g = torch.Generator().manual_seed(2)
    logits = 6 * torch.randn(50, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (50,), generator=g)
    onehot = F.one_hot(y, 7).double()
    for tol in (0.01, 0.2):
        want = (torch.softmax(logits, 1) - onehot).abs().amax(1) > tol
        assert torch.equal(softmax_active(logits, y, tol), want)
        assert 0 < int(want.sum()) < 50
    assert softmax_active(logits, y, 0.01, exclude_target=True).all()
