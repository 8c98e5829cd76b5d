"Two gloo processes on the CPU reproduce one process on the whole batch: values and gradients."
from functools import partial
import numpy as np
import pytest
import torch
from structloss.distributed import (ClassSumMagnetLoss, ClassSumSoftSilhouetteLoss, GlobalBatchLoss,
                                    ShardedClassBalancedSampler, global_batch_worker,
                                    global_silhouette_score, run_on_ranks,
                                    single_process_reference, rank_and_world_size)
from structloss.greediness import find_losses
from structloss.magnet import MagnetLoss
from structloss.metrics import silhouette_score
from structloss.silhouette import SoftSilhouetteLoss

R = 2
NEEDS_CLASSES = {"ProxyNCALoss", "CenterLoss", "ArcFaceLoss", "CenterContrastiveLoss"}

def make_loss(name, num_classes=3, d=3):
    cls = find_losses(verbose=False)[name]
    if name in NEEDS_CLASSES: return cls(num_classes=num_classes, embedding_size=d, seed=0)
    return cls()

def batches():
    "Two splits of one 14-sample batch: uneven sizes; and rank 0 holding a single class."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(14, 5, generator=g, dtype=torch.float64)
    uneven = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    one_class = torch.tensor([0, 0, 0, 0, 1, 2, 1, 2, 1, 2, 1, 2, 0, 1])
    return {"uneven 9+5": (x, uneven, [9, 5]), "rank 0 one class 4+10": (x, one_class, [4, 10])}

CASES = []  # (id, loss, x, labels, sizes, views, wrapper)
for name in sorted(find_losses(verbose=False)):
    for split, (x, y, sizes) in batches().items():
        CASES.append((f"{name}, {split}", make_loss(name), x, y, sizes, 1, GlobalBatchLoss))
x, y, sizes = batches()["uneven 9+5"]
CASES.append(("SupConLoss two views", make_loss("SupConLoss"), x, y, sizes, 2, GlobalBatchLoss))
SILHOUETTE_OPTIONS = [{}, {"soft_min": "logsumexp", "singletons": "zero"},
                      {"loss_form": "negative_mean", "reduction": "sum"},
                      {"temperature_scale": "relative", "softmin_temperature": 0.3}]
for metric in ("cosine", "sqeuclidean"):
    for split, (x, y, sizes) in batches().items():
        for options in SILHOUETTE_OPTIONS:
            CASES.append((f"ClassSumSoftSilhouette {metric} {options}, {split}",
                          SoftSilhouetteLoss(metric=metric, num_classes=3, **options),
                          x, y, sizes, 1, ClassSumSoftSilhouetteLoss))

for split, (x, y, sizes) in batches().items():
    for alpha in (0.0, 1.0):
        CASES.append((f"ClassSumMagnet alpha={alpha}, {split}", MagnetLoss(alpha=alpha), x, y,
                      sizes, 1, partial(ClassSumMagnetLoss, num_classes=3)))

