"Property tests for the Soft Silhouette loss: loop agreement, limits, edge cases, precision."
import pytest, torch
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close
from structloss.geometry import pairwise_distances
from structloss.metrics import silhouette_samples
from structloss.silhouette import SoftSilhouetteLoss, soft_silhouette_samples
from reference_check import assert_batch_is_its_own_reference

def loop(z, labels, tau, beta, metric, soft_min, eps=1e-8, temperature_scale="absolute"):
    "Independent reference: eqs. 7-13 from the distance matrix, one sample at a time."
    D = pairwise_distances(z, metric=metric)
    if temperature_scale == "relative":   # tau, beta times the mean d(i, c) over i and c != y_i (no gradient)
        classes = sorted({int(c) for c in labels.tolist()})
        d_ic = [D[i, labels == c].mean().detach() for i in range(len(z)) for c in classes if c != labels[i]]
        scale = torch.stack(d_ic).mean().clamp_min(1e-12) if d_ic else torch.tensor(1e-12, dtype=z.dtype)
        tau, beta = tau * scale, beta * scale
    out = []
    for i in range(len(z)):
        same = [j for j in range(len(z)) if labels[j] == labels[i] and j != i]
        others = sorted({int(c) for c in labels.tolist()} - {int(labels[i])})
        if not same or not others:
            out.append(z.sum() * 0); continue
        a = D[i, same].mean()
        d_c = torch.stack([D[i, labels == c].mean() for c in others])
        b = -beta * torch.logsumexp(-d_c / beta, 0) if soft_min == "logsumexp" else (torch.softmax(-d_c / beta, 0) * d_c).sum()
        smax = tau * torch.logsumexp(torch.stack([a, b]) / tau, 0)
        out.append((b - a) / (smax + eps))
    return torch.stack(out)

@settings(max_examples=50, deadline=None)
@given(st.integers(1, 16), st.integers(1, 5), st.integers(1, 6), st.integers(0, 10_000),
       st.sampled_from(["cosine", "sqeuclidean", "euclidean"]), st.sampled_from(["logsumexp", "softmax"]),
       st.floats(0.05, 2.0), st.floats(0.05, 2.0), st.sampled_from(["absolute", "relative"]))
def test_vectorised_matches_loop_in_value_and_gradient(n, d, n_classes, seed, metric, soft_min, tau, beta, scale):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (n,), generator=g) * 4 + 1
    if n > 2: z[1] = z[0]                                            # ties
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = soft_silhouette_samples(z1, labels, tau, beta, metric, soft_min, temperature_scale=scale)
    ref = loop(z2, labels, tau, beta, metric, soft_min, temperature_scale=scale)
    assert_close(ours, ref)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    (ours * w).sum().backward(); (ref * w).sum().backward()
    assert_close(z1.grad, z2.grad)

@settings(max_examples=40, deadline=None)
@given(st.integers(2, 30), st.integers(1, 8), st.integers(2, 10), st.integers(0, 10_000), st.floats(1e-3, 1.0),
       st.sampled_from(["cosine", "sqeuclidean", "euclidean"]), st.floats(0.0, 1.0))
def test_default_scores_stay_in_range(n, d, n_classes, seed, tau, metric, spread):
    "With the weighted soft-min (10b), |s~| < 1 and the loss stays in [0, 2], even for crowded classes."
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    z = 1 + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    s = soft_silhouette_samples(z, labels, tau, metric=metric)
    assert s.abs().max() < 1
    assert 0 <= float(SoftSilhouetteLoss(tau, metric=metric)(z, labels)) <= 2

@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean", "euclidean"])
def test_small_temperature_recovers_the_silhouette(metric):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (80,), generator=g)
    z = torch.randn(5, 6, generator=g, dtype=torch.float64)[labels] + torch.randn(80, 6, generator=g, dtype=torch.float64)
    assert_close(soft_silhouette_samples(z, labels, 1e-5, metric=metric), silhouette_samples(z, labels, metric), atol=1e-4, rtol=0)

def test_loss_with_singletons_zero_tends_to_minus_score():
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    z = torch.randn(10, 4, generator=g, dtype=torch.float64)
    from sklearn.metrics import silhouette_score
    loss = SoftSilhouetteLoss(temperature=1e-5, singletons="zero")(z, labels)
    assert float(loss) == pytest.approx(1 - silhouette_score(z.numpy(), labels.numpy(), metric="cosine"), abs=1e-4)

def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 7, 7])
    for kw in ({}, {"soft_min": "softmax"}, {"metric": "sqeuclidean", "singletons": "zero"}):
        assert torch.autograd.gradcheck(lambda t: SoftSilhouetteLoss(0.2, **kw)(t, labels), (z,))

@pytest.mark.parametrize("labels", [[3, 3, 3, 3], [0, 1, 2, 3], [5]])
def test_nothing_to_learn_gives_zero_and_zero_gradient(labels):
    labels = torch.tensor(labels)
    z = torch.randn(len(labels), 4, requires_grad=True)
    loss = SoftSilhouetteLoss()(z, labels); loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))
    assert SoftSilhouetteLoss().active_ratio(z.detach(), labels).item() == 0.0

