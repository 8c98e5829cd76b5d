"Property tests for structloss.graph: GraphSmoothnessLoss against a plain loop (chapter 15)."
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from torch.testing import assert_close

from structloss.graph import GraphSmoothnessLoss, knn_graph, similarity_weights, SYMMETRIZATIONS
from structloss.geometry import squared_euclidean_distances
from reference_check import assert_batch_is_its_own_reference


def graph_loop(x, labels, k=None, alpha=2.0, squared=False, symmetrize="or", normalize=False):
    "Eqs. 1-2 vertex by vertex: neighbours = every other sample at most as far as the k-th nearest."
    N = len(x)
    if normalize: x = torch.stack([x[m] / x[m].norm().clamp_min(1e-12) for m in range(N)])
    k = N - 1 if k is None else k
    dist = [[((x[m] - x[n]) ** 2).sum() if squared else ((x[m] - x[n]) ** 2).sum().sqrt() for n in range(N)] for m in range(N)]
    directed = [[False] * N for _ in range(N)]
    for m in range(N):
        d_k = sorted(float(dist[m][n].detach()) for n in range(N) if n != m)[k - 1]
        for n in range(N): directed[m][n] = n != m and float(dist[m][n].detach()) <= d_k
    total = x.sum() * 0
    for m in range(N):
        for n in range(N):
            a, b = directed[m][n], directed[n][m]
            if {"or": a or b, "and": a and b, "none": a}[symmetrize] and labels[m] != labels[n]:
                total = total + torch.exp(-alpha * dist[m][n])
    return total


@st.composite
def batches(draw, max_n=10, max_d=4):
    "float64 batches; with `grid`, small-integer coordinates so that distances tie exactly."
    n = draw(st.integers(2, max_n)); d = draw(st.integers(1, max_d))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    if draw(st.booleans()):
        x = torch.randint(-2, 3, (n, d), generator=g).double()          # exact ties, maybe coincident points
    else:
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.tensor(draw(st.lists(st.sampled_from([-1, 0, 4, 9]), min_size=n, max_size=n)))
    k = draw(st.one_of(st.none(), st.integers(1, n - 1)))
    return x, y, k


def RAW(**kw): return GraphSmoothnessLoss(normalize_embeddings=False, **kw)  # raw outputs


SETTINGS = dict(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(**SETTINGS)
@given(batches(), st.sampled_from(SYMMETRIZATIONS), st.booleans(), st.sampled_from([0.3, 2.0]))
def test_matches_loop(batch, sym, squared, alpha):
    x, y, k = batch
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    la = GraphSmoothnessLoss(k=k, alpha=alpha, squared=squared, symmetrize=sym,
                             normalize_embeddings=False)(a, y)
    lb = graph_loop(b, y, k=k, alpha=alpha, squared=squared, symmetrize=sym)
    assert_close(la, lb, atol=1e-10, rtol=1e-9)
    la.backward(); lb.backward()
    assert torch.isfinite(a.grad).all()
    if torch.isfinite(b.grad).all():          # the loop's plain sqrt has no gradient at coincident cross-class points
        assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-8)


@settings(**SETTINGS)
@given(batches(), st.integers(0, 1000), st.sampled_from(SYMMETRIZATIONS))
def test_batch_order_invariance_with_ties(batch, seed, sym):
    x, y, k = batch
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    loss = RAW(k=k, symmetrize=sym)
    assert_close(loss(x[perm], y[perm]), loss(x, y), atol=1e-10, rtol=1e-9)
    A = knn_graph(squared_euclidean_distances(x), len(x) - 1 if k is None else k, sym)
    A_p = knn_graph(squared_euclidean_distances(x[perm]), len(x) - 1 if k is None else k, sym)
    assert torch.equal(A_p, A[perm][:, perm])


