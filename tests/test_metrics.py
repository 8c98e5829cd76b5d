"Property tests for structloss.metrics against scikit-learn, pytorch-metric-learning and plain loops."
import math, pytest, torch
from hypothesis import given, settings, strategies as st
from sklearn.metrics import silhouette_samples as sk_silhouette_samples
from torch.testing import assert_close
from structloss.metrics import (class_variance_report, inter_class_separation, intra_class_variance, map_at_r,
                                recall_at_k, silhouette_samples, silhouette_score)

def clustered(n, d, n_classes, seed, spread=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    centres = torch.randn(n_classes, d, generator=g, dtype=dtype) * 3
    return centres[labels] + spread * torch.randn(n, d, generator=g, dtype=dtype), labels

@settings(max_examples=40, deadline=None)
@given(st.integers(3, 40), st.integers(1, 6), st.integers(2, 7), st.integers(0, 10_000),
       st.sampled_from(["cosine", "sqeuclidean", "euclidean"]), st.booleans())
def test_silhouette_matches_scikit_learn(n, d, n_classes, seed, metric, with_duplicates):
    z, labels = clustered(n, d, n_classes, seed)
    labels = labels * 5 - 3                                          # gaps and negative ids
    if with_duplicates and n > 3: z[1] = z[0]
    k = len(labels.unique())
    if not 2 <= k <= n - 1:
        with pytest.raises(ValueError, match="number of classes"):
            silhouette_samples(z, labels, metric)
        return
    ours = silhouette_samples(z, labels, metric)
    assert_close(ours.numpy(), sk_silhouette_samples(z.numpy(), labels.numpy(), metric=metric), atol=1e-7, rtol=0)

def test_silhouette_float32_large_batch_matches_scikit_learn():
    z, labels = clustered(3000, 32, 20, seed=1)
    for metric in ("cosine", "sqeuclidean", "euclidean"):
        ours = silhouette_score(z.float(), labels, metric)
        theirs = sk_silhouette_samples(z.numpy(), labels.numpy(), metric=metric).mean()
        assert abs(float(ours) - theirs) < 1e-4
        if metric != "cosine":                                     # shifted far from the origin: same score
            assert abs(float(silhouette_score((z + 1e3).float(), labels, metric)) - theirs) < 1e-3

def test_silhouette_singletons_score_zero():
    z, labels = clustered(20, 3, 3, seed=2)
    labels[0] = 99
    assert silhouette_samples(z, labels)[0] == 0

def loop_variance(z, labels):
    per_class, means = [], []
    for c in labels.unique():
        m = z[labels == c]; mu = m.mean(0); means.append(mu)
        per_class.append(float(((m - mu) ** 2).sum(1).mean()))
    dists = [float((means[i] - means[j]).norm()) for i in range(len(means)) for j in range(i + 1, len(means))]
    mean = sum(dists) / len(dists)
    std = math.sqrt(sum((x - mean) ** 2 for x in dists) / len(dists))
    return sum(per_class) / len(per_class), mean, std, min(dists)

@settings(max_examples=30, deadline=None)
@given(st.integers(2, 30), st.integers(1, 5), st.integers(2, 6), st.integers(0, 10_000))
def test_variance_diagnostics_match_loops(n, d, n_classes, seed):
    z, labels = clustered(n, d, n_classes, seed)
    if len(labels.unique()) < 2: labels[0] = labels[0] + 1000
    intra, mean, std, mn = loop_variance(z, labels)
    report = class_variance_report(z, labels)
    assert report["intra_class_variance"] == pytest.approx(intra, rel=1e-9, abs=1e-12)
    assert report["inter_class_distance_mean"] == pytest.approx(mean, rel=1e-9)
    assert report["inter_class_distance_std"] == pytest.approx(std, rel=1e-7, abs=1e-9)
    assert report["inter_class_distance_min"] == pytest.approx(mn, rel=1e-9)

def test_variance_is_invariant_to_translation_and_label_values():
    z, labels = clustered(50, 4, 5, seed=3)
    assert_close(intra_class_variance(z + 7, labels * 3 + 1), intra_class_variance(z, labels))
    assert_close(inter_class_separation(z + 7, labels)["mean"], inter_class_separation(z, labels)["mean"])

def test_retrieval_matches_pytorch_metric_learning():
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN
    z, labels = clustered(300, 8, 12, seed=4, spread=3.0, dtype=torch.float32)
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count",
                              knn_func=CustomKNN(LpDistance(normalize_embeddings=False)), device=torch.device("cpu"))
    theirs = calc.get_accuracy(z, labels, z, labels, ref_includes_query=True)
    assert recall_at_k(z, labels, k=1, metric="euclidean")[1] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert map_at_r(z, labels, metric="euclidean") == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)

def test_recall_is_monotone_in_k_and_perfect_for_separated_classes():
    z, labels = clustered(200, 6, 8, seed=5, spread=2.0)
    r = recall_at_k(z, labels, k=(1, 2, 4, 8, 16))
    assert all(r[a] <= r[b] for a, b in [(1, 2), (2, 4), (4, 8), (8, 16)])
    z, labels = clustered(100, 6, 5, seed=6, spread=1e-3)
    assert recall_at_k(z, labels, k=1, metric="euclidean")[1] == 1.0 and map_at_r(z, labels, metric="euclidean") == 1.0

def test_bad_inputs_raise_clear_errors():
    z, labels = clustered(10, 3, 2, seed=7)
    with pytest.raises(TypeError, match="integer class ids"): recall_at_k(z, labels.float())
    with pytest.raises(ValueError, match="9 entries"): map_at_r(z, labels[:9])
    with pytest.raises(ValueError, match="NaN or inf"): silhouette_score(z.clone().fill_(float("inf")), labels)
    with pytest.raises(ValueError, match="no query"): map_at_r(z, torch.arange(10))
