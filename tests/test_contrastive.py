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


# --- pytorch-metric-learning's own test cases, adapted (tests/losses/test_ntxent_loss.py, -------------
# --- test_supcon_loss.py): hand-listed pairs, every dtype, float16 with a looser tolerance ------------

from pytorch_metric_learning.reducers import AvgNonZeroReducer, DoNothingReducer, PerAnchorReducer

DTYPES = (torch.float16, torch.float32, torch.float64)


def rtol(dtype):
    return 1e-2 if dtype == torch.float16 else 1e-5


def angle_to_coord(angles, dtype):
    a = torch.tensor(angles, dtype=torch.float64) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], 1).to(dtype)


def hand_losses(z, labels, pos_pairs, neg_pairs, tau, ref=None):
    "PML's test loop: (NTXent mean over positive pairs, NTXent per anchor, SupCon per anchor)."
    z = z.double()
    ref = z if ref is None else ref.double()
    n_anchor = len(z)
    ntx, per_anchor, sup = [], torch.zeros(n_anchor, dtype=torch.float64), torch.zeros(n_anchor, dtype=torch.float64)
    count = torch.zeros(n_anchor, dtype=torch.float64)
    for a1, p in pos_pairs:
        num = torch.exp(z[a1] @ ref[p] / tau)
        den_ntx, den_sup = num.clone(), 0
        for a2, n in pos_pairs + neg_pairs:
            if a2 != a1: continue
            e = torch.exp(z[a1] @ ref[n] / tau)
            den_sup = den_sup + e
            if (a2, n) not in pos_pairs: den_ntx = den_ntx + e
        ntx.append(-torch.log(num / den_ntx))
        per_anchor[a1] += ntx[-1]
        sup[a1] += -torch.log(num / den_sup)
        count[a1] += 1
    has = count > 0
    return torch.stack(ntx).mean(), (per_anchor[has] / count[has]), (sup[has] / count[has])


def six_points(dtype):
    z = angle_to_coord([0, 10, 20, 50, 60, 80], dtype)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    pos = [(i, j) for i in range(6) for j in range(6) if i != j and labels[i] == labels[j]]
    neg = [(i, j) for i in range(6) for j in range(6) if labels[i] != labels[j]]
    return z, labels, pos, neg


def with_reference(dtype):
    g = torch.Generator().manual_seed(139)
    z = torch.nn.functional.normalize(torch.randn(4, 32, generator=g, dtype=torch.float64)).to(dtype)
    ref = torch.nn.functional.normalize(torch.randn(3, 32, generator=g, dtype=torch.float64)).to(dtype)
    labels, ref_labels = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2])
    pos = [(i, j) for i in range(4) for j in range(3) if labels[i] == ref_labels[j]]
    neg = [(i, j) for i in range(4) for j in range(3) if labels[i] != ref_labels[j]]
    return z, labels, ref, ref_labels, pos, neg


@pytest.mark.parametrize("dtype", DTYPES)
def test_pml_case_six_points(dtype):
    z, labels, pos, neg = six_points(dtype)
    ntx, per_anchor, sup = hand_losses(z, labels, pos, neg, 0.1)
    tol = dict(rtol=rtol(dtype), atol=1e-6)
    assert_close(InfoNCELoss(0.1)(z, labels).double(), ntx, **tol)
    ours = InfoNCELoss(0.1, reduction="none")(z, labels).double()
    assert_close(ours[:5], per_anchor, **tol)                      # sample 5 has no positive: 0
    assert float(ours[5]) == 0.0
    assert_close(SupConLoss(0.1)(z, labels).double(), sup.mean(), **tol)
    assert_close(SupConLoss(0.1, reduction="none")(z, labels).double()[:5], sup, **tol)
    pml_per_anchor = pml_losses.NTXentLoss(0.1, reducer=PerAnchorReducer(AvgNonZeroReducer()))
    assert_close(pml_per_anchor(z.double(), labels), ours[:5].mean(), rtol=rtol(dtype), atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pml_case_with_reference(dtype):
    z, labels, ref, ref_labels, pos, neg = with_reference(dtype)
    ntx, per_anchor, sup = hand_losses(z, labels, pos, neg, 0.1, ref)
    tol = dict(rtol=rtol(dtype), atol=1e-6)
    kw = dict(ref_emb=ref, ref_labels=ref_labels)
    assert_close(InfoNCELoss(0.1)(z, labels, **kw).double(), ntx, **tol)
    assert_close(InfoNCELoss(0.1, reduction="none")(z, labels, **kw).double(), per_anchor, **tol)
    assert_close(SupConLoss(0.1)(z, labels, **kw).double(), sup.mean(), **tol)
    assert_close(SupConLoss(0.1, reduction="none")(z, labels, **kw).double(), sup, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [InfoNCELoss, SupConLoss])
def test_pml_case_no_valid_pairs(dtype, cls):
    for angles, labels in (([0], [0]), ([0, 10, 20], [0, 0, 0]), ([0, 40, 60], [1, 2, 3])):
        z = angle_to_coord(angles, dtype).requires_grad_()
        loss = cls(0.1)(z, torch.tensor(labels))
        loss.backward()
        assert float(loss) == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [InfoNCELoss, SupConLoss])