@settings(**SETTINGS)
@given(batches())
def test_graph_structure(batch):
    "No self-loops; every vertex has at least k out-neighbours; 'and' <= 'none' <= 'or'; k = N-1 is complete."
    x, y, k = batch
    N = len(x); kk = N - 1 if k is None else k
    sq = squared_euclidean_distances(x)
    A = {s: knn_graph(sq, kk, s) for s in SYMMETRIZATIONS}
    assert not A["or"].diagonal().any()
    assert (A["none"].sum(1) >= kk).all()
    assert (A["and"] <= A["none"]).all() and (A["none"] <= A["or"]).all()
    assert torch.equal(A["or"], A["or"].T) and torch.equal(A["and"], A["and"].T)
    if kk == N - 1:
        for s in SYMMETRIZATIONS: assert torch.equal(A[s], ~torch.eye(N, dtype=torch.bool))


@settings(**SETTINGS)
@given(batches())
def test_loss_grows_with_k(batch):
    "More neighbours, more (non-negative) cross-class terms: the loss is monotone in k."
    x, y, _ = batch
    losses = [float(RAW(k=k)(x, y)) for k in range(1, len(x))]
    assert all(a <= b + 1e-12 for a, b in zip(losses, losses[1:]))


@settings(**SETTINGS)
@given(batches(), st.integers(0, 1000))
def test_rigid_motion_invariance(batch, seed):
    x, y, k = batch
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=g, dtype=torch.float64))
    # a generic rotation may break exact ties by rounding: use the complete graph or a sign flip + translation
    loss = RAW(k=None)
    assert_close(loss(x @ Q + 3.0, y), loss(x, y), atol=1e-9, rtol=1e-9)
    assert_close(RAW(k=k)(-x + 2.0, y), RAW(k=k)(x, y), atol=1e-10, rtol=1e-9)


def test_complete_graph_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64); y = torch.arange(9) % 3
    d = torch.cdist(x, x)
    want = (torch.exp(-2.0 * d) * (y[:, None] != y[None])).sum()
    for sym in SYMMETRIZATIONS: assert_close(RAW(symmetrize=sym)(x, y), want)


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True); y = torch.tensor([0, 0, 1, 1, 2, 2, 2, 7])
    for kw in (dict(k=2), dict(k=3, squared=True, symmetrize="and"), dict(k=4, symmetrize="none"), dict()):
        assert torch.autograd.gradcheck(lambda t: RAW(alpha=0.5, **kw)(t, y), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(32, 8, generator=g) * 300).to(dtype); y = torch.arange(32) % 4
    loss = RAW(k=5, alpha=1e-3, squared=True)      # squared distances ~1e6: beyond float16
    out = loss(x, y)
    assert out.dtype == dtype and torch.isfinite(out)
    assert_close(out.float(), loss(x.float(), y), atol=1e-2, rtol=1e-2)
    xg = x.clone().requires_grad_(); loss(xg, y).backward()
    assert torch.isfinite(xg.grad.float()).all()


def test_nothing_to_learn_and_coincident_points():
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    out = RAW(k=2)(x, torch.full((6,), 3)); out.backward()
    assert float(out.detach()) == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    z = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    out = RAW()(z, torch.tensor([0, 1, 1])); out.backward()
    assert float(out.detach()) == 4.0 and torch.isfinite(z.grad).all()


@settings(**SETTINGS)
@given(batches(), st.sampled_from([0.0, 1e-6, 0.2]))
def test_active_ratio_rule(batch, tol):
    x, y, k = batch
    loss = RAW(k=k, active_tol=tol)
    N = len(x); kk = N - 1 if k is None else k                     # the rule from scratch, edge by edge ("or" graph)
    dist = [[float(((x[m] - x[n]) ** 2).sum().sqrt()) for n in range(N)] for m in range(N)]
    near = [[n != m and dist[m][n] <= sorted(dist[m][j] for j in range(N) if j != m)[kk - 1] for n in range(N)] for m in range(N)]
    edges = [(m, n) for m in range(N) for n in range(N) if near[m][n] or near[n][m]]
    active = [(m, n) for m, n in edges if y[m] != y[n] and math.exp(-loss.alpha * dist[m][n]) > tol]
    want = len(active) / max(len(edges), 1)
    assert float(loss.active_ratio(x, y)) == pytest.approx(want, abs=1e-6)
    assert 0.0 <= float(loss.active_ratio(x, y)) <= 1.0