class _NetWithLoss(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.net, self.loss = torch.nn.Linear(5, 3).double(), loss.double()
    def forward(self, x, y): return self.loss(self.net(x), y)

def _proxy_steps(rank, steps=3):
    "Per-rank proxy losses on different data under DDP: their parameters after SGD steps."
    from torch.nn.parallel import DistributedDataParallel as DDP
    out = {}
    for name in sorted(NEEDS_CLASSES):
        for inside in (True, False):   # the loss computed in DDP's forward, or outside it
            model = _NetWithLoss(make_loss(name))
            ddp = DDP(model)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
            g = torch.Generator().manual_seed(100 + rank)      # every rank sees different samples
            for _ in range(steps):
                x = torch.randn(6, 5, generator=g, dtype=torch.float64)
                y = torch.randint(0, 3, (6,), generator=g)
                opt.zero_grad()
                (ddp(x, y) if inside else model.loss(model.net(x), y)).backward()
                opt.step()
            out[name, inside] = [q.detach().clone() for q in model.loss.parameters()]
    return out

def _cases_worker(rank, world_size, cases):
    "Every case on this rank, class-sum silhouette scores, proxies after DDP steps."
    out = [global_batch_worker(rank, world_size, loss, x, y, sizes, views=views, wrapper=wrapper)
           for _, loss, x, y, sizes, views, wrapper in cases]
    scores = {}
    for split, (x, y, sizes) in batches().items():
        start = sum(sizes[:rank]); rows = slice(start, start + sizes[rank])
        for metric in ("cosine", "sqeuclidean"):
            scores[split, metric] = float(global_silhouette_score(x[rows], y[rows], 3, metric))
    return out, scores, _proxy_steps(rank)

@pytest.fixture(scope="module")
def ranks():
    return run_on_ranks(_cases_worker, R, (CASES,))

@pytest.mark.parametrize("i", range(len(CASES)), ids=[c[0] for c in CASES])
def test_equal_to_one_process(ranks, i):
    _, loss, x, y, sizes, views, wrapper = CASES[i]
    ref = single_process_reference(loss, x, y, views=views)
    start = 0
    for rank in range(R):
        got = ranks[rank][0][i]
        rows = slice(start, start + sizes[rank]); start += sizes[rank]
        torch.testing.assert_close(got["value"], ref["value"], rtol=1e-10, atol=1e-12)
        # the convention: a rank's embedding gradient is R x its rows of the one-process one...
        torch.testing.assert_close(got["grad_z"], R * ref["grad_z"][rows], rtol=1e-9, atol=1e-12)
        # ... so DDP's mean over ranks gives the one-process parameter gradient (proxies too)
        assert len(got["grads"]) == len(ref["grads"])        # same parameters, in the same order
        for (k, g), g_ref in zip(got["grads"].items(), ref["grads"].values()):
            torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12, msg=f"{k}: {CASES[i][0]}")

def test_cases_cover_every_loss():
    assert {c[1].__class__.__name__ for c in CASES} >= set(find_losses(verbose=False))
    grads = [single_process_reference(c[1], *c[2:4])["grad_z"] for c in CASES[:4]]
    assert all(float(g.abs().sum()) > 0 for g in grads)      # the checks compare nonzero gradients

def test_silhouette_score_from_class_sums(ranks):
    for (split, metric), expected in [(k, v) for k, v in ranks[0][1].items()]:
        x, y, _ = batches()[split]
        assert ranks[1][1][split, metric] == pytest.approx(expected, abs=1e-12)
        assert expected == pytest.approx(float(silhouette_score(x, y, metric)), abs=1e-10)

def test_one_process_fallbacks():
    "Without a process group every wrapper is the plain loss."
    assert rank_and_world_size() == (0, 1)
    x, y, _ = batches()["uneven 9+5"]
    base = SoftSilhouetteLoss(num_classes=3)
    torch.testing.assert_close(GlobalBatchLoss(base)(x, y), base(x, y))
    for options in SILHOUETTE_OPTIONS:
        base = SoftSilhouetteLoss(num_classes=3, **options)
        torch.testing.assert_close(ClassSumSoftSilhouetteLoss(base)(x, y), base(x, y))
    torch.testing.assert_close(global_silhouette_score(x, y, 3), silhouette_score(x, y))

def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        ClassSumSoftSilhouetteLoss(SoftSilhouetteLoss())
    with pytest.raises(ValueError, match="sqeuclidean"):
        ClassSumSoftSilhouetteLoss(SoftSilhouetteLoss(metric="euclidean", num_classes=3))
    with pytest.raises(TypeError, match="SoftSilhouetteLoss"):
        ClassSumSoftSilhouetteLoss(torch.nn.MSELoss())
    with pytest.raises(ValueError, match="reduction='mean' or 'sum'"):
        ClassSumSoftSilhouetteLoss(SoftSilhouetteLoss(num_classes=3, reduction="none"))
    with pytest.raises(ValueError, match="multiple of 2"):
        ShardedClassBalancedSampler(np.repeat(np.arange(6), 5), m=2, p=3, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="rank"):
        ShardedClassBalancedSampler(np.repeat(np.arange(6), 5), m=2, p=2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="mode"):
        ShardedClassBalancedSampler(np.repeat(np.arange(6), 5), mode="random", num_replicas=1,
                                    rank=0)

