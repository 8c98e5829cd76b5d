"Property tests for structloss.geometry: distances, masks and class sums against plain loops and scikit-learn."
import pytest, torch
from hypothesis import given, settings, strategies as st
from sklearn.metrics import pairwise_distances as sk_pairwise_distances
from torch.testing import assert_close
from structloss.geometry import (METRICS, class_counts, class_index, class_means, class_sums, label_masks,
                                 pairwise_distances, safe_normalize)

def batches(max_n=12, max_d=5, max_label=6):
    return st.tuples(st.integers(1, max_n), st.integers(1, max_d), st.integers(0, 10_000), st.integers(1, max_label))

def make(n, d, seed, n_labels, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=dtype)
    labels = torch.randint(-2, n_labels, (n,), generator=g) * 3   # gaps and negative ids
    return z, labels

@settings(max_examples=40, deadline=None)
@given(batches(), st.sampled_from(METRICS))
def test_pairwise_distances_match_scikit_learn(batch, metric):
    z, _ = make(*batch)
    z[0] = 0 if len(z) > 2 else z[0]                                 # a zero vector
    ours = pairwise_distances(z, metric=metric)
    assert_close(ours.numpy(), sk_pairwise_distances(z.numpy(), metric=metric), atol=1e-7, rtol=1e-7)
    assert torch.all(ours.diagonal() == 0)

@settings(max_examples=30, deadline=None)
@given(batches())
def test_class_sums_and_means_match_loops(batch):
    z, labels = make(*batch)
    ids, C = class_index(labels)
    classes = sorted(set(labels.tolist()))
    assert C == len(classes)
    for k, c in enumerate(classes):
        members = z[labels == c]
        assert_close(class_sums(z, ids, C)[k], members.sum(0))
        assert_close(class_means(z, ids, C)[k], members.mean(0))
        assert class_counts(ids, C)[k] == len(members)

@settings(max_examples=30, deadline=None)
@given(batches())
def test_label_masks_partition_the_off_diagonal(batch):
    _, labels = make(*batch)
    pos, neg = label_masks(labels)
    eye = torch.eye(len(labels), dtype=torch.bool)
    assert not (pos & neg).any() and not (pos & eye).any()
    assert torch.equal(pos | neg | eye, torch.ones_like(eye))
    assert torch.equal(pos, pos.T) and torch.equal(neg, neg.T)
    same = torch.tensor([[a == b for b in labels.tolist()] for a in labels.tolist()])   # by definition, pair by pair
    assert torch.equal(pos, same & ~eye) and torch.equal(neg, ~same)

@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_float32_distances_far_from_the_origin(metric):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(50, 8, generator=g, dtype=torch.float64)
    far = (z + 1e4).float()                                       # cancellation would leave errors of order 1e2
    assert_close(pairwise_distances(far, metric=metric).double(), pairwise_distances(z, metric=metric), atol=2e-2, rtol=1e-3)

def test_gradients_are_finite_at_zero_distance_and_zero_vectors():
    z = torch.tensor([[0.0, 0.0], [1.0, 2.0], [1.0, 2.0]], requires_grad=True)
    for metric in METRICS:
        z.grad = None
        pairwise_distances(z, metric=metric).sum().backward()
        assert torch.isfinite(z.grad).all(), metric
    x = torch.zeros(3, 4, dtype=torch.float16, requires_grad=True)
    safe_normalize(x.float()).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))

def test_num_classes_path_keeps_absent_classes():
    ids, C = class_index(torch.tensor([4, 0, 4]), num_classes=6)
    assert C == 6 and class_counts(ids, C).tolist() == [1, 0, 0, 0, 2, 0]
    with pytest.raises(ValueError, match="num_classes=6"):
        class_index(torch.tensor([6]), num_classes=6)