def test_errors():
    x = torch.randn(4, 2); y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="need a batch of at least 5"): RAW(k=4)(x, y)
    with pytest.raises(ValueError, match="positive int"): GraphSmoothnessLoss(k=0)
    with pytest.raises(ValueError, match="positive int"): GraphSmoothnessLoss(k=True)
    with pytest.raises(ValueError, match="alpha"): GraphSmoothnessLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="symmetrize"): GraphSmoothnessLoss(symmetrize="mutual")
    with pytest.raises(ValueError, match="at least 2"): RAW()(x[:1], y[:1])
    with pytest.raises(ValueError, match="4 entries"): RAW()(torch.randn(5, 2), y)


@settings(**SETTINGS)
@given(st.integers(2, 12), st.integers(2, 5), st.integers(0, 10_000), st.sampled_from([None, 1, 3]), st.booleans())
def test_normalized_matches_loop_and_is_scale_invariant(n, d, seed, k, squared):
    "Default (normalised) loss: the loop on f/||f||, generic points; any positive per-row scale leaves it unchanged."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64); y = torch.randint(0, 3, (n,), generator=g)
    k = None if k is None or k > n - 1 else k
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    la = GraphSmoothnessLoss(k=k, squared=squared)(a, y)
    lb = graph_loop(b, y, k=k, squared=squared, normalize=True)
    assert_close(la, lb, atol=1e-10, rtol=1e-9)
    la.backward(); lb.backward()
    assert torch.isfinite(a.grad).all()
    assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-8)      # d >= 2: no coincident normalised points
    scale = torch.rand(n, 1, generator=g, dtype=torch.float64) * 50 + 0.01
    assert_close(GraphSmoothnessLoss(k=k, squared=squared)(x * scale, y), la.detach(), atol=1e-10, rtol=1e-9)


def test_trivial_solution_without_normalisation():
    "Section 4.1: raw outputs scaled up drive the loss to ~0; the default (normalised) loss does not move."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g, dtype=torch.float64); y = torch.arange(4).repeat(8)
    assert float(RAW()(10 * x, y)) < 1e-6 * float(RAW()(x, y))
    assert_close(GraphSmoothnessLoss()(10 * x, y), GraphSmoothnessLoss()(x, y))
    # a unit-norm batch: both modes agree
    u = torch.nn.functional.normalize(x, dim=1)
    assert_close(GraphSmoothnessLoss()(u, y), RAW()(u, y))


def test_normalize_zero_rows_and_bad_flag():
    "An all-zero output row stays zero (finite gradient); the flag must be a bool."
    x = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    out = GraphSmoothnessLoss()(x, torch.tensor([0, 1, 0, 1])); out.backward()
    assert float(out.detach()) == 8.0 and torch.isfinite(x.grad).all()
    with pytest.raises(TypeError, match="normalize_embeddings"): GraphSmoothnessLoss(normalize_embeddings="yes")


# ----------------------------------------------------------------------------------------------------------
# reference sets, reduction, an independent kNN (issues 10 and 11)

def graph_ref_loop(z, y, R, yR, k=None, alpha=2.0, squared=False, symmetrize="or"):
    "Eq. 2 from anchors z to a reference R (no anchor in R): nu in kNN(mu) among R; mu in kNN(nu) if added to R."
    N, M = len(z), len(R)
    def dist(a, b): s = ((a - b) ** 2).sum(); return s if squared else s.sqrt()
    d = [[dist(z[m], R[n]) for n in range(M)] for m in range(N)]
    drr = [[float(dist(R[i], R[j]).detach()) for j in range(M)] for i in range(M)]
    kk = M if k is None else k
    total = z.sum() * 0 + R.sum() * 0
    for m in range(N):
        d_k = sorted(float(v.detach()) for v in d[m])[kk - 1]
        for n in range(M):
            out = float(d[m][n].detach()) <= d_k
            others = sorted(drr[n][j] for j in range(M) if j != n)
            inn = kk >= M or float(d[m][n].detach()) <= others[kk - 1]
            edge = {"or": out or inn, "and": out and inn, "none": out}[symmetrize]
            if edge and y[m] != yR[n]: total = total + torch.exp(-alpha * d[m][n])
    return total


