"Property tests for structloss.magnet: MagnetLoss and LatentBoostLoss against plain loops (chapter 14)."
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from torch.testing import assert_close

from structloss.magnet import (MagnetLoss, LatentBoostLoss, latent_boost_schedule, explained_variance_dim,
                               pca_projection, other_class_clusters, check_cluster_labels)
from structloss.geometry import class_index
from reference_check import assert_batch_is_its_own_reference


# ----------------------------------------------------------------------------------------------------------
# reference loops (the chapter's, restated so the tests do not depend on the notebook)

def magnet_loop(r, labels, alpha=1.0, cluster_labels=None, eps=1e-12, power=1):
    "Eqs. 1-2 one sample at a time; `power=2` divides by 2 sigma^4 (the common bug) instead of 2 sigma^2."
    clusters = labels if cluster_labels is None else cluster_labels
    N, keys = len(r), sorted(set(clusters.tolist()))
    mu = {k: r[clusters == k].mean(0) for k in keys}
    cls = {k: int(labels[clusters == k][0]) for k in keys}
    sigma2 = (sum(((r[n] - mu[int(clusters[n])]) ** 2).sum() for n in range(N)) / (N - 1)).clamp_min(eps)
    scale = 2 * sigma2 ** power
    total = r.sum() * 0
    for n in range(N):
        num = torch.exp(-((r[n] - mu[int(clusters[n])]) ** 2).sum() / scale - alpha)
        others = [k for k in keys if cls[k] != int(labels[n])]
        if not others: continue
        den = sum(torch.exp(-((r[n] - mu[k]) ** 2).sum() / scale) for k in others)
        total = total + torch.clamp(-torch.log(num / den), min=0)
    return total / N


def latent_boost_loop(r, labels, epoch=0, num_epochs=1, alpha0=1.0, beta0=1.0, threshold=0.95, eps=1e-8, pca=True,
                      singleton_variance="pooled", beta_placement="exponent", hinge=True, cluster_labels=None,
                      detach_variance=False):
    clusters = labels if cluster_labels is None else cluster_labels
    N, n_feat = r.shape
    alpha = 1 + alpha0 * math.exp(-epoch / (1.05 * num_epochs))
    beta = max(beta0 * (1 - epoch / (0.2 * num_epochs)), eps)
    if pca:
        x = r.detach(); xc = x - x.mean(0)
        lam, V = torch.linalg.eigh(xc.T @ xc / (N - 1)); lam, V = lam.flip(0), V.flip(1)
        max_dim = min(N, n_feat); dim = max_dim
        for i in range(1, max_dim + 1):
            if lam[:i].sum() / lam[:max_dim].sum() >= threshold: dim = i; break
        W = V[:, :dim].T
        r = torch.stack([W @ r[n] for n in range(N)])
    keys = sorted(set(clusters.tolist()))
    members = {k: [n for n in range(N) if int(clusters[n]) == k] for k in keys}
    mu = {k: sum(r[n] for n in members[k]) / len(members[k]) for k in keys}
    cls = {k: int(labels[members[k][0]]) for k in keys}
    rv = r.detach() if detach_variance else r
    mv = {k: sum(rv[n] for n in members[k]) / len(members[k]) for k in keys}
    pooled = sum(((rv[n] - mv[int(clusters[n])]) ** 2).sum() for n in range(N)) / (N - 1)
    var = {}
    for k in keys:
        if len(members[k]) > 1: v = sum(((rv[n] - mv[k]) ** 2).sum() for n in members[k]) / (len(members[k]) - 1)
        else: v = pooled if singleton_variance == "pooled" else r.sum() * 0
        var[k] = torch.clamp(v, min=eps)
    total = r.sum() * 0
    for n in range(N):
        own = int(clusters[n])
        num = torch.exp(-((r[n] - mu[own]) ** 2).sum() / (2 * var[own]) - alpha)
        den = r.sum() * 0
        for k in keys:
            if cls[k] == int(labels[n]): continue
            e = -((r[n] - mu[k]) ** 2).sum() / (2 * var[k])
            den = den + (torch.exp(e * beta) if beta_placement == "exponent" else torch.exp(e) * beta)
        term = -torch.log(num / (den + eps))
        total = total + (torch.clamp(term, min=0) if hinge else term)
    return total / N


# ----------------------------------------------------------------------------------------------------------
# batches

