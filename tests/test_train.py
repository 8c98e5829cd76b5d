"""structloss.train: the loop learns, resumes exactly, stops early, logs every term; evaluation; clear errors."""
import json, os
import numpy as np
import pytest
import torch
from structloss.core import seed_everything
from structloss.data import digits_splits, ArrayDataset, DataSplits
from structloss.models import build_model
from structloss.objectives import Objective, cross_entropy, loss_only
from structloss.train import TrainConfig, train, evaluate, embed, topk_accuracy, knn_accuracy, save_history


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see conftest.py


@pytest.fixture(scope="module")
def data():
    return digits_splits(seed=0)


def tiny(data, seed=0, classifier=True):
    seed_everything(seed)
    return build_model("digits_cnn", data.input_shape, data.num_classes if classifier else None, embedding_dim=16,
                       encoder_kwargs={"width": 8})


# on the CPU: exact resumption needs deterministic kernels (a GPU's are not; test_device.py: GPU paths)
CFG = dict(batch_size=64, lr=3e-3, progress=False, device="cpu")


def test_a_tiny_run_learns(data, tmp_path):
    res = train(tiny(data), cross_entropy(), data, TrainConfig(epochs=3, **CFG), seed=0, out_dir=str(tmp_path))
    accs = [r["val_acc"] for r in res.history]
    assert accs[-1] > 0.5  # far above chance (0.1 for 10 classes)
    assert res.history[-1]["train_ce"] < res.history[0]["train_ce"]
    assert {"epoch", "train_ce", "train_total", "train_acc", "val_acc", "lr", "time_s"} <= set(res.history[0])
    saved = json.load(open(tmp_path / "history.json"))
    assert saved == json.loads(json.dumps(res.history))
    header = open(tmp_path / "history.csv").readline().strip().split(",")
    assert "train_ce" in header and "val_acc" in header


def test_resume_is_exact(data, tmp_path):
    cfg = TrainConfig(epochs=4, **CFG)
    full = train(tiny(data, 1), cross_entropy(), data, cfg, seed=1)
    def interrupt(record, model):
        if record["epoch"] == 1: raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(tiny(data, 1), cross_entropy(), data, cfg, seed=1, out_dir=str(tmp_path), callbacks=[interrupt])
    assert len(json.load(open(tmp_path / "history.json"))) == 2
    resumed = train(tiny(data, 1), cross_entropy(), data, cfg, seed=1, out_dir=str(tmp_path), resume=True)
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
    for a, b in zip(full.history, resumed.history):
        assert a["train_ce"] == pytest.approx(b["train_ce"], abs=1e-6) and a["val_acc"] == b["val_acc"]
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q)
    # resuming a finished run trains nothing more
    again = train(tiny(data, 1), cross_entropy(), data, cfg, seed=1, out_dir=str(tmp_path), resume=True)
    assert len(again.history) == 4


def test_early_stopping_and_best_weights(data):
    cfg = TrainConfig(epochs=8, patience=2, scheduler=None, **{**CFG, "lr": 1e-12})  # nothing improves
    res = train(tiny(data), cross_entropy(), data, cfg, seed=0)
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 0
    res2 = train(tiny(data), cross_entropy(), data, TrainConfig(epochs=3, **CFG), seed=0)
    logits, _, y = embed(res2.model, data.val)
    assert topk_accuracy(logits, y) == pytest.approx(res2.best_val_acc)  # best weights restored
    assert not res2.stopped_early


class Recording(Objective):
    def __init__(self):
        super().__init__(); self.calls = []
    def set_epoch(self, epoch, num_epochs):
        self.calls.append((epoch, num_epochs)); super().set_epoch(epoch, num_epochs)


def test_schedules_called_and_every_term_logged(data):
    from structloss.contrastive import SupConLoss
    obj = Recording()
    train(tiny(data), obj, data, TrainConfig(epochs=2, **CFG), seed=0)
    assert obj.calls == [(0, 2), (1, 2)]
    sched = Objective({"supcon": (SupConLoss(), lambda e, n: e / n)})
    res = train(tiny(data), sched, data, TrainConfig(epochs=2, diagnostics=True, **CFG), seed=0)
    h = res.history
    assert {"train_supcon", "train_ce", "train_total", "val_silhouette", "val_intra_var", "val_inter_dist"} <= set(h[1])
    assert h[0]["train_total"] == pytest.approx(h[0]["train_ce"], rel=1e-6)  # weight 0 at epoch 0
    assert h[1]["train_total"] == pytest.approx(h[1]["train_ce"] + 0.5 * h[1]["train_supcon"], rel=1e-5)


