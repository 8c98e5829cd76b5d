"""ClassBalancedSampler: composition, coverage, determinism (property tests)."""
import math
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from structloss.samplers import ClassBalancedSampler


def _check(sampler, batches):
    labels = sampler.labels
    assert len(batches) == len(sampler)
    for b in batches:
        classes, counts = np.unique(labels[b], return_counts=True)
        assert len(b) == sampler.p * sampler.m
        assert len(classes) == sampler.p and (counts == sampler.m).all()
    return np.bincount(np.concatenate(batches), minlength=len(labels))


@st.composite
def setups(draw):
    sizes = draw(st.lists(st.integers(1, 25), min_size=1, max_size=8))
    p = draw(st.integers(1, len(sizes)))
    m = draw(st.integers(1, 6))
    ids = draw(st.lists(st.integers(-5, 50), min_size=len(sizes), max_size=len(sizes), unique=True))
    labels = np.repeat(ids, sizes)
    order = np.random.default_rng(draw(st.integers(0, 99))).permutation(len(labels))
    return labels[order], m, p, draw(st.integers(0, 5))


@settings(max_examples=150, deadline=None)
@given(setups(), st.integers(0, 3))
def test_composition_coverage_and_repeats(setup, epoch):
    labels, m, p, seed = setup
    s = ClassBalancedSampler(labels, m=m, p=p, seed=seed)
    batches = s.batches(epoch)
    seen = _check(s, batches)
    assert (seen >= 1).all()  # every sample at least once per epoch
    # the stated rule: repeats only complete chunks (< m per class, or a whole chunk for classes smaller than m)
    # and fill the batches after fewer than p classes have chunks left
    sizes = np.unique(labels, return_counts=True)[1]
    chunks = np.ceil(sizes / m).astype(int)
    assert len(s) == max(chunks.max(), math.ceil(chunks.sum() / p))
    # a class appears at most once per batch, so each of its chunks needs a batch of its own
    batches_with = np.array([sum(bool((labels[b] == c).any()) for b in map(np.asarray, batches)) for c in np.unique(labels)])
    assert (batches_with >= chunks).all()
    assert all(len(np.unique(labels[np.asarray(b)])) == p for b in batches)   # p classes in every batch
    assert s.batches(epoch) == batches  # deterministic under a seed


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 6), k=st.integers(1, 5), m=st.integers(1, 5), q=st.integers(1, 3))
def test_exactly_once_when_balanced(c, k, m, q):
    "Every class has k chunks of m and p divides the number of classes: each sample exactly once."
    p = c
    labels = np.repeat(np.arange(c * q), k * m)
    s = ClassBalancedSampler(labels, m=m, p=p, seed=0)
    assert (_check(s, s.batches(0)) == 1).all()


def test_epochs_differ_and_iteration_advances():
    labels = np.repeat(np.arange(5), 12)
    s = ClassBalancedSampler(labels, m=3, p=2, seed=7)
    e0, e1 = s.batches(0), s.batches(1)
    assert e0 != e1
    assert list(s) == e0 and list(s) == e1
    s.set_epoch(0); assert list(s) == e0
    assert ClassBalancedSampler(labels, m=3, p=2, seed=8).batches(0) != e0


def test_with_dataloader():
    from structloss.data import ArrayDataset
    labels = np.repeat(np.arange(4), 10)
    ds = ArrayDataset(torch.arange(40.)[:, None], labels)
    s = ClassBalancedSampler(ds.targets, m=5, p=2, seed=0)
    ys = [y for _, y in torch.utils.data.DataLoader(ds, batch_sampler=s)]
    assert len(ys) == len(s) and all(len(y) == 10 and len(y.unique()) == 2 for y in ys)


def test_errors():
    with pytest.raises(ValueError, match="lower `p` to at most 2"): ClassBalancedSampler([0, 0, 1], m=1, p=3)
    with pytest.raises(ValueError, match=">= 1"): ClassBalancedSampler([0, 1], m=0, p=1)