@st.composite
def batches(draw, max_n=12, max_d=5):
    "float64 batches with random sizes, labels with gaps, optional duplicated rows (ties) and singletons."
    n = draw(st.integers(2, max_n)); d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, d, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 1.0, 3.0]))
    y = torch.tensor(draw(st.lists(st.sampled_from([-3, 0, 2, 7, 11]), min_size=n, max_size=n)))
    if draw(st.booleans()) and n > 2:  # a tie: duplicate a row inside its class
        r[1] = r[0]; y[1] = y[0]
    return r, y


def grads(loss_fn, r, y, **kw):
    x = r.clone().requires_grad_()
    out = loss_fn(x, y, **kw)
    out.backward()
    return out.detach(), x.grad


def compare(v1, g1, v2, g2, atol=1e-9, rtol=1e-8):
    "Vectorised (v1, g1) must be finite; it must equal the naive loop (v2, g2) wherever the loop itself is finite."
    assert torch.isfinite(v1) and torch.isfinite(g1).all()
    if torch.isfinite(v2): assert_close(v1, v2, atol=atol, rtol=rtol)
    if torch.isfinite(g2).all(): assert_close(g1, g2, atol=atol, rtol=rtol)   # the naive ratio can give 0/0


SETTINGS = dict(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------
# MagnetLoss

@settings(**SETTINGS)
@given(batches(), st.sampled_from([0.0, 0.5, 1.0, 4.0]))
def test_magnet_matches_loop(batch, alpha):
    r, y = batch
    v1, g1 = grads(MagnetLoss(alpha), r, y)
    v2, g2 = grads(lambda x, yy: magnet_loop(x, yy, alpha), r, y)
    compare(v1, g1, v2, g2)


@settings(**SETTINGS)
@given(batches())
def test_magnet_is_scale_invariant(batch):
    "Distances / (2 sigma^2) do not change when the batch is scaled; with 2 sigma^4 they would."
    r, y = batch
    assert_close(MagnetLoss()(3.0 * r, y), MagnetLoss()(r, y), atol=1e-10, rtol=1e-8)


def test_magnet_uses_two_sigma_squared_not_sigma_fourth():
    r = torch.tensor([[0.0], [2.0], [2.5], [4.5]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])                      # sigma^2 = 4/3
    assert abs(float(MagnetLoss()(r, y)) - 0.265625) < 1e-12
    assert abs(float(magnet_loop(r, y, power=2)) - 0.32421875) < 1e-12
    # and on random data the two versions differ whenever sigma^2 != 1
    g = torch.Generator().manual_seed(0)
    r = torch.randn(10, 3, generator=g, dtype=torch.float64) * 2; y = torch.arange(10) % 3
    assert_close(MagnetLoss()(r, y), magnet_loop(r, y))
    assert abs(float(MagnetLoss()(r, y) - magnet_loop(r, y, power=2))) > 1e-3


@settings(**SETTINGS)
@given(batches(), st.integers(0, 1000))
def test_magnet_permutation_translation_rotation(batch, seed):
    r, y = batch
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(r), generator=g)
    Q, _ = torch.linalg.qr(torch.randn(r.shape[1], r.shape[1], generator=g, dtype=torch.float64))
    base = MagnetLoss()(r, y)
    assert_close(MagnetLoss()(r[perm], y[perm]), base, atol=1e-10, rtol=1e-9)
    assert_close(MagnetLoss()(r @ Q + 5.0, y), base, atol=1e-9, rtol=1e-8)


@settings(**SETTINGS)
@given(batches())
def test_magnet_cluster_labels_equal_to_labels(batch):
    r, y = batch
    assert_close(MagnetLoss()(r, y, cluster_labels=y * 10 + 1), MagnetLoss()(r, y))


def test_magnet_explicit_clusters_match_loop():
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        y = torch.tensor([0] * 6 + [1] * 5 + [2] * 3)
        k = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5])
        r = torch.randn(14, 3, generator=g, dtype=torch.float64)
        v1, g1 = grads(MagnetLoss(), r, y, cluster_labels=k)
        v2, g2 = grads(lambda x, yy, cluster_labels: magnet_loop(x, yy, cluster_labels=cluster_labels), r, y, cluster_labels=k)
        assert_close(v1, v2); assert_close(g1, g2)