def test_pml_case_backward(dtype, cls):
    z = angle_to_coord([0, 20, 40, 60, 80], dtype).requires_grad_()
    cls(0.1)(z, torch.tensor([0, 0, 1, 1, 2])).backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad).all()


# --- the new options against PML: reference sets and per-sample losses, values and gradients --------

PAIRS = [(InfoNCELoss, pml_losses.NTXentLoss), (SupConLoss, pml_losses.SupConLoss)]


def grads_with_reference(fn, x, y, r, ry):
    x, r = x.clone().requires_grad_(), r.clone().requires_grad_()
    v = fn(x, y, ref_emb=r, ref_labels=ry)
    gx, gr = torch.autograd.grad(v.sum(), (x, r))
    return v.detach(), gx, gr


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_reference_set_matches_pml(seed, dtype, ours, theirs):
    "Anchors against another set: no pair skipped. float16 inputs: PML runs on the same values in float32."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 6, generator=g).to(dtype); y = torch.randint(0, 3, (10,), generator=g)
    r = torch.randn(15, 6, generator=g).to(dtype); ry = torch.randint(0, 4, (15,), generator=g)
    v1, gx1, gr1 = grads_with_reference(ours(), x, y, r, ry)
    ref_dtype = torch.float32 if dtype == torch.float16 else dtype
    v2, gx2, gr2 = grads_with_reference(theirs(), x.to(ref_dtype), y, r.to(ref_dtype), ry)
    assert v1.dtype == dtype and gx1.dtype == dtype and gr1.dtype == dtype
    tol = dict(rtol=1e-2, atol=1e-3) if dtype == torch.float16 else {}
    assert_close(v1.to(ref_dtype), v2, **tol)
    assert_close(gx1.to(ref_dtype), gx2, **tol)
    assert_close(gr1.to(ref_dtype), gr2, **tol)


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_batch_as_reference_matches_pml_identity_rule(ours, theirs):
    "PML skips (i, i) when `ref_labels is labels`; ours says so with `self_in_ref=True`."
    x, y = batch(12, 5, 3, 0)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    v1 = ours()(a, y, ref_emb=a, ref_labels=y, self_in_ref=True)
    v2 = theirs()(b, y, ref_emb=b, ref_labels=y)
    assert_close(v1, v2)
    assert_close(torch.autograd.grad(v1, a)[0], torch.autograd.grad(v2, b)[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_reduction_none_matches_pml_per_element_losses(dtype, seed):
    "PML's DoNothingReducer gives per-pair (NTXent) and per-anchor (SupCon) losses; ours per anchor."
    x, y = batch(14, 5, 4, seed, dtype=torch.float64)
    x = x.to(dtype)
    ref_dtype = torch.float32 if dtype == torch.float16 else dtype
    tol = dict(rtol=1e-2, atol=1e-3) if dtype == torch.float16 else {}
    # InfoNCE: PML's per-pair losses, averaged per anchor
    out = pml_losses.NTXentLoss(reducer=DoNothingReducer())(x.to(ref_dtype), y)["loss"]
    a1, _ = out["indices"]
    sums = torch.zeros(len(y), dtype=ref_dtype).index_add_(0, a1, out["losses"])
    counts = torch.zeros(len(y), dtype=ref_dtype).index_add_(0, a1, torch.ones_like(out["losses"]))
    ours = InfoNCELoss(reduction="none")(x, y)
    assert ours.shape == (len(y),) and ours.dtype == dtype
    assert_close(ours.to(ref_dtype), sums / counts.clamp_min(1), **tol)
    # SupCon: PML's per-anchor losses (0 for an anchor without positives)
    out = pml_losses.SupConLoss(reducer=DoNothingReducer())(x.to(ref_dtype), y)["loss"]
    assert_close(SupConLoss(reduction="none")(x, y).to(ref_dtype), out["losses"], **tol)


@pytest.mark.parametrize("seed", range(3))
def test_reduction_none_relations_and_gradients(seed):
    "The default reduction from the per-anchor losses, in value and gradient."
    x, y = batch(16, 5, 4, seed)
    n_pos = (y[:, None] == y[None, :]).sum(1) - 1
    f_none = lambda t: (n_pos * InfoNCELoss(reduction="none")(t, y)).sum() / n_pos.sum()
    assert_close(value_and_grads(lambda t, _: f_none(t), x, y), value_and_grads(InfoNCELoss(), x, y))
    in_I = n_pos > 0
    g_none = lambda t: SupConLoss(reduction="none")(t, y).sum() / in_I.sum()
    assert_close(value_and_grads(lambda t, _: g_none(t), x, y), value_and_grads(SupConLoss(), x, y))
    xv, _ = batch(16, 5, 4, seed, views=3)
    per = SupConLoss(reduction="none")(xv, y)
    assert per.shape == (16, 3)
    assert_close(per.mean(), SupConLoss()(xv, y))    # with three views every anchor has a positive


def test_require_negatives_zeroes_per_anchor_losses():
    x, _ = batch(5, 3, 1, 0)
    y = torch.zeros(5, dtype=torch.long)
    assert torch.equal(SupConLoss(reduction="none")(x, y), torch.zeros(5, dtype=x.dtype))
    assert (SupConLoss(reduction="none", require_negatives=False)(x, y) > 0).all()


# --- the blocked computation: block sizes, memory, second derivatives, compile ------------------------

@pytest.mark.parametrize("block", [1, 7, 64, 10**9])
@pytest.mark.parametrize("cls", [InfoNCELoss, SupConLoss])
def test_block_size_does_not_change_the_result(monkeypatch, block, cls):
    import structloss.contrastive as sc
    x, y = batch(37, 6, 5, 0)
    r, ry = batch(23, 6, 7, 1)
    want = value_and_grads(lambda t, lab: cls(0.2)(t, lab, ref_emb=r, ref_labels=ry), x, y)
    plain = value_and_grads(cls(0.2), x, y)
    monkeypatch.setattr(sc, "_CPU_BLOCK", block)
    assert_close(value_and_grads(lambda t, lab: cls(0.2)(t, lab, ref_emb=r, ref_labels=ry), x, y), want)
    assert_close(value_and_grads(cls(0.2), x, y), plain)


@pytest.mark.parametrize("cls", [InfoNCELoss, SupConLoss])
def test_second_derivatives_and_second_backward(cls):
    x, y = batch(9, 4, 3, 2)
    r, ry = batch(6, 4, 3, 3)
    xr, rr = x.clone().requires_grad_(), r.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: cls(0.5)(a, y, ref_emb=b, ref_labels=ry), (xr, rr))
    v = cls(0.5)(xr, y)
    g1, = torch.autograd.grad(v, xr, retain_graph=True)
    g2, = torch.autograd.grad(v, xr)
    assert_close(g1, g2)


@pytest.mark.parametrize("cls", [InfoNCELoss, SupConLoss])
def test_float32_large_batch_matches_float64(cls):
    "Blocks of rows on a batch larger than one block: float32 against float64."
    x, y = batch(600, 16, 10, 0, dtype=torch.float32)
    v32, g32 = value_and_grads(cls(), x, y)
    v64, g64 = value_and_grads(cls(), x.double(), y)
    assert_close(v32.double(), v64, rtol=1e-5, atol=1e-5)
    assert_close(g32.double(), g64, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("cls", [InfoNCELoss, SupConLoss])
def test_tiny_temperature_extreme_logits_stay_finite(cls):
    "tau = 0.005: logits up to 200, softplus arguments far beyond float32's exp range."
    x, y = batch(40, 4, 3, 0, dtype=torch.float32)
    v, g = value_and_grads(cls(0.005), x, y)
    v64, g64 = value_and_grads(cls(0.005), x.double(), y)
    assert torch.isfinite(v) and torch.isfinite(g).all()
    assert_close(v.double(), v64, rtol=1e-4, atol=1e-4)


def test_masked_logsumexp_is_the_one_in_core():
    "Kept importable from `structloss.contrastive` for users; the one implementation lives in core."
    import structloss.contrastive as sc
    import structloss.core as core
    assert sc.masked_logsumexp is core.masked_logsumexp
