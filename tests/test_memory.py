"""CrossBatchMemory: the queue and the reference set of pytorch-metric-learning's CrossBatchMemory,
values and gradients (float64), through several batches that wrap around the queue."""
import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from structloss.core import EmbeddingLoss
from structloss.memory import CrossBatchMemory

D = 5


class PMLContrastiveWithReference(EmbeddingLoss):
    "PML's ContrastiveLoss behind structloss's reference-set interface (pairs (i, i) skipped)."
    supports_reference = True

    def __init__(self):
        super().__init__()
        self.pml = pml_losses.ContrastiveLoss()

    def compute(self, z, y, ref_emb=None, ref_labels=None, self_in_ref=False):
        if ref_emb is None: ref_emb, ref_labels, self_in_ref = z, y, True
        a1, p, a2, n = lmu.get_all_pairs_indices(y, ref_labels)
        if self_in_ref:
            keep = a1 != p
            a1, p = a1[keep], p[keep]
        return self.pml(z, y, (a1, p, a2, n), ref_emb, ref_labels)

    def active_terms(self, z, y, ref_emb=None, ref_labels=None, self_in_ref=False):
        terms = torch.ones(len(z), len(ref_emb), dtype=torch.bool)
        return terms, terms


def batches(sizes=(6, 8, 7, 8, 5, 8), seed=0, C=4):
    g = torch.Generator().manual_seed(seed)
    for n in sizes:
        yield torch.randn(n, D, generator=g, dtype=torch.float64), torch.randint(0, C, (n,),
                                                                                  generator=g)


def compare(ours, theirs, sizes=(6, 8, 7, 8, 5, 8)):
    for x, y in batches(sizes):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        va, vb = ours(a, y), theirs(b, y)
        va.backward(); vb.backward()
        torch.testing.assert_close(va, vb, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)
        assert a.grad.abs().sum() > 0


@pytest.mark.parametrize("memory_size", [8, 13, 64])
def test_queue_and_reference_equal_pml(memory_size):
    ours = CrossBatchMemory(PMLContrastiveWithReference(), D, memory_size)
    theirs = pml_losses.CrossBatchMemory(pml_losses.ContrastiveLoss(), D, memory_size)
    compare(ours, theirs)
    assert ours.filled == min(sum((6, 8, 7, 8, 5, 8)), memory_size)


def test_contrastive_loss_against_pml():
    "structloss's ContrastiveLoss (PML's defaults) in a memory: PML's CrossBatchMemory."
    from structloss.pairs import ContrastiveLoss
    if not ContrastiveLoss.supports_reference:
        pytest.skip("ContrastiveLoss takes no reference set in this version")
    ours = CrossBatchMemory(ContrastiveLoss(), D, 13)
    theirs = pml_losses.CrossBatchMemory(pml_losses.ContrastiveLoss(), D, 13)
    compare(ours, theirs)


def test_empty_memory_of_one_batch_and_state():
    "A memory that holds only the batch, with the batch's rows carrying gradient, is the plain loss."
    loss = PMLContrastiveWithReference()
    mem = CrossBatchMemory(loss, D, 8, detach_batch=False)
    for x, y in batches((8, 8)):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        va, vb = mem(a, y), loss(b, y)
        va.backward(); vb.backward()
        torch.testing.assert_close(va, vb); torch.testing.assert_close(a.grad, b.grad)
    state = mem.state_dict()
    fresh = CrossBatchMemory(PMLContrastiveWithReference(), D, 8)
    fresh.load_state_dict(state)
    assert (fresh.position, fresh.filled) == (mem.position, mem.filled) == (0, 8)
    torch.testing.assert_close(fresh.embedding_memory.double(), mem.embedding_memory)


def test_active_ratio_leaves_the_memory_alone_and_errors():
    from structloss.silhouette import SoftSilhouetteLoss
    mem = CrossBatchMemory(PMLContrastiveWithReference(), D, 16, track_active=True)
    x, y = next(batches((6,)))
    mem(x, y)
    before = (mem.position, mem.filled, mem.embedding_memory.clone())
    assert 0 <= float(mem.active_ratio(x, y)) <= 1 and "active" in mem.extra_logs()
    assert (mem.position, mem.filled) == before[:2]
    torch.testing.assert_close(mem.embedding_memory, before[2])
    with pytest.raises(ValueError, match="does not fit"):
        mem(torch.randn(17, D), torch.zeros(17, dtype=torch.long))
    with pytest.raises(ValueError, match="embedding_size"):
        mem(torch.randn(4, D + 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="memory_size"):
        CrossBatchMemory(PMLContrastiveWithReference(), D, -1)
    if not SoftSilhouetteLoss.supports_reference:
        with pytest.raises(TypeError, match="reference set"):
            CrossBatchMemory(SoftSilhouetteLoss(), D)
    with pytest.raises(TypeError, match="reference set"):
        CrossBatchMemory(torch.nn.MSELoss(), D)