def test_magnet_gradcheck():
    g = torch.Generator().manual_seed(2)
    r = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 5])
    assert torch.autograd.gradcheck(lambda x: MagnetLoss(0.3)(x, y), (r,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_magnet_half_precision(dtype):
    g = torch.Generator().manual_seed(3)
    r = (torch.randn(32, 16, generator=g) * 200).to(dtype)      # squares overflow float16
    y = torch.arange(32) % 4
    out = MagnetLoss()(r, y)
    assert out.dtype == dtype and torch.isfinite(out)
    assert_close(out.float(), MagnetLoss()(r.float(), y), atol=1e-2, rtol=1e-2)
    x = r.clone().requires_grad_(); MagnetLoss()(x, y).backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def test_magnet_nothing_to_learn():
    r = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    out = MagnetLoss()(r, torch.full((6,), 4)); out.backward()
    assert float(out.detach()) == 0.0 and torch.equal(r.grad, torch.zeros_like(r))
    assert float(MagnetLoss().active_ratio(r, torch.full((6,), 4))) == 0.0


@settings(**SETTINGS)
@given(batches())
def test_magnet_active_ratio_rule(batch):
    "active_ratio = share of samples whose hinge argument is > 0; zero exactly when the loss is zero."
    r, y = batch
    m = MagnetLoss()
    ratio = float(m.active_ratio(r, y))
    t = m.hinge_arguments(r, y)
    assert ratio == pytest.approx(float((t > 0).double().mean()))
    assert (ratio == 0) == (float(m(r, y)) == 0)


def test_magnet_errors():
    r = torch.randn(4, 2); y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="at least 2"): MagnetLoss()(r[:1], y[:1])
    with pytest.raises(ValueError, match="holds samples of 2 classes"): MagnetLoss()(r, y, torch.tensor([0, 1, 1, 2]))
    with pytest.raises(TypeError, match="integer class ids"): MagnetLoss()(r, y, torch.tensor([0.0, 1, 1, 2]))
    with pytest.raises(ValueError, match="`cluster_labels` has 3 entries"): MagnetLoss()(r, y, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="floating point"): MagnetLoss()(r.long(), y)


def test_other_class_clusters_mask():
    y = torch.tensor([3, 3, 8, 8, 8]); k = torch.tensor([0, 1, 2, 2, 9])
    ids, K = class_index(k)
    assert other_class_clusters(y, ids, K).tolist() == [[False, False, True, True], [False, False, True, True],
                                                        [True, True, False, False], [True, True, False, False],
                                                        [True, True, False, False]]
    check_cluster_labels(k, y)


# ----------------------------------------------------------------------------------------------------------
# LatentBoostLoss

OPTIONS = [dict(), dict(pca=False), dict(hinge=False), dict(beta_placement="factor"), dict(singleton_variance="eps"),
           dict(threshold=0.7, alpha0=2.0, beta0=0.5)]


@settings(**SETTINGS)
@given(batches(), st.sampled_from(OPTIONS), st.sampled_from([(0, 1), (1, 10), (2, 10), (7, 10)]))
def test_latent_boost_matches_loop(batch, kw, epochs):
    r, y = batch
    m = LatentBoostLoss(**kw); m.set_epoch(*epochs)
    v1, g1 = grads(m, r, y)
    v2, g2 = grads(lambda x, yy: latent_boost_loop(x, yy, *epochs, **kw), r, y)
    compare(v1, g1, v2, g2, atol=1e-8, rtol=1e-7)


@settings(**SETTINGS)
@given(batches(), st.integers(0, 1000))
def test_latent_boost_full_pca_is_a_rotation(batch, seed):
    "threshold=1 keeps every component: with more samples than features the PCA is a rotation, the loss unchanged."
    r, y = batch
    if len(r) <= r.shape[1]: r = torch.cat([r, r + 0.1 * torch.randn_like(r)]); y = torch.cat([y, y])
    assert_close(LatentBoostLoss(threshold=1.0)(r, y), LatentBoostLoss(pca=False)(r, y), atol=1e-9, rtol=1e-8)


@settings(**SETTINGS)
@given(batches(), st.integers(0, 1000))
def test_latent_boost_permutation_invariance(batch, seed):
    r, y = batch
    perm = torch.randperm(len(r), generator=torch.Generator().manual_seed(seed))
    for kw in ({}, {"pca": False}):
        m = LatentBoostLoss(**kw); m.set_epoch(1, 10)
        # a PCA whose kept singular value ties with a dropped one is not unique; skip such batches
        S = torch.linalg.svdvals(r - r.mean(0))
        if kw == {} and len(S) > 1 and (S[:-1] - S[1:]).abs().min() < 1e-6: continue
        assert_close(m(r[perm], y[perm]), m(r, y), atol=1e-9, rtol=1e-8)


def test_latent_boost_beta_placements_agree_at_beta_one():
    g = torch.Generator().manual_seed(4)
    r = torch.randn(12, 4, generator=g, dtype=torch.float64); y = torch.arange(12) % 3
    assert_close(LatentBoostLoss(beta_placement="exponent")(r, y), LatentBoostLoss(beta_placement="factor")(r, y))
    a, b = LatentBoostLoss(beta_placement="exponent"), LatentBoostLoss(beta_placement="factor")
    a.set_epoch(1, 10); b.set_epoch(1, 10)     # beta = 0.5: they differ
    assert abs(float(a(r, y) - b(r, y))) > 1e-4


def test_latent_boost_gradient_through_svd_matches_eigh():
    "detach_pca=False: the gradient through torch.linalg.svd equals the one through eigh of the covariance."
    g = torch.Generator().manual_seed(6)
    r = torch.randn(14, 4, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0, 0.2], dtype=torch.float64)
    y = torch.arange(14) % 3

    def loop_through_eigh(x, yy):
        xc = x - x.mean(0)
        lam, V = torch.linalg.eigh(xc.T @ xc / (len(x) - 1)); lam, V = lam.flip(0), V.flip(1)
        dim = int(explained_variance_dim(lam.detach().clamp_min(0).sqrt(), 0.95))
        return latent_boost_loop(x @ V[:, :dim] @ V[:, :dim].T, yy, pca=False)
    v1, g1 = grads(LatentBoostLoss(detach_pca=False), r, y)
    v2, g2 = grads(loop_through_eigh, r, y)
    assert_close(v1, v2); assert_close(g1, g2)
    v3, g3 = grads(LatentBoostLoss(detach_pca=True), r, y)
    assert_close(v3, v1)
    assert not torch.allclose(g3, g1)   # the detached projection drops the gradient through W_PCA