def test_batch_order_invariance_and_device_dtype():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(30, 8, generator=g); labels = torch.randint(0, 4, (30,), generator=g)
    perm = torch.randperm(30, generator=g)
    loss = SoftSilhouetteLoss()
    assert_close(loss(z[perm], labels[perm]), loss(z, labels))
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        zz = z.detach().to(dt).clone().requires_grad_(); out = loss(zz, labels); out.backward()
        assert out.dtype == dt and out.device == z.device and torch.isfinite(zz.grad).all()

def test_half_precision_large_inputs_do_not_overflow():
    z = torch.full((8, 16), 200.0, dtype=torch.float16); z[4:] = -200.0
    z = z + torch.randn(8, 16).half()
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    for metric in ("cosine", "sqeuclidean", "euclidean"):
        zz = z.clone().requires_grad_()
        out = SoftSilhouetteLoss(temperature=0.01, metric=metric)(zz, labels); out.backward()
        assert torch.isfinite(out) and torch.isfinite(zz.grad).all(), metric

@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
@pytest.mark.parametrize("k", [1e-4, 1e-2, 30.0])
def test_relative_temperature_is_scale_free(metric, k):
    "Relative temperatures: s~(k z) = s~(z) (eps = 0); absolute ones shrink with the distances."
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (40,), generator=g)
    z = torch.randn(4, 5, generator=g, dtype=torch.float64)[labels] + torch.randn(40, 5, generator=g, dtype=torch.float64)
    rel = dict(metric=metric, temperature_scale="relative", eps=0.0)
    assert_close(soft_silhouette_samples(k * z, labels, 0.1, **rel), soft_silhouette_samples(z, labels, 0.1, **rel))
    if k < 1e-3:
        small = soft_silhouette_samples(k * z, labels, 0.1, metric=metric).abs().max()
        assert small < 0.5 * soft_silhouette_samples(z, labels, 0.1, metric=metric).abs().max()

def test_relative_temperature_on_a_collapsed_batch_is_finite():
    z = torch.ones(8, 3, requires_grad=True)
    loss = SoftSilhouetteLoss(temperature_scale="relative")(z, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()

def test_bad_inputs():
    z = torch.randn(6, 3); labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="temperature"): SoftSilhouetteLoss(temperature=-1)
    with pytest.raises(ValueError, match="`temperature_scale` must be one of"): SoftSilhouetteLoss(temperature_scale="batch")
    with pytest.raises(TypeError, match="integer class ids"): SoftSilhouetteLoss()(z, labels.float())
    with pytest.raises(ValueError, match="shape \\[N, d\\]"): SoftSilhouetteLoss()(z[None], labels)
    with pytest.raises(ValueError, match="5 entries"): SoftSilhouetteLoss()(z, labels[:5])
    with pytest.raises(ValueError, match="NaN or inf"): SoftSilhouetteLoss()(z / 0, labels)


# --- reference sets (anchors from the batch, a(i) and d(i, c) from a reference) and reduction ---------

def loop_with_reference(z, labels, ref, ref_labels, self_in_ref, tau, beta, metric, soft_min,
                        temperature_scale="absolute", eps=1e-8):
    "Independent reference: eqs. 7-13 with P(i) and B_c taken from the reference rows."
    D = pairwise_distances(z, ref, metric=metric)                           # (N, M)
    classes = sorted({int(c) for c in ref_labels.tolist()})
    if temperature_scale == "relative":
        d_ic = [D[i, ref_labels == c].mean().detach() for i in range(len(z)) for c in classes
                if c != labels[i]]
        scale = torch.stack(d_ic).mean().clamp_min(1e-12) if d_ic else torch.tensor(1e-12, dtype=z.dtype)
        tau, beta = tau * scale, beta * scale
    scores, defined = [], []
    for i in range(len(z)):
        mates = [j for j in range(len(ref)) if ref_labels[j] == labels[i] and not (self_in_ref and j == i)]
        others = [c for c in classes if c != labels[i]]
        if not mates or not others:
            scores.append(z.sum() * 0); defined.append(False); continue
        a = D[i, mates].mean()
        d_c = torch.stack([D[i, ref_labels == c].mean() for c in others])
        b = (-beta * torch.logsumexp(-d_c / beta, 0) if soft_min == "logsumexp"
             else (torch.softmax(-d_c / beta, 0) * d_c).sum())
        smax = tau * torch.logsumexp(torch.stack([a, b]) / tau, 0)
        scores.append((b - a) / (smax + eps)); defined.append(True)
    return torch.stack(scores), torch.tensor(defined)


