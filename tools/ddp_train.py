"""Train a small model on digits across processes: DDP, a global-batch loss, a sharded sampler.

    torchrun --nproc_per_node 2 tools/ddp_train.py --epochs 5       # gloo on CPU, nccl on GPUs
    python tools/ddp_train.py --epochs 5                            # one process, for comparison

Each rank draws p/R classes of every global class-balanced batch (`ShardedClassBalancedSampler`,
mode "split"), so the R ranks together see exactly the batches one process would. The SupCon
term sees the global batch (`GlobalBatchLoss`); the cross-entropy term is each rank's mean (equal
shards, so DDP's mean of the rank means is the global mean). Rank 0 prints loss and test accuracy.
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path
import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))    # run from a checkout as it is
from structloss.contrastive import SupConLoss                        # noqa: E402
from structloss.data import digits_splits                            # noqa: E402
from structloss.distributed import (GlobalBatchLoss, ShardedClassBalancedSampler,  # noqa: E402
                                    rank_and_world_size)
from structloss.models import build_model                            # noqa: E402
from structloss.train import embed                                   # noqa: E402


def train(epochs: int = 5, m: int = 4, p: int = 10, lr: float = 3e-3, seed: int = 0,
          supcon_weight: float = 1.0, verbose: bool = True) -> dict:
    "Train on this process's shard; the per-epoch history and how far the ranks' parameters differ."
    rank, R = rank_and_world_size()
    use_cuda = torch.cuda.is_available() and (R == 1 or dist.get_backend() == "nccl")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}" if use_cuda else "cpu")
    torch.manual_seed(seed)                  # the same initial weights everywhere
    data = digits_splits(seed=0)
    model = build_model("mlp", data.input_shape, data.num_classes, embedding_dim=32).to(device)
    net = torch.nn.parallel.DistributedDataParallel(model) if R > 1 else model
    supcon = GlobalBatchLoss(SupConLoss(temperature=0.1))
    sampler = ShardedClassBalancedSampler(data.train.targets, m=m, p=p, seed=seed, mode="split")
    loader = torch.utils.data.DataLoader(data.train, batch_sampler=sampler)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch); net.train(); t0, total, steps = time.perf_counter(), 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits, z = net(x)
            loss = F.cross_entropy(logits, y) + supcon_weight * supcon(z, y)
            opt.zero_grad(); loss.backward(); opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        logits, _, labels = embed(model, data.test, device)
        acc = float((logits.argmax(1) == labels).float().mean())
        history.append({"epoch": epoch, "loss": total / steps, "test_acc": acc, "steps": steps,
                        "time_s": time.perf_counter() - t0})
        if verbose and rank == 0:
            print(f"epoch {epoch}: loss {total / steps:.4f}  test accuracy {acc:.4f}  "
                  f"({steps} steps "
                  f"of {len(y)} samples per rank x {R} ranks, {history[-1]['time_s']:.1f} s)")
    flat = torch.cat([q.detach().flatten() for q in model.parameters()])
    spread = 0.0
    if R > 1:                                       # parameters must be identical on every rank
        lo, hi = flat.clone(), flat.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN); dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        spread = float((hi - lo).abs().max())
    return {"history": history, "param_spread": spread, "world_size": R,
            "chance": 1 / data.num_classes}


def _worker(rank: int, world_size: int, kwargs: dict) -> dict:
    "Entry point for `structloss.distributed.run_on_ranks` (tests, the chapter)."
    return train(**kwargs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--m", type=int, default=4, help="samples per class in a batch")
    ap.add_argument("--p", type=int, default=10,
                    help="classes per global batch (a multiple of the world size)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    distributed = "RANK" in os.environ                                # set by torchrun
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl": torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend)
    try:
        out = train(args.epochs, args.m, args.p, args.lr, args.seed)
        if rank_and_world_size()[0] == 0: print(f"parameter spread across ranks: {out['param_spread']:.3g}")
    finally:
        if distributed: dist.destroy_process_group()


if __name__ == "__main__":
    main()