def test_latent_boost_gradcheck():
    g = torch.Generator().manual_seed(7)
    r = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 5])
    for kw in (dict(), dict(beta_placement="factor", pca=False), dict(detach_pca=False)):
        m = LatentBoostLoss(**kw); m.set_epoch(1, 10)
        assert torch.autograd.gradcheck(lambda x: m(x, y), (r,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_latent_boost_half_precision(dtype):
    g = torch.Generator().manual_seed(8)
    r = (torch.randn(32, 16, generator=g) * 200).to(dtype); y = torch.arange(32) % 4
    out = LatentBoostLoss()(r, y)
    assert out.dtype == dtype and torch.isfinite(out)
    assert_close(out.float(), LatentBoostLoss()(r.float(), y), atol=2e-2, rtol=1e-2)


def test_latent_boost_nothing_to_learn():
    r = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    out = LatentBoostLoss()(r, torch.zeros(6, dtype=torch.long)); out.backward()
    assert float(out.detach()) == 0.0 and torch.equal(r.grad, torch.zeros_like(r))


def test_latent_boost_schedule_values():
    assert latent_boost_schedule(0, 10) == (2.0, 1.0)
    a, b = latent_boost_schedule(1, 10, alpha0=3.0, beta0=2.0)
    assert a == pytest.approx(1 + 3 * math.exp(-1 / 10.5)) and b == pytest.approx(1.0)
    assert latent_boost_schedule(2, 10)[1] == 1e-8 and latent_boost_schedule(9, 10)[1] == 1e-8
    with pytest.raises(ValueError, match="epochs count from 0"): latent_boost_schedule(-1, 10)


def test_pca_dim_and_projection():
    g = torch.Generator().manual_seed(9)
    z = torch.randn(200, 5, generator=g, dtype=torch.float64) * torch.tensor([4.0, 2.0, 1.0, 0.1, 0.1], dtype=torch.float64)
    W, dim = pca_projection(z, 0.95)
    assert int(dim) == 3
    assert_close(W @ W.T, torch.diag(torch.tensor([1.0, 1, 1, 0, 0], dtype=torch.float64)), atol=1e-10, rtol=0)
    m = LatentBoostLoss(); m(z, torch.arange(200) % 2)
    assert int(m.last_dim) == 3


def test_latent_boost_errors():
    with pytest.raises(ValueError, match="threshold"): LatentBoostLoss(threshold=1.5)
    with pytest.raises(ValueError, match="beta0"): LatentBoostLoss(beta0=0)
    with pytest.raises(ValueError, match="eps"): LatentBoostLoss(eps=0)
    m = LatentBoostLoss()
    with pytest.raises(ValueError, match="num_epochs"): m.set_epoch(0, 0)
    with pytest.raises(ValueError, match="cluster 0"):
        m(torch.randn(4, 2), torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))


# ----------------------------------------------------------------------------------------------------------
# readings of eq. 11: detach_variance, the late-phase identity, warm-up, logged PCA dimension

@settings(**SETTINGS)
@given(batches(), st.sampled_from([dict(detach_variance=True), dict(detach_variance=True, pca=False),
                                   dict(detach_variance=True, beta_placement="factor", hinge=False),
                                   dict(beta_placement="factor", hinge=False)]),
       st.sampled_from([(0, 1), (1, 10), (5, 10)]))
def test_latent_boost_readings_match_loop(batch, kw, epochs):
    r, y = batch
    m = LatentBoostLoss(**kw); m.set_epoch(*epochs)
    compare(*grads(m, r, y), *grads(lambda x, yy: latent_boost_loop(x, yy, *epochs, **kw), r, y))


def _late_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(4).repeat_interleave(16)
    r = torch.randn(4, 16, generator=g, dtype=torch.float64)[y] + torch.randn(64, 16, generator=g, dtype=torch.float64)
    return r, y


@pytest.mark.parametrize("pca", [True, False])
def test_literal_latent_boost_is_a_constant_once_beta_is_eps(pca):
    "Per cluster, eq. 9 makes the pull sum to (|C|-1)/2; with beta = eps the loss is a constant."
    r, y = _late_batch()
    m = LatentBoostLoss(pca=pca); m.set_epoch(5, 10)
    v, g = grads(m, r, y)
    assert abs(float(v) - (4 * 15 / 2 / 64 + m.alpha + math.log(3 + 1e-8))) < 1e-6
    assert g.norm() < 1e-7
    m0 = LatentBoostLoss(pca=pca); m0.set_epoch(0, 10)
    assert grads(m0, r, y)[1].norm() > 1e-2            # at beta = 1 the same loss has a gradient


def test_detach_variance_keeps_the_pull_late():
    from structloss.metrics import intra_class_variance
    r, y = _late_batch()
    m = LatentBoostLoss(detach_variance=True); m.set_epoch(5, 10)
    v, g = grads(m, r, y)
    assert g.norm() > 1e-2
    assert float(intra_class_variance(r - len(r) * g, y)) < float(intra_class_variance(r, y)) - 0.1
    lit = LatentBoostLoss(); lit.set_epoch(5, 10)
    assert_close(v, lit(r, y))                          # same value, different gradient


def test_factor_without_hinge_keeps_a_push_late():
    r, y = _late_batch()
    m = LatentBoostLoss(beta_placement="factor", hinge=False); m.set_epoch(5, 10)
    assert grads(m, r, y)[1].norm() > 1e-2
    h = LatentBoostLoss(beta_placement="factor"); h.set_epoch(5, 10)
    assert float(grads(h, r, y)[1].norm()) == 0.0        # with the hinge every term is closed


def test_detach_variance_gradient_is_the_frozen_variance_gradient():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(10, 4, generator=g, dtype=torch.float64); y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 5])
    ids, K = class_index(y)
    from structloss.geometry import class_means
    d0 = ((r - class_means(r, ids, K)[ids]) ** 2).sum(1)
    s2 = LatentBoostLoss(pca=False).cluster_variances(r, ids, K, d0)
    frozen = LatentBoostLoss(pca=False); frozen.set_epoch(1, 10); frozen.cluster_variances = lambda *a: s2
    assert torch.autograd.gradcheck(lambda x: frozen(x, y), (r.clone().requires_grad_(),))
    det = LatentBoostLoss(pca=False, detach_variance=True); det.set_epoch(1, 10)
    assert_close(grads(frozen, r, y)[1], grads(det, r, y)[1])


