"""Train a small model on digits across processes with `structloss.train.train` under DDP
(`structloss.distributed.train_digits`, chapter 41, is the training; this is its command line).

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
from structloss.distributed import rank_and_world_size, train_digits  # noqa: E402


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
        out = train_digits(args.epochs, args.m, args.p, args.lr, args.seed, args.proxies,
                           args.out_dir)
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