@pytest.mark.parametrize("mode, drop_last",
                         [("split", True), ("interleave", True), ("interleave", False)])
@pytest.mark.parametrize("R_", [2, 3])
def test_sharded_sampler(mode, drop_last, R_):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), rng.integers(3, 15, 6))
    p = 6 if mode == "split" else 3
    shards = [ShardedClassBalancedSampler(labels, m=2, p=p, seed=1, num_replicas=R_, rank=r,
                                          mode=mode, drop_last=drop_last) for r in range(R_)]
    base = shards[0].base.batches(4)
    per_rank = [s.batches(4) for s in shards]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(shards[0])  # equal
    if mode == "split":   # the global batch t of the R ranks is exactly the one-process batch t
        for t, b in enumerate(base):
            assert sum((pr[t] for pr in per_rank), []) == b
            assert all(len(np.unique(labels[pr[t]])) == p // R_ for pr in per_rank)
        used = sum((b for pr in per_rank for b in pr), [])
        assert sorted(used) == sorted(sum(base, []))    # no repeats beyond the base sampler's fill
    else:   # ranks take disjoint batch positions; drop_last loses fewer than R batches
        taken = sum(per_rank, [])
        if drop_last:
            assert len(base) - len(taken) < R_
            assert sorted(map(tuple, taken)) == sorted(map(tuple, base[:len(taken)]))
        else:
            assert len(taken) - len(base) < R_ and all(b in taken for b in base)
    s = shards[-1]; s.set_epoch(4)
    assert list(s) == per_rank[-1] and list(s) == s.batches(5)   # iterating advances the epoch

def test_ddp_training_learns_and_matches_one_process():
    """`train` under DDP (tools/ddp_train.py, 2 gloo ranks, CE + SupCon + ProxyNCA): it learns
    (validation accuracy > 0.7, 7 times chance), the ranks' weights and proxies stay identical, the
    proxies move, and the run is the one-process run on the same global batches."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import ddp_train
    kw = {"epochs": 2, "proxies": True}
    out = run_on_ranks(ddp_train._worker, R, (kw,))
    one = ddp_train.run(**kw)
    for o in out:
        h = o["history"]
        assert o["world_size"] == R and o["param_spread"] == 0.0
        assert min(o["proxies_moved"]) > 1e-3                   # the proxies were trained
        assert h[-1]["train_total"] < h[0]["train_total"]
        assert h[-1]["val_acc"] > 0.7 > 6 * o["chance"]
        assert len(h) == len(one["history"])
        for a, b in zip(h, one["history"]):                      # same batches, same steps
            for k in ("train_ce", "train_supcon", "train_proxy_nca", "train_total"):
                assert a[k] == pytest.approx(b[k], rel=1e-4), k
            assert a["val_acc"] == pytest.approx(b["val_acc"], abs=0.01)
        torch.testing.assert_close(o["params"], one["params"], rtol=1e-3, atol=1e-3)
    untimed = [[{k: v for k, v in r.items() if k != "time_s"} for r in o["history"]] for o in out]
    assert untimed[0] == untimed[1]                              # every rank logs the same

def test_proxies_stay_in_sync_under_ddp(ranks):
    "Proxies computed in DDP's forward: identical on both ranks after steps on different data."
    for name in sorted(NEEDS_CLASSES):
        p0, p1 = ranks[0][2][name, True], ranks[1][2][name, True]
        init = list(make_loss(name).double().parameters())
        assert len(p0) == len(init) >= 1
        for a, b, c in zip(p0, p1, init):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            assert not torch.allclose(a, c), f"{name}: parameters did not move"

def test_proxies_outside_ddp_forward_drift(ranks):
    "The pitfall: a loss called outside the DDP module's forward gets no gradient averaging."
    for name in sorted(NEEDS_CLASSES):
        p0, p1 = ranks[0][2][name, False], ranks[1][2][name, False]
        assert any(not torch.allclose(a, b) for a, b in zip(p0, p1)), name