@settings(**SETTINGS)
@given(batches(), st.sampled_from(SYMMETRIZATIONS), st.booleans(), st.sampled_from(["sum", "mean", "none"]),
       st.booleans())
def test_reference_equal_to_the_batch_is_the_batch_loss(batch, sym, squared, reduction, norm):
    "loss(x, y, ref_emb=x, ref_labels=y, self_in_ref=True) == loss(x, y): value, gradient, active ratio."
    x, y, k = batch
    loss = GraphSmoothnessLoss(k=k, symmetrize=sym, squared=squared, reduction=reduction,
                               normalize_embeddings=norm)
    assert_batch_is_its_own_reference(loss, x, y)


@settings(**SETTINGS)
@given(st.integers(2, 6), st.integers(2, 8), st.integers(1, 3), st.integers(0, 10_000),
       st.sampled_from(SYMMETRIZATIONS), st.booleans(), st.data())
def test_reference_matches_loop(n, m, d, seed, sym, squared, data):
    "Anchors against a separate reference set (generic points): value and gradients into both."
    g = torch.Generator().manual_seed(seed)
    z, R = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64)
    y, yR = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (m,), generator=g)
    k = data.draw(st.one_of(st.none(), st.integers(1, m - 1)))
    a, b, ra, rb = (t.clone().requires_grad_() for t in (z, z, R, R))
    la = RAW(k=k, symmetrize=sym, squared=squared, alpha=0.7)(a, y, ref_emb=ra, ref_labels=yR)
    lb = graph_ref_loop(b, y, rb, yR, k=k, alpha=0.7, squared=squared, symmetrize=sym)
    assert_close(la, lb, atol=1e-10, rtol=1e-9)
    la.backward(); lb.backward()
    assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-8); assert_close(ra.grad, rb.grad, atol=1e-10, rtol=1e-8)


def test_reference_gradcheck_and_errors():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    R = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y, yR = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 0, 1, 1, 2, 2, 0])
    for kw in (dict(k=2), dict(k=3, symmetrize="and", squared=True), dict(), dict(k=4, symmetrize="none")):
        assert torch.autograd.gradcheck(lambda a, b: GraphSmoothnessLoss(**kw)(a, y, ref_emb=b, ref_labels=yR), (z, R))
    with pytest.raises(ValueError, match="candidates per anchor in the reference set"):
        RAW(k=8)(z, y, ref_emb=R, ref_labels=yR)
    with pytest.raises(ValueError, match="`reduction` must be one of"): GraphSmoothnessLoss(reduction="avg")


@settings(**SETTINGS)
@given(batches(), st.sampled_from(SYMMETRIZATIONS))
def test_reduction_none_rows_sum_to_the_loss(batch, sym):
    x, y, k = batch
    rows = RAW(k=k, symmetrize=sym, reduction="none")(x, y)
    assert rows.shape == (len(x),)
    assert_close(rows.sum(), RAW(k=k, symmetrize=sym)(x, y), atol=1e-12, rtol=1e-10)
    assert_close(rows.mean(), RAW(k=k, symmetrize=sym, reduction="mean")(x, y), atol=1e-12, rtol=1e-10)


def test_knn_graph_matches_scikit_learn():
    "Generic points (no ties): the directed kNN relation is scikit-learn's kneighbors_graph."
    from sklearn.neighbors import kneighbors_graph
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    for k in (1, 3, 10):
        A = knn_graph(squared_euclidean_distances(x), k, "none")
        S = torch.from_numpy(kneighbors_graph(x.numpy(), k, include_self=False).toarray()).bool()
        assert torch.equal(A, S)
        assert torch.equal(knn_graph(squared_euclidean_distances(x), k, "or"), S | S.T)