def test_warmup_shifts_the_schedule():
    m = LatentBoostLoss(warmup_epochs=4)
    m.set_epoch(0, 14); assert (m.epoch, m.num_epochs, m.beta) == (0, 10, 1.0)
    m.set_epoch(5, 14); assert (m.epoch, m.beta) == (1, 0.5)
    with pytest.raises(ValueError, match="must exceed `warmup_epochs`"): m.set_epoch(0, 4)
    with pytest.raises(ValueError, match="`warmup_epochs` must be an int >= 0"): LatentBoostLoss(warmup_epochs=1.5)


def test_extra_logs_reports_the_kept_dimension():
    r, y = _late_batch()
    m = LatentBoostLoss()
    assert m.extra_logs() == {}
    m(r, y)
    want = explained_variance_dim(torch.linalg.svdvals(r - r.mean(0)))
    assert int(m.extra_logs()["dim"]) == int(want)


# ----------------------------------------------------------------------------------------------------------
# num_classes, reference sets, reduction, class sums (issues 10 and 11)

from structloss.magnet import (magnet_terms_from_class_sums, within_cluster_sum_of_squares)
from structloss.geometry import class_sums, class_counts


def magnet_ref_loop(z, y, R, yR, alpha=1.0, eps=1e-12):
    "Eqs. 1-2 with means and sigma^2 from a reference set (R, yR); anchors whose class R lacks give 0."
    keys = sorted(set(yR.tolist()))
    mu = {k: R[yR == k].mean(0) for k in keys}
    sigma2 = (sum(((R[j] - mu[int(yR[j])]) ** 2).sum() for j in range(len(R))) / (len(R) - 1)).clamp_min(eps)
    total = z.sum() * 0
    for n in range(len(z)):
        c = int(y[n])
        others = [k for k in keys if k != c]
        if c not in mu or not others: continue
        num = torch.exp(-((z[n] - mu[c]) ** 2).sum() / (2 * sigma2) - alpha)
        den = sum(torch.exp(-((z[n] - mu[k]) ** 2).sum() / (2 * sigma2)) for k in others)
        total = total + torch.clamp(-torch.log(num / den), min=0)
    return total / len(z)