def test_two_views_and_class_balanced_batches():
    from structloss.contrastive import SupConLoss
    d = digits_splits(seed=0, augment=True)
    obj = Objective({"supcon": (SupConLoss(), 1.0)}, views=2)
    cfg = TrainConfig(epochs=1, views=2, sampler={"m": 4, "p": 5}, **CFG)
    res = train(tiny(d), obj, d, cfg, seed=0)
    assert res.history[0]["train_supcon"] > 0 and 0 <= res.history[0]["train_acc"] <= 1


def test_model_without_classifier_uses_knn(data):
    from structloss.contrastive import SupConLoss
    res = train(tiny(data, classifier=False), loss_only(SupConLoss()), data,
                TrainConfig(epochs=1, sampler={"m": 4, "p": 8}, **CFG), seed=0)
    assert "train_acc" not in res.history[0] and 0.1 < res.history[0]["val_acc"] <= 1
    m = evaluate(res.model, data)
    assert "top1" not in m and 0 <= m["knn1"] <= 1


def test_evaluate_keys_and_references(data):
    res = train(tiny(data), cross_entropy(), data, TrainConfig(epochs=1, **CFG), seed=0)
    m = evaluate(res.model, data, recall_k=(1, 4))
    assert set(m) == {"top1", "top5", "knn1", "knn10", "svc", "recall@1", "recall@4", "silhouette"}
    assert m["top5"] >= m["top1"] and m["recall@4"] >= m["recall@1"] and -1 <= m["silhouette"] <= 1
    # references: perfectly separated embeddings
    z = torch.eye(3).repeat_interleave(4, 0); y = torch.arange(3).repeat_interleave(4)
    assert knn_accuracy(z, y, z + 0.01, y, k=3) == 1.0
    assert topk_accuracy(torch.tensor([[0., 1., 2.], [2., 1., 0.]]), torch.tensor([1, 1]), k=2) == 1.0
    with pytest.raises(ValueError, match="`split`"): evaluate(res.model, data, split="train")


class NaNObjective(Objective):
    def forward(self, logits, embeddings, labels):
        total, logs = super().forward(logits, embeddings, labels)
        return total * float("nan"), {**logs, "total": total.detach() * float("nan")}


def test_clear_errors(data):
    with pytest.raises(ValueError, match="`epochs` must be"): TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="`scheduler` must be"): TrainConfig(scheduler="step")
    with pytest.raises(ValueError, match="`amp`"): TrainConfig(amp="yes")
    with pytest.raises(ValueError, match="unknown option"): TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(TypeError, match="set_epoch"):
        train(tiny(data), torch.nn.CrossEntropyLoss(), data, TrainConfig(epochs=1, **CFG))
    with pytest.raises(ValueError, match="augment=True"):
        train(tiny(data), cross_entropy(), data, TrainConfig(epochs=1, views=2, **CFG))
    with pytest.raises(ValueError, match="lower `p`"):
        train(tiny(data), cross_entropy(), data, TrainConfig(epochs=1, sampler={"m": 2, "p": 11}, **CFG))
    with pytest.raises(FloatingPointError, match="lower `lr`"):
        train(tiny(data), NaNObjective(), data, TrainConfig(epochs=1, **CFG))


def test_save_history_mixed_keys(tmp_path):
    save_history([{"epoch": 0, "a": 1.0}, {"epoch": 1, "a": 2.0, "b": 3.0}], str(tmp_path))
    assert open(tmp_path / "history.csv").read().splitlines()[0] == "epoch,a,b"


def test_mixed_precision_runs_and_learns(data):
    "amp=True on the CPU uses bfloat16 autocast; the objective still computes in float32."
    res = train(tiny(data), cross_entropy(), data, TrainConfig(epochs=2, amp=True, **CFG), seed=0)
    assert res.history[-1]["val_acc"] > 0.3 and np.isfinite(res.history[-1]["train_ce"])


