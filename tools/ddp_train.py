"""Train a small model on digits across processes with `structloss.train.train` under DDP.

    torchrun --nproc_per_node 2 tools/ddp_train.py --epochs 5       # gloo on CPU, nccl on GPUs
    python tools/ddp_train.py --epochs 5                            # one process, for comparison

`train` sees the initialised process group and wraps the model and the objective in one
DistributedDataParallel module; the objective (cross-entropy + SupCon, and with `--proxies` a
ProxyNCA term whose proxies are parameters) sees the global batch, gathered from every rank; each
rank draws p/R classes of every class-balanced batch (`ShardedClassBalancedSampler`, mode
"split"), so the R ranks together see exactly the batches of one process. Rank 0 validates,
prints, and writes the history.
"""
from __future__ import annotations
import argparse, os, sys
from pathlib import Path
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))    # run from a checkout as it is
from structloss.contrastive import SupConLoss                        # noqa: E402
from structloss.data import digits_splits                            # noqa: E402
from structloss.distributed import rank_and_world_size               # noqa: E402
from structloss.models import build_model                            # noqa: E402
from structloss.objectives import Objective                          # noqa: E402
from structloss.proxies import ProxyNCALoss                          # noqa: E402
from structloss.train import TrainConfig, embed, topk_accuracy, train  # noqa: E402


def run(epochs: int = 5, m: int = 4, p: int = 10, lr: float = 3e-3, seed: int = 0,
        proxies: bool = False, out_dir: str | None = None) -> dict:
    "Train on this process's shard; history, test accuracy, and how far the ranks' weights differ."
    rank, R = rank_and_world_size()
    data = digits_splits(seed=0)
    torch.manual_seed(seed)                  # DDP starts every rank from rank 0's weights anyway
    model = build_model("mlp", data.input_shape, data.num_classes, embedding_dim=32)
    terms = {"supcon": (SupConLoss(temperature=0.1), 1.0)}
    if proxies:
        terms["proxy_nca"] = (ProxyNCALoss(data.num_classes, 32, softmax_scale=8, seed=0), 1.0)
    objective = Objective(terms)
    init = [q.detach().clone() for q in objective.parameters()]
    cfg = TrainConfig(epochs=epochs, sampler={"m": m, "p": p}, lr=lr, scheduler=None,
                      progress=False, restore_best=False)
    res = train(model, objective, data, cfg, seed=seed, out_dir=out_dir)
    logits, _, labels = embed(model, data.test)
    flat = torch.cat([q.detach().flatten() for q in list(model.parameters())
                      + list(objective.parameters())])
    spread = 0.0
    if R > 1:                                       # parameters must be identical on every rank
        lo, hi = flat.clone(), flat.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN); dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        spread = float((hi - lo).abs().max())
    moved = [float((q.detach() - q0).abs().max()) for q, q0 in zip(objective.parameters(), init)]
    return {"history": res.history, "test_acc": topk_accuracy(logits, labels),
            "param_spread": spread, "params": flat, "proxies_moved": moved, "world_size": R,
            "chance": 1 / data.num_classes}


def _worker(rank: int, world_size: int, kwargs: dict) -> dict:
    "Entry point for `structloss.distributed.run_on_ranks` (tests, the chapter)."
    return run(**kwargs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--m", type=int, default=4, help="samples per class in a batch")
    ap.add_argument("--p", type=int, default=10,
                    help="classes per global batch (a multiple of the world size)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--proxies", action="store_true", help="add a ProxyNCA term")
    ap.add_argument("--out-dir", default=None, help="checkpoint and history (rank 0)")
    args = ap.parse_args(argv)
    distributed = "RANK" in os.environ                                # set by torchrun
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl": torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend)
    try:
        out = run(args.epochs, args.m, args.p, args.lr, args.seed, args.proxies, args.out_dir)
        if rank_and_world_size()[0] == 0:
            for r in out["history"]:
                print(f"epoch {r['epoch']}: loss {r['train_total']:.4f}  "
                      f"validation accuracy {r['val_acc']:.4f}  ({r['time_s']:.1f} s)")
            print(f"test accuracy {out['test_acc']:.4f} on {out['world_size']} rank(s); "
                  f"parameter spread across ranks: {out['param_spread']:.3g}")
    finally:
        if distributed: dist.destroy_process_group()


if __name__ == "__main__":
    main()