def reference_batch(seed, n=10, m=14, d=4):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 5, 7, 7])[:n]        # class 5: no mate in the batch
    memory = torch.randn(m, d, generator=g, dtype=torch.float64)
    memory_labels = torch.tensor([0, 1, 1, 2, 3, 3, 5, 0, 1, 2, 3, 6, 6, 0])[:m]   # no class 7
    return z, labels, memory, memory_labels


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean", "euclidean"])
@pytest.mark.parametrize("soft_min", ["softmax", "logsumexp"])
@pytest.mark.parametrize("scale", ["absolute", "relative"])
@pytest.mark.parametrize("self_in_ref", [False, True])
def test_reference_set_matches_loop_in_value_and_gradient(metric, soft_min, scale, self_in_ref):
    z, labels, memory, memory_labels = reference_batch(0)
    if self_in_ref:   # the reference is the batch followed by a memory
        memory, memory_labels = torch.cat([z, memory]), torch.cat([labels, memory_labels])
    kw = dict(metric=metric, soft_min=soft_min, temperature_scale=scale)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    r1, r2 = memory.clone().requires_grad_(), memory.clone().requires_grad_()
    if self_in_ref:   # one tensor: the anchors are rows of the reference (gradients add up)
        r1, r2 = torch.cat([z1, memory[len(z):]]), torch.cat([z2, memory[len(z):]])
    loss = SoftSilhouetteLoss(0.2, 0.3, reduction="none", **kw)
    ours = loss(z1, labels, ref_emb=r1, ref_labels=memory_labels, self_in_ref=self_in_ref)
    s_ref, defined = loop_with_reference(z2, labels, r2, memory_labels, self_in_ref, 0.2, 0.3,
                                         metric, soft_min, scale)
    want = torch.where(defined, 1 - s_ref, s_ref * 0)
    assert_close(ours, want)
    assert defined.any() and defined[-1] == self_in_ref   # class 7: only in the batch
    w = torch.linspace(-1, 2, len(z), dtype=torch.float64)
    (ours * w).sum().backward(); (want * w).sum().backward()
    assert_close(z1.grad, z2.grad)
    if not self_in_ref:
        assert_close(r1.grad, r2.grad)
        assert r1.grad.abs().sum() > 0          # gradients flow into the reference when it asks


@pytest.mark.parametrize("kw", [{}, {"metric": "sqeuclidean"}, {"metric": "euclidean"},
                                {"soft_min": "logsumexp", "singletons": "zero"},
                                {"temperature_scale": "relative", "loss_form": "negative_mean"},
                                {"num_classes": 9}, {"reduction": "none"}, {"reduction": "sum"}])
def test_batch_as_its_own_reference_equals_no_reference(kw):
    "`loss(x, y, ref_emb=x, ref_labels=y, self_in_ref=True) == loss(x, y)`, value and gradient."
    g = torch.Generator().manual_seed(4)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 4, 4, 8, 8, 8, 3])
    x = torch.randn(len(labels), 5, generator=g, dtype=torch.float64)
    x[1] = x[0]; x[5] = 0                          # a tie and a zero vector
    assert_batch_is_its_own_reference(SoftSilhouetteLoss(**kw), x, labels)


@pytest.mark.parametrize("loss_form", ["one_minus_mean", "negative_mean"])
@pytest.mark.parametrize("singletons", ["exclude", "zero"])
def test_reduction_none_relation_to_the_default(loss_form, singletons):
    "Per-sample terms: 1 - s~(i) (or -s~(i)) on V, 0 elsewhere; the default is their sum over |V|."
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 9])          # 2 and 9: singletons
    x = torch.randn(len(labels), 3, generator=g, dtype=torch.float64)
    kw = dict(loss_form=loss_form, singletons=singletons)
    terms = SoftSilhouetteLoss(reduction="none", **kw)(x, labels)
    s = soft_silhouette_samples(x, labels)
    in_v = torch.tensor([True] * 5 + [singletons == "zero"] + [True] * 2 + [singletons == "zero"])
    want = torch.where(in_v, 1 - s if loss_form == "one_minus_mean" else -s, 0 * s)
    assert terms.shape == (9,)
    assert_close(terms, want)
    assert_close(SoftSilhouetteLoss(**kw)(x, labels), terms.sum() / in_v.sum())
    assert_close(SoftSilhouetteLoss(reduction="sum", **kw)(x, labels), terms.sum())


def test_reference_edge_cases_and_errors():
    z, labels, memory, memory_labels = reference_batch(1)
    loss = SoftSilhouetteLoss(reduction="none")
    # a memory with one class: no b(i) for anyone -> every term 0, zero gradients
    zz = z.clone().requires_grad_()
    out = loss(zz, labels, ref_emb=memory[:3], ref_labels=torch.zeros(3, dtype=torch.long))
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(zz.grad, torch.zeros_like(zz))
    # num_classes: ids of batch and memory used directly; the same values as the remapped ones
    assert_close(SoftSilhouetteLoss(num_classes=8)(z, labels, ref_emb=memory, ref_labels=memory_labels),
                 SoftSilhouetteLoss()(z, labels, ref_emb=memory, ref_labels=memory_labels))
    with pytest.raises(ValueError, match="num_classes >= 8"):
        SoftSilhouetteLoss(num_classes=7)(z, labels, ref_emb=memory, ref_labels=memory_labels)
    with pytest.raises(ValueError, match="go together"):
        SoftSilhouetteLoss()(z, labels, ref_emb=memory)
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        SoftSilhouetteLoss(reduction="batchmean")