CLUSTER_LOSSES = [lambda **kw: MagnetLoss(**kw), lambda **kw: LatentBoostLoss(**kw),
                  lambda **kw: LatentBoostLoss(pca=False, hinge=False, **kw),
                  lambda **kw: LatentBoostLoss(beta_placement="factor", singleton_variance="eps", **kw)]


@settings(**SETTINGS)
@given(batches(), st.sampled_from(range(len(CLUSTER_LOSSES))), st.sampled_from(["mean", "sum", "none"]))
def test_reference_equal_to_the_batch_is_the_batch_loss(batch, i, reduction):
    "loss(x, y, ref_emb=x, ref_labels=y, self_in_ref=True) == loss(x, y), value and gradient."
    r, y = batch
    assert_batch_is_its_own_reference(CLUSTER_LOSSES[i](reduction=reduction), r, y)


@settings(**SETTINGS)
@given(batches(), batches(), st.sampled_from([0.0, 1.0, 3.0]))
def test_magnet_reference_matches_loop(batch, ref, alpha):
    "Anchors from the batch, means and sigma^2 from another set; gradients into both."
    (z, y), (R, yR) = batch, ref
    if z.shape[1] != R.shape[1]:                                      # a reference in the batch's space
        R = torch.randn(len(R) + 2, z.shape[1], dtype=torch.float64); yR = torch.arange(len(R)) % 3
    a, b, ra, rb = (t.clone().requires_grad_() for t in (z, z, R, R))
    la = MagnetLoss(alpha)(a, y, ref_emb=ra, ref_labels=yR)
    lb = magnet_ref_loop(b, y, rb, yR, alpha)
    assert torch.isfinite(la)
    if not torch.isfinite(lb): return
    assert_close(la, lb, atol=1e-9, rtol=1e-8)
    la.backward(); lb.backward()
    grb = torch.zeros_like(R) if rb.grad is None else rb.grad        # the loop had no term at all
    if torch.isfinite(b.grad).all() and torch.isfinite(grb).all():
        assert_close(a.grad, b.grad, atol=1e-9, rtol=1e-8); assert_close(ra.grad, grb, atol=1e-9, rtol=1e-8)