@pytest.mark.parametrize("structure", [None, "SoftSilhouetteLoss", "SupConLoss"])
def test_float16_with_loss_scaling_learns(data, tmp_path, structure):
    """The T4's path, run on the CPU: float16 autocast with a GradScaler (amp_dtype="float16"),
    CE alone and with a structure loss on the float16 embeddings."""
    from types import SimpleNamespace
    from structloss.experiments import build_objective
    terms = {} if structure is None else {"s": {"loss": structure, "weight": 1.0}}
    objective = build_objective({"terms": terms}, SimpleNamespace(num_classes=10), 16)
    runs = {}
    for amp in (False, True):
        cfg = TrainConfig(epochs=3, amp=amp, amp_dtype="float16", **CFG)
        runs[amp] = train(tiny(data), objective, data, cfg, seed=0,
                          out_dir=str(tmp_path / str(amp))).history[-1]
    last = runs[True]
    assert all(np.isfinite(v) for v in last.values() if isinstance(v, float)), last
    # learns, and about as well as in float32 (same seed, same batches)
    assert last["val_acc"] > 0.3 and abs(last["val_acc"] - runs[False]["val_acc"]) < 0.1
    scaler = torch.load(tmp_path / "True" / "checkpoint.pt", weights_only=False)["scaler"]
    assert scaler and scaler["scale"] > 0                  # loss scaling was on
    bf16 = TrainConfig(epochs=1, amp=True, **CFG)   # "auto" on the CPU: bfloat16, unscaled
    train(tiny(data), cross_entropy(), data, bf16, seed=0, out_dir=str(tmp_path / "b"))
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["scaler"] == {}


def test_plateau_scheduler_divides_the_rate_on_a_validation_plateau(data):
    class Flat(torch.nn.Module):   # constant logits: the validation accuracy never improves
        def __init__(self): super().__init__(); self.b = torch.nn.Parameter(torch.zeros(10))
        def forward(self, x): z = torch.zeros(len(x), 10, device=x.device) + 0 * self.b; return z, z
    cfg = TrainConfig(epochs=7, scheduler="plateau", plateau_factor=0.2, plateau_patience=2, **{**CFG, "lr": 1.0})
    res = train(Flat(), cross_entropy(), data, cfg)
    assert [round(r["lr"], 6) for r in res.history] == [1.0, 1.0, 1.0, 1.0, 0.2, 0.2, 0.2]
    learning = train(tiny(data), cross_entropy(), data, TrainConfig(epochs=3, scheduler="plateau", **CFG))
    assert all(r["lr"] == CFG["lr"] for r in learning.history)   # improving: no reduction
    with pytest.raises(ValueError, match="'cosine', 'plateau' or None"): TrainConfig(scheduler="step")
    with pytest.raises(ValueError, match="`plateau_factor` must lie in"): TrainConfig(plateau_factor=1.0)


def test_sharded_shuffled_batches_are_the_one_process_batches(data):
    "Under DDP each rank takes a contiguous share of the one-process batch (sizes differ by <= 1)."
    from structloss.train import _train_loader, _shard, shuffled_batches
    cfg = TrainConfig(batch_size=50, **{k: v for k, v in CFG.items() if k != "batch_size"})
    one = [y.tolist() for _, y in _train_loader(data.train, cfg, seed=3, epoch=2)]
    g = torch.Generator().manual_seed(3 * 100_003 + 2)
    batches = shuffled_batches(len(data.train), 50, g, drop_last=True)
    assert [data.train.targets[b].tolist() for b in batches] == one
    for R_ in (2, 3):
        shards = [[_shard(b, r, R_) for b in batches] for r in range(R_)]
        assert all(sum((s[t] for s in shards), []) == b for t, b in enumerate(batches))
        assert all(max(map(len, ts)) - min(map(len, ts)) <= 1 for ts in zip(*shards))
    with pytest.raises(ValueError, match="init_process_group"):
        train(tiny(data), cross_entropy(), data, TrainConfig(epochs=1, distributed=True, **CFG))
    with pytest.raises(ValueError, match="`distributed`"): TrainConfig(distributed="yes")


def test_resume_in_another_precision(data, tmp_path):
    "A checkpoint of a float32 run resumes under float16 loss scaling (a CPU run moved to a T4)."
    out = str(tmp_path)
    train(tiny(data), cross_entropy(), data, TrainConfig(epochs=1, **CFG), seed=0, out_dir=out)
    scaled = TrainConfig(epochs=2, amp=True, amp_dtype="float16", **CFG)
    res = train(tiny(data), cross_entropy(), data, scaled, seed=0, out_dir=out, resume=True)
    assert len(res.history) == 2 and np.isfinite(res.history[-1]["train_ce"])
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["scaler"]["scale"] > 0
