"""structloss.pairs against plain loops and against pytorch-metric-learning (PML, a test-only dependency).

Comparisons with PML use batches of at most 25 samples where exact ties matter: above 25 rows `torch.cdist`
(used by PML's LpDistance) switches to a matrix-product formula whose rounding can move a term across 0 and
change the count of AvgNonZeroReducer."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close

import pytorch_metric_learning.losses as pml_losses  # a test dependency: a broken install fails, not skips
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance  # noqa: E402

from structloss.geometry import label_masks  # noqa: E402
from structloss.pairs import (ContrastiveLoss, NPairsLoss, TripletMarginLoss, avg_non_zero,  # noqa: E402
                              first_two_indices, pair_distances, smooth_triplet_weights,
                              tie_break_key, triplet_margin_sums, triplet_margin_totals,
                              triplet_margin_weights)
from reference_check import assert_batch_is_its_own_reference  # noqa: E402


# ---------------------------------------------------------------- batches
def awkward_batch(seed, n=14, dim=5, dtype=torch.float64):
    "Random embeddings; labels with gaps and a negative id, a singleton class, exact ties in and across classes."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=dtype)
    y = torch.tensor([7, -2, 7, 3, 3, 7, 11, 3, -2, 7, 3, 40, 11, 11][:n])
    x[2] = x[0]          # equal embeddings of one class: positive pair at distance 0
    x[5] = x[0]          # a third copy: ties among the anchor's distances
    x[4] = x[1]          # equal embeddings of different classes: negative pair at distance 0
    return x, y


def random_batch(seed, n=20, n_classes=5, dim=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.randint(0, n_classes, (n,), generator=g) * 3 + 1


BATCHES = [awkward_batch(s) for s in range(3)] + [random_batch(s) for s in range(3)]
REFERENCES = [awkward_batch(s + 10) for s in range(3)] + [random_batch(s + 10, n=15) for s in range(3)]


def value_and_grad(loss_fn, x, y):
    x = x.clone().requires_grad_()
    value = loss_fn(x, y)
    value.sum().backward()
    return value.detach(), x.grad


def assert_same(ours, theirs, x, y, **tol):
    v1, g1 = value_and_grad(ours, x, y)
    v2, g2 = value_and_grad(theirs, x, y)
    assert_close(v1, v2.to(v1.dtype), **tol)
    assert_close(g1, g2.to(g1.dtype), **tol)


# ---------------------------------------------------------------- loops (one term at a time)
def contrastive_loop(x, y, pos_margin=0.0, neg_margin=1.0, normalize=True):
    z = F.normalize(x, dim=1) if normalize else x
    pos, neg = [], []
    for i in range(len(z)):
        for j in range(len(z)):
            if i == j:
                continue
            d = (z[i] - z[j]).norm()
            if y[i] == y[j]:
                pos.append(torch.relu(d - pos_margin))
            else:
                neg.append(torch.relu(neg_margin - d))

    def avg_nz(terms):
        nz = [t for t in terms if t > 0]
        return sum(nz) / len(nz) if nz else x.sum() * 0
    return avg_nz(pos) + avg_nz(neg)


def triplet_loop(x, y, margin=0.05, normalize=True):
    z = F.normalize(x, dim=1) if normalize else x
    total, count = x.sum() * 0, 0
    for a in range(len(z)):
        for p in range(len(z)):
            if p == a or y[p] != y[a]:
                continue
            for n in range(len(z)):
                if y[n] == y[a]:
                    continue
                loss = torch.relu((z[a] - z[p]).norm() - (z[a] - z[n]).norm() + margin)
                if loss > 0:
                    total, count = total + loss, count + 1
    return total / max(count, 1)


def npairs_loop(x, y, normalize=True):
    z = F.normalize(x, dim=1) if normalize else x
    members = {}
    for i, c in enumerate(y.tolist()):
        members.setdefault(c, []).append(i)
    pairs = [(m[0], m[1]) for m in members.values() if len(m) >= 2]
    if not pairs:
        return x.sum() * 0
    out = [torch.logsumexp(torch.stack([z[a] @ z[q] for _, q in pairs]), 0) - z[a] @ z[p] for a, p in pairs]
    return sum(out) / len(out)


# ---------------------------------------------------------------- contrastive
@pytest.mark.parametrize("batch", range(len(BATCHES)))
@pytest.mark.parametrize("margins", [(0.0, 1.0), (0.3, 1.2), (0.0, 0.5)])
def test_contrastive_matches_pml_and_loop(batch, margins):
    x, y = BATCHES[batch]
    ours = ContrastiveLoss(*margins)
    assert_same(ours, pml_losses.ContrastiveLoss(*margins), x, y)
    assert_same(ours, lambda e, l: contrastive_loop(e, l, *margins), x, y)


def test_contrastive_defaults_and_unnormalised_match_pml():
    assert (ContrastiveLoss().pos_margin, ContrastiveLoss().neg_margin) == (0.0, 1.0)
    x, y = awkward_batch(4)
    assert_same(ContrastiveLoss(neg_margin=4.0, normalize_embeddings=False),
                pml_losses.ContrastiveLoss(neg_margin=4.0, distance=LpDistance(normalize_embeddings=False)), x, y)


# ---------------------------------------------------------------- triplet
@pytest.mark.parametrize("batch", range(len(BATCHES)))
@pytest.mark.parametrize("margin", [0.05, 0.0, 0.4])
def test_triplet_matches_pml_and_loop(batch, margin):
    x, y = BATCHES[batch]
    ours = TripletMarginLoss(margin)
    assert_same(ours, pml_losses.TripletMarginLoss(margin=margin, triplets_per_anchor="all"), x, y)
    assert_same(ours, lambda e, l: triplet_loop(e, l, margin), x, y)


def test_triplet_defaults_equal_pml():
    assert TripletMarginLoss().margin == pml_losses.TripletMarginLoss().margin == 0.05
    assert pml_losses.TripletMarginLoss().triplets_per_anchor == "all"


@pytest.mark.parametrize("margin", [2 - math.sqrt(2), 0.0, math.sqrt(2), 2.0, 0.05])
def test_triplet_ties_exactly_at_the_margin(margin):
    # unit axis vectors: distances exactly 0, sqrt(2) or 2, so d_ap - d_an + m == 0 happens exactly
    x = torch.tensor([[1., 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 1], [0, -1, 0], [1, 0, 0], [1, 0, 0]],
                     dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    d = pair_distances(x)
    pos, neg = label_masks(y)
    valid = pos[:, :, None] & neg[:, None, :]
    violation = d[:, :, None] - d[:, None, :] + margin
    if margin in (2 - math.sqrt(2), 0.0, 2.0):
        assert ((violation == 0) & valid).any()          # the batch really has boundary ties
    _, k = triplet_margin_sums(d, pos, neg, margin)
    assert k.sum().item() == ((violation > 0) & valid).sum().item()   # strict: loss > 0, as PML counts
    assert_same(TripletMarginLoss(margin), pml_losses.TripletMarginLoss(margin=margin), x, y, atol=1e-12, rtol=1e-12)
    assert_same(TripletMarginLoss(margin), lambda e, l: triplet_loop(e, l, margin), x, y, atol=1e-12, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.integers(0, 3)), min_size=1, max_size=12),
       st.sampled_from([0.0, 1.0, 0.5, 2.0, -0.5, -1.0]))
def test_triplet_integer_grid_ties_match_pml(points, margin):
    # unnormalised integer points: many equal distances, and sqrt(4) + 1 == sqrt(9)-type ties at the margin
    x = torch.tensor([p[:2] for p in points], dtype=torch.float64)
    y = torch.tensor([p[2] for p in points])
    ours = TripletMarginLoss(margin, normalize_embeddings=False)
    theirs = pml_losses.TripletMarginLoss(margin=margin, distance=LpDistance(normalize_embeddings=False))
    v1, g1 = value_and_grad(ours, x, y)
    v2, g2 = value_and_grad(theirs, x, y)
    assert torch.isfinite(v1) and torch.isfinite(g1).all()
    assert_close(v1, v2, atol=1e-12, rtol=1e-12)
    assert_close(g1, g2, atol=1e-12, rtol=1e-12)


def exact_triplet_count(d, pos, neg, margin):
    "Triplets with d_ap + m > d_an for the stored float32 numbers, decided exactly (float64 holds their sums)."
    assert d.dtype == torch.float32
    d64, m64 = d.double(), float(torch.tensor(margin, dtype=torch.float32))
    return (((d64[:, :, None] + m64) > d64[:, None, :]) & pos[:, :, None] & neg[:, None, :]).sum().item()


@pytest.mark.parametrize("margin", [0.0, 2.0, -math.sqrt(2), math.sqrt(2), 1e-8, -1e-8])
def test_triplet_float32_ties_are_strict(margin):
    # float32 takes the int32-key path: ties d_an == t_ap (0 vs 0, sqrt(2) vs sqrt(2), 2 vs 0 + 2) count as inactive,
    # and with m = 1e-8, fl(d_ap + m) == d_ap although the exact threshold lies above d_an = d_ap
    x = torch.tensor([[1., 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 1], [0, -1, 0], [1, 0, 0], [1, 0, 0]])
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    d = pair_distances(x)
    pos, neg = label_masks(y)
    valid = pos[:, :, None] & neg[:, None, :]
    total, count = triplet_margin_totals(d, pos, neg, margin)
    assert count.item() == exact_triplet_count(d, pos, neg, margin)
    assert (((d[:, :, None] - d[:, None, :] + margin) == 0) & valid).any() or abs(margin) == 1e-8
    dd = d.double()
    dense = F.relu(dd[:, :, None] - dd[:, None, :] + margin) * valid
    assert_close(total.double(), dense.sum(), atol=1e-5, rtol=1e-6)
    assert_same(TripletMarginLoss(margin), pml_losses.TripletMarginLoss(margin=margin), x, y, atol=1e-6, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.integers(0, 3)), min_size=2, max_size=14),
       st.sampled_from([math.sqrt(2), -math.sqrt(2), 1.0, -0.5, 0.05, 1e-8, -1e-8]))
def test_triplet_float32_near_ties_count_exactly_and_match_pml(points, margin):
    # unnormalised integer points in float32: sqrt(8) + sqrt(2) vs sqrt(18)-type near-ties that rounding can hide
    x = torch.tensor([p[:2] for p in points], dtype=torch.float32)
    y = torch.tensor([p[2] for p in points])
    d = pair_distances(x, normalize_embeddings=False)
    pos, neg = label_masks(y)
    _, count = triplet_margin_totals(d, pos, neg, margin)
    assert count.item() == exact_triplet_count(d, pos, neg, margin)
    ours = TripletMarginLoss(margin, normalize_embeddings=False)
    theirs = pml_losses.TripletMarginLoss(margin=margin, distance=LpDistance(normalize_embeddings=False))
    assert_same(ours, theirs, x, y, atol=1e-6, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([torch.float32, torch.float64]),
       st.lists(st.sampled_from([0.0, 1e-42, 1e-30, 0.25, 1.0, 1.5, 2.0, 3.0, 1e30, float("inf")]), min_size=1, max_size=40),
       st.randoms(use_true_random=False))
def test_tie_break_key_sorts_lexicographically(dtype, values, rnd):
    flags = [rnd.random() < 0.5 for _ in values]
    keys = tie_break_key(torch.tensor(values, dtype=dtype) + 0.0, torch.tensor(flags))
    expected = sorted(range(len(values)), key=lambda i: (values[i], flags[i]))
    got = torch.sort(keys).indices.tolist()
    assert [(values[i], flags[i]) for i in got] == [(values[i], flags[i]) for i in expected]


def test_tie_break_key_rejects_half_precision():
    with pytest.raises(TypeError, match="`values` must be float32 or float64"):
        tie_break_key(torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bool))


@pytest.mark.parametrize("seed", range(3))
def test_triplet_float32_larger_batch_matches_pml(seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(300, 32, generator=g), torch.randint(0, 30, (300,), generator=g)
    assert_same(TripletMarginLoss(), pml_losses.TripletMarginLoss(), x, y, atol=1e-5, rtol=1e-4)


def test_default_distances_are_pmls_and_exact_distances_zero_for_repeats():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 64, generator=g), torch.randint(0, 6, (60,), generator=g)
    x[30:40], y[30:40] = x[:10], y[:10]          # repeated samples (a sampler drawing with replacement)
    z = F.normalize(x, dim=1)
    assert torch.equal(pair_distances(x), torch.cdist(z, z))                      # PML's LpDistance matrix
    d_exact = pair_distances(x, exact=True)
    assert d_exact[torch.arange(10), torch.arange(30, 40)].abs().max().item() == 0.0
    loop = torch.stack([torch.stack([(z[i] - z[j]).norm() for j in range(60)]) for i in range(60)])
    assert_close(d_exact, loop, atol=1e-6, rtol=0)
    # exact distances: the repeated positive pairs add no loss term, as in the loop
    assert_close(ContrastiveLoss(exact_distances=True)(x.double(), y), contrastive_loop(x.double(), y))
    assert_close(TripletMarginLoss(exact_distances=True)(x.double(), y), triplet_loop(x.double(), y))
    # defaults: PML's numbers at N > 25 too
    assert_same(TripletMarginLoss(), pml_losses.TripletMarginLoss(), x, y, atol=1e-6, rtol=1e-5)
    assert_same(ContrastiveLoss(), pml_losses.ContrastiveLoss(), x, y, atol=1e-6, rtol=1e-5)


def test_triplet_sorted_equals_dense_sums_per_pair():
    x, y = random_batch(9, n=40, n_classes=6)
    d = pair_distances(x)
    pos, neg = label_masks(y)
    sums, k = triplet_margin_sums(d, pos, neg, 0.3)
    dense = F.relu(d[:, :, None] - d[:, None, :] + 0.3) * (pos[:, :, None] & neg[:, None, :])
    assert_close(sums, dense.sum(2))
    assert torch.equal(k, (dense > 0).sum(2))


# ---------------------------------------------------------------- N-pairs
@pytest.mark.parametrize("batch", range(len(BATCHES)))
def test_npairs_matches_pml_and_loop(batch):
    x, y = BATCHES[batch]
    assert_same(NPairsLoss(), pml_losses.NPairsLoss(), x, y)
    assert_same(NPairsLoss(), npairs_loop, x, y)
    assert_same(NPairsLoss(normalize_embeddings=False),
                pml_losses.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False)), x, y)


def test_npairs_pairs_are_first_and_second_of_each_class():
    first, second, valid = first_two_indices(torch.tensor([4, 4, 1, 4, 9, 1, 2]), 10)
    assert valid.nonzero().flatten().tolist() == [1, 4]
    assert first[valid].tolist() == [2, 0] and second[valid].tolist() == [5, 1]


# ---------------------------------------------------------------- shared behaviour
LOSSES = [ContrastiveLoss(), TripletMarginLoss(), NPairsLoss()]
PML = [pml_losses.ContrastiveLoss(), pml_losses.TripletMarginLoss(), pml_losses.NPairsLoss()]


@pytest.mark.parametrize("i", range(3))
@pytest.mark.parametrize("case", ["one_sample", "all_singletons", "one_class"])
def test_nothing_to_learn_gives_zero_and_zero_gradient(i, case):
    torch.manual_seed(0)   # random rows: with some seeds no negative pair is within the margin
    x = {"one_sample": torch.randn(1, 4), "all_singletons": torch.randn(5, 4), "one_class": torch.randn(5, 4)}[case]
    y = {"one_sample": torch.tensor([3]), "all_singletons": torch.arange(5), "one_class": torch.zeros(5, dtype=torch.long)}[case]
    x = x.double()
    v, g = value_and_grad(LOSSES[i], x, y)
    if i == 0 and case != "one_sample":   # contrastive still has pairs to pull together or push apart
        assert v > 0
    else:                                 # no triplet; for N-pairs no pair, or a single pair (softmax over 1)
        assert v.item() == 0.0 and g.abs().max().item() == 0.0
    assert torch.isfinite(g).all()
    v_pml, _ = value_and_grad(PML[i], x, y)
    assert_close(v, v_pml)


def test_satisfied_margins_give_zero_and_zero_gradient():
    x = torch.tensor([[1., 0.], [1., 0.], [-1., 0.], [-1., 0.]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    for loss in (ContrastiveLoss(), TripletMarginLoss(margin=1.0)):
        v, g = value_and_grad(loss, x, y)
        assert v.item() == 0.0 and g.abs().max().item() == 0.0
        assert loss.active_ratio(x, y).item() == 0.0


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: type(l).__name__)
def test_batch_order_invariance(loss):
    x, y = random_batch(3, n=24)
    g = torch.Generator().manual_seed(0)
    # N-pairs picks each class's first two samples, so only orders that keep the order inside classes qualify
    perm = torch.argsort(y, stable=True) if isinstance(loss, NPairsLoss) else torch.randperm(24, generator=g)
    assert_close(loss(x[perm], y[perm]), loss(x, y))


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: type(l).__name__)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(loss, dtype):
    x, y = random_batch(1, dtype=torch.float32)
    out = loss(x.to(dtype), y)
    assert out.dtype == dtype
    assert_close(out.float(), loss(x.to(dtype).double(), y).float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: type(l).__name__)
def test_gradcheck(loss):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 3, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.tensor([0, 0, 0, 1, 1, 2, 4, 4, 9])
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (x,))


def test_active_ratios_follow_their_definitions():
    x, y = awkward_batch(1)
    d = pair_distances(x)
    pos, neg = label_masks(y)
    want = (((d > 0) & pos) | ((d < 1) & neg)).sum().item() / (pos | neg).sum().item()
    assert abs(ContrastiveLoss().active_ratio(x, y).item() - want) < 1e-6
    valid = pos[:, :, None] & neg[:, None, :]
    want = (((d[:, :, None] - d[:, None, :] + 0.05) > 0) & valid).sum().item() / valid.sum().item()
    assert abs(TripletMarginLoss().active_ratio(x, y).item() - want) < 1e-6
    l, _, valid = NPairsLoss().pair_losses(x, y)
    want = ((1 - torch.exp(-l[valid])) > 0.01).double().mean().item()
    assert abs(NPairsLoss().active_ratio(x, y).item() - want) < 1e-6


def test_errors():
    with pytest.raises(ValueError, match="`margin` must be finite"):
        TripletMarginLoss(margin=float("nan"))
    with pytest.raises(TypeError, match="`neg_margin` must be a real number"):
        ContrastiveLoss(neg_margin=torch.tensor(1.0))
    with pytest.raises(ValueError, match="`active_tol` must be >= 0"):
        NPairsLoss(active_tol=-1)
    with pytest.raises(ValueError, match="3 entries"):
        TripletMarginLoss()(torch.randn(4, 2), torch.tensor([0, 1, 0]))
    with pytest.raises(TypeError, match="integer class ids"):
        NPairsLoss()(torch.randn(3, 2), torch.tensor([0.0, 1.0, 0.0]))


def test_avg_non_zero():
    losses = torch.tensor([0.0, 0.2, 0.0, 0.4, 9.0])
    assert abs(avg_non_zero(losses, torch.tensor([True, True, True, True, False])).item() - 0.3) < 1e-7
    assert avg_non_zero(losses, torch.zeros(5, dtype=torch.bool)).item() == 0.0



# ---------------------------------------------------------------- options (PML's semantics)
def dist(u, v, distance):
    if distance == "cosine":
        return u @ v
    d = (u - v).norm()
    return d * d if distance == "squared_euclidean" else d


def contrastive_loop_opts(x, y, pos_margin=0.0, neg_margin=1.0, distance="euclidean", ref=None,
                          per_sample=False):
    "Eqs. 3-4 with a distance choice, a reference set and per-anchor losses, one pair at a time."
    z = F.normalize(x, dim=1)
    r, ry = (z, y) if ref is None else (F.normalize(ref[0], dim=1), ref[1])
    flip = distance == "cosine"
    pos, neg = [[] for _ in z], [[] for _ in z]
    for i in range(len(z)):
        for j in range(len(r)):
            if ref is None and i == j:
                continue
            d = dist(z[i], r[j], distance)
            if y[i] == ry[j]:
                pos[i].append(torch.relu(pos_margin - d if flip else d - pos_margin))
            else:
                neg[i].append(torch.relu(d - neg_margin if flip else neg_margin - d))

    def avg_nz(terms):
        nz = [t for t in terms if t > 0]
        return sum(nz) / len(nz) if nz else x.sum() * 0
    if per_sample:
        return torch.stack([avg_nz(p) + avg_nz(n) for p, n in zip(pos, neg)])
    return avg_nz([t for p in pos for t in p]) + avg_nz([t for n in neg for t in n])


def triplet_loop_opts(x, y, margin=0.05, distance="euclidean", smooth=False, ref=None,
                      per_sample=False):
    z = F.normalize(x, dim=1)
    r, ry = (z, y) if ref is None else (F.normalize(ref[0], dim=1), ref[1])
    terms = [[] for _ in z]
    for a in range(len(z)):
        for p in range(len(r)):
            if (ref is None and p == a) or ry[p] != y[a]:
                continue
            for n in range(len(r)):
                if ry[n] == y[a]:
                    continue
                d_ap, d_an = dist(z[a], r[p], distance), dist(z[a], r[n], distance)
                v = (d_an - d_ap if distance == "cosine" else d_ap - d_an) + margin
                loss = F.softplus(v) if smooth else torch.relu(v)
                if loss > 0:
                    terms[a].append(loss)
    if per_sample:
        return torch.stack([sum(t) / len(t) if t else x.sum() * 0 for t in terms])
    flat = [t for ts in terms for t in ts]
    return sum(flat) / len(flat) if flat else x.sum() * 0


PML_DISTANCE = {"euclidean": {}, "squared_euclidean": {"distance": LpDistance(power=2)},
                "cosine": {"distance": CosineSimilarity()}}
CONTRASTIVE_OPTIONS = [dict(), dict(distance="squared_euclidean", neg_margin=1.5),
                       dict(distance="cosine", pos_margin=0.9, neg_margin=0.2),
                       dict(distance="cosine", pos_margin=1.0, neg_margin=0.0)]
TRIPLET_OPTIONS = [dict(), dict(distance="squared_euclidean", margin=0.2), dict(distance="cosine"),
                   dict(distance="cosine", margin=0.3), dict(smooth_loss=True),
                   dict(smooth_loss=True, distance="cosine", margin=0.1),
                   dict(smooth_loss=True, distance="squared_euclidean")]


def pml_contrastive(kw):
    ours = ContrastiveLoss(**kw)
    return pml_losses.ContrastiveLoss(ours.pos_margin, ours.neg_margin, **PML_DISTANCE[ours.distance])


def pml_triplet(kw):
    ours = TripletMarginLoss(**kw)
    return pml_losses.TripletMarginLoss(margin=ours.margin, smooth_loss=ours.smooth_loss,
                                        **PML_DISTANCE[ours.distance])


def ref_call(fn, ref):
    return lambda e, l: fn(e, l, ref_emb=ref[0], ref_labels=ref[1])


@pytest.mark.parametrize("batch", range(len(BATCHES)))
@pytest.mark.parametrize("kw", CONTRASTIVE_OPTIONS, ids=str)
def test_contrastive_options_match_pml_and_loop(batch, kw):
    x, y = BATCHES[batch]
    assert_same(ContrastiveLoss(**kw), pml_contrastive(kw), x, y)
    assert_same(ContrastiveLoss(**kw), lambda e, l: contrastive_loop_opts(e, l, **kw), x, y)
    ref = REFERENCES[batch]                                   # another batch as the reference set
    assert_same(ref_call(ContrastiveLoss(**kw), ref), ref_call(pml_contrastive(kw), ref), x, y)
    assert_same(ref_call(ContrastiveLoss(**kw), ref),
                lambda e, l: contrastive_loop_opts(e, l, **kw, ref=ref), x, y)


@pytest.mark.parametrize("batch", range(len(BATCHES)))
@pytest.mark.parametrize("kw", TRIPLET_OPTIONS, ids=str)
def test_triplet_options_match_pml_and_loop(batch, kw):
    x, y = BATCHES[batch]
    assert_same(TripletMarginLoss(**kw), pml_triplet(kw), x, y)
    loop_kw = dict(margin=kw.get("margin", 0.05), distance=kw.get("distance", "euclidean"),
                   smooth=kw.get("smooth_loss", False))
    assert_same(TripletMarginLoss(**kw), lambda e, l: triplet_loop_opts(e, l, **loop_kw), x, y)
    ref = REFERENCES[batch]
    assert_same(ref_call(TripletMarginLoss(**kw), ref), ref_call(pml_triplet(kw), ref), x, y)
    assert_same(ref_call(TripletMarginLoss(**kw), ref),
                lambda e, l: triplet_loop_opts(e, l, **loop_kw, ref=ref), x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("which", ["contrastive", "triplet"])
def test_options_match_pml_in_lower_precision(dtype, which):
    "PML's own tests run float16/32/64; inputs in lower precision give our float32 result, PML's."
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(20, 8, generator=g), torch.randint(0, 4, (20,), generator=g)
    r, ry = torch.randn(15, 8, generator=g), torch.randint(0, 4, (15,), generator=g)
    options = CONTRASTIVE_OPTIONS if which == "contrastive" else TRIPLET_OPTIONS
    for kw in options:
        ours = (ContrastiveLoss if which == "contrastive" else TripletMarginLoss)(**kw)
        theirs = pml_contrastive(kw) if which == "contrastive" else pml_triplet(kw)
        xs, rs = x.to(dtype).float(), r.to(dtype).float()   # PML computes in float32 here
        for call in (lambda f, e: f(e, y), lambda f, e: f(e, y, ref_emb=rs, ref_labels=ry)):
            a, b = x.to(dtype).clone().requires_grad_(), xs.clone().requires_grad_()
            va, vb = call(ours, a), call(theirs, b)
            assert va.dtype == dtype
            va.float().backward(), vb.backward()
            tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)
            assert_close(va.float(), vb, **tol)
            assert_close(a.grad.float(), b.grad, **({**tol, "atol": 1e-2} if dtype == torch.float16
                                                     else tol))


@pytest.mark.parametrize("loss", [ContrastiveLoss(), ContrastiveLoss(distance="cosine", pos_margin=1.0),
                                  TripletMarginLoss(), TripletMarginLoss(smooth_loss=True),
                                  TripletMarginLoss(distance="squared_euclidean"),
                                  ContrastiveLoss(reduction="none"), TripletMarginLoss(reduction="none")],
                         ids=lambda l: f"{type(l).__name__}-{l.distance}-{l.reduction}")
def test_batch_as_its_own_reference_equals_plain_call(loss):
    assert_batch_is_its_own_reference(loss, *BATCHES[0])


def test_reference_gradient_flows_into_the_reference_unless_detached():
    x, y = BATCHES[1]
    r, ry = REFERENCES[1]
    for loss in (ContrastiveLoss(), TripletMarginLoss(), TripletMarginLoss(smooth_loss=True)):
        a, m = x.clone().requires_grad_(), r.clone().requires_grad_()
        loss(a, y, ref_emb=m, ref_labels=ry).backward()
        assert m.grad.abs().max() > 0 and torch.isfinite(m.grad).all()
        a.grad = None
        loss(a, y, ref_emb=r, ref_labels=ry).backward()          # a memory: detached rows
        assert torch.isfinite(a.grad).all()
    g = torch.Generator().manual_seed(2)
    xs, ys = torch.randn(8, 3, dtype=torch.float64, generator=g), torch.tensor([0, 0, 1, 1, 1, 2, 5, 5])
    rs, rys = torch.randn(6, 3, dtype=torch.float64, generator=g), torch.tensor([0, 1, 1, 2, 2, 7])
    for loss in (ContrastiveLoss(neg_margin=1.2), TripletMarginLoss(margin=0.2),
                 TripletMarginLoss(smooth_loss=True), ContrastiveLoss(reduction="none")):
        assert torch.autograd.gradcheck(lambda e, f: loss(e, ys, ref_emb=f, ref_labels=rys),
                                        (xs.clone().requires_grad_(), rs.clone().requires_grad_()))


@pytest.mark.parametrize("cls, kw", [(ContrastiveLoss, dict(pos_margin=-1.0, neg_margin=3.0)),
                                     (TripletMarginLoss, dict(margin=2.5)),
                                     (TripletMarginLoss, dict(smooth_loss=True))])
def test_reduction_none_relation_to_the_default(cls, kw):
    "All terms active and classes balanced: the default (pooled) reduction is the mean per anchor."
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(12, 4, generator=g, dtype=torch.float64), torch.arange(12) % 3
    assert_close(cls(**kw)(x, y), cls(**kw, reduction="none")(x, y).mean())
    x, y = awkward_batch(0)                                   # in general it is not
    per = cls(reduction="none")(x, y)
    assert per.shape == (len(y),) and (cls()(x, y) - per.mean()).abs() > 1e-6


def test_npairs_reduction_none_and_num_classes():
    for x, y in BATCHES:
        ids = torch.unique(y, return_inverse=True)[1]
        per = NPairsLoss(reduction="none")(x, y)
        _, _, valid = NPairsLoss().pair_losses(x, y)
        assert_close(NPairsLoss()(x, y), per.sum() / valid.sum().clamp_min(1))   # default = sum / K
        assert_same(NPairsLoss(reduction="none"), lambda e, l: npairs_per_sample(e, l), x, y)
        assert_same(NPairsLoss(num_classes=int(ids.max()) + 3), pml_losses.NPairsLoss(), x, ids)


def npairs_per_sample(x, y):
    z = F.normalize(x, dim=1)
    members = {}
    for i, c in enumerate(y.tolist()):
        members.setdefault(c, []).append(i)
    pairs = [(m[0], m[1]) for m in members.values() if len(m) >= 2]
    out = [x.sum() * 0 for _ in z]
    for a, p in pairs:
        out[a] = torch.logsumexp(torch.stack([z[a] @ z[q] for _, q in pairs]), 0) - z[a] @ z[p]
    return torch.stack(out)


def test_smooth_blocks_do_not_change_the_result():
    x, y = BATCHES[3]
    d, same = pair_distances(x), y[:, None] == y[None, :]
    whole = smooth_triplet_weights(d, same, 0.05, True)
    for block in (1, 7 * 400, 20 * 20 * 3):
        for u, v in zip(whole, smooth_triplet_weights(d, same, 0.05, True, block=block)):
            assert_close(u, v)


def test_weights_are_the_derivative_of_the_totals():
    x, y = BATCHES[4]
    pos, neg = label_masks(y)
    for m in (0.05, 0.0, -0.3, 0.8):
        d = pair_distances(x).requires_grad_()
        total, count = triplet_margin_totals(d, pos, neg, m)
        total.backward()
        totals, counts, W = triplet_margin_weights(d.detach(), ~neg, m, has_self=True)
        assert counts.sum() == count
        assert_close(totals.sum(), total.detach())
        assert_close(W, d.grad)


def test_option_errors():
    with pytest.raises(ValueError, match="`distance` must be one of"):
        ContrastiveLoss(distance="manhattan")
    with pytest.raises(ValueError, match="`distance` must be one of"):
        TripletMarginLoss(distance="lp")
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        TripletMarginLoss(reduction="mean")
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        NPairsLoss(reduction="sum")
    with pytest.raises(ValueError, match="cosine"):
        ContrastiveLoss(distance="cosine", normalize_embeddings=False)
    with pytest.raises(ValueError, match="num_classes"):
        NPairsLoss(num_classes=2)(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="reference set"):
        NPairsLoss()(torch.randn(3, 2), torch.tensor([0, 0, 1]), ref_emb=torch.randn(3, 2),
                     ref_labels=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="go together"):
        TripletMarginLoss()(torch.randn(3, 2), torch.tensor([0, 0, 1]), ref_emb=torch.randn(3, 2))