def test_reference_anchors_of_missing_classes_are_not_terms():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 7, 7])
    R, yR = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    per = MagnetLoss(reduction="none")(z, y, ref_emb=R, ref_labels=yR)
    assert per.shape == (6,) and torch.equal(per[4:], torch.zeros(2, dtype=torch.float64))
    active, terms = MagnetLoss().active_terms(z, y, ref_emb=R, ref_labels=yR)
    assert terms.tolist() == [True] * 4 + [False] * 2
    with pytest.raises(ValueError, match="`cluster_labels` work within a batch"):
        MagnetLoss()(z, y, y, ref_emb=R, ref_labels=yR)
    with pytest.raises(ValueError, match="at least 2"): MagnetLoss()(z, y, ref_emb=R[:1], ref_labels=yR[:1])


@settings(**SETTINGS)
@given(batches(), st.sampled_from(range(len(CLUSTER_LOSSES))))
def test_num_classes_gives_the_same_loss(batch, i):
    "Labels used as ids (no `unique`): the same value and gradient, absent classes masked out."
    r, y = batch
    ids = torch.unique(y, return_inverse=True)[1] * 2 + 1            # ids with gaps: absent classes
    a, b = r.clone().requires_grad_(), r.clone().requires_grad_()
    la, lb = CLUSTER_LOSSES[i]()(a, ids), CLUSTER_LOSSES[i](num_classes=int(ids.max()) + 3)(b, ids)
    # rtol: with singleton variances floored at eps (i = 3) terms reach 1e8; rounding differs there
    assert_close(la, lb, atol=1e-10, rtol=1e-7)
    la.backward(); lb.backward()
    assert_close(a.grad, b.grad, atol=1e-9, rtol=1e-7)


def test_num_classes_errors():
    with pytest.raises(ValueError, match="num_classes=3"): MagnetLoss(num_classes=3)(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="num_classes=3"):
        MagnetLoss(num_classes=3)(torch.randn(4, 2), torch.tensor([0, 1, 2, 2]), ref_emb=torch.randn(3, 2),
                                  ref_labels=torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="`num_classes` must be a positive int"): LatentBoostLoss(num_classes=0)
    with pytest.raises(ValueError, match="`reduction` must be one of"): MagnetLoss(reduction="avg")


@settings(**SETTINGS)
@given(batches(), st.sampled_from(range(len(CLUSTER_LOSSES))))
def test_reduction_none_is_the_per_sample_loss(batch, i):
    r, y = batch
    per = CLUSTER_LOSSES[i](reduction="none")(r, y)
    assert per.shape == (len(r),)
    assert_close(per.mean(), CLUSTER_LOSSES[i]()(r, y), atol=1e-12, rtol=1e-10)
    assert_close(per.sum(), CLUSTER_LOSSES[i](reduction="sum")(r, y), atol=1e-12, rtol=1e-10)


def test_magnet_from_class_sums_of_two_shards():
    "What a distributed run all-reduces: class sums and counts, then eq. 1's sum; equal to one process."
    g = torch.Generator().manual_seed(0)
    C = 5
    x = torch.randn(20, 4, generator=g, dtype=torch.float64); y = torch.randint(0, C, (20,), generator=g)
    shards = [(x[:7].clone().requires_grad_(), y[:7]), (x[7:].clone().requires_grad_(), y[7:])]
    sums = sum(class_sums(z, yy, C) for z, yy in shards)                   # all-reduce 1
    counts = sum(class_counts(yy, C, dtype=z.dtype) for z, yy in shards)
    mu = sums / counts.clamp_min(1)[:, None]
    sum_sq = sum(within_cluster_sum_of_squares(z, yy, mu) for z, yy in shards)   # all-reduce 2
    total = sum(magnet_terms_from_class_sums(z, yy, sums, counts, sum_sq)[0].clamp_min(0).sum() for z, yy in shards)
    loss = total / len(x)
    xa = x.clone().requires_grad_()
    want = MagnetLoss(num_classes=C)(xa, y)
    assert_close(loss, want)
    loss.backward(); want.backward()
    assert_close(torch.cat([shards[0][0].grad, shards[1][0].grad]), xa.grad)
