"""Variance & Greediness chapter: class-disjoint data, the frozen model, per-batch diagnostics, and
one experiment of the suite end to end (smoke profile)."""
from __future__ import annotations
import math
import pytest
import torch

from structloss.experiments import get_experiment, get_suite, run_experiment
from structloss.greediness import greediness_report
from structloss.train import TrainConfig, train
from structloss import variance_greediness_paper as vg

SMALL = dict(train_classes=6, test_classes=6, pretrain_classes=6, train_per_class=4,
             val_per_class=2, test_per_class=3, pretrain_per_class=4)


def test_splits_are_class_disjoint_and_deterministic():
    d1, d2 = vg.finegrained_splits(3, **SMALL), vg.finegrained_splits(3, **SMALL)
    assert torch.equal(d1.train.x, d2.train.x) and torch.equal(d1.test.x, d2.test.x)
    seen, unseen = set(d1.train.targets.tolist()), set(d1.test.targets.tolist())
    assert seen == set(range(6)) and unseen == set(range(6, 12))
    assert d1.num_classes == 6
    x_pre, y_pre = d1.info["pretrain"]
    assert len(x_pre) == 24 and int(y_pre.max()) < 12          # superclass labels
    with pytest.raises(ValueError, match="`val_per_class`"):
        vg.finegrained_splits(0, val_per_class=1)


@pytest.mark.parametrize("name", list(vg.VG_LOSSES))
def test_diagnosed_objective_matches_greediness_report(name, one_thread):
    cls, _, kw = vg.VG_LOSSES[name]
    kw = {**kw, "embedding_size": 8} if kw else {}
    objective = vg.diagnosed(cls, kw).double()
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(24, 8, generator=g, dtype=torch.float64), dim=1)
    y = torch.arange(6).repeat_interleave(4)
    total, logs = objective(None, z, y)
    ref = greediness_report(objective.losses["loss"], z, y)
    assert math.isclose(float(total.detach()), ref["loss"], rel_tol=1e-9, abs_tol=1e-12)
    pairs = (("active_ratio", "active_ratio"), ("grad_active_ratio", "grad_active_ratio"),
             ("grad_norm", "grad_norm_embeddings"), ("grad_norm_active", "grad_norm_active"))
    for ours, theirs in pairs:
        assert math.isclose(float(logs[ours]), ref[theirs], rel_tol=1e-9, abs_tol=1e-12), ours


def test_training_moves_the_head_only_and_logs_greediness(one_thread):
    data = vg.finegrained_splits(0, **SMALL)
    torch.manual_seed(0)
    model = vg.frozen_encoder_model(data, pretrain_epochs=1)
    enc = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = model.projection.weight.detach().clone()
    cfg = TrainConfig(epochs=2, sampler={"m": 2, "p": 3}, progress=False, diagnostics=True,
                      restore_best=False)
    res = train(model, vg.diagnosed("TripletMarginLoss"), data, cfg)
    for k, v in model.encoder.state_dict().items(): assert torch.equal(v, enc[k])
    assert not torch.equal(model.projection.weight, head)
    for key in ("train_loss", "train_active_ratio", "train_grad_norm_active", "val_intra_var"):
        assert all(math.isfinite(r[key]) for r in res.history), key
    scalars = vg.history_scalars(res.history)
    assert 0 <= scalars["active_ratio"] <= 1 and 1 <= scalars["settle_epoch"] <= 2
    m = vg.variance_metrics(res.model, data)
    assert 0 < m["intra_ratio"] < 1 and m["inter_min"] <= m["nearest_mean"] <= m["inter_mean"]


def test_suite_members_and_one_smoke_run(tmp_path, one_thread):
    assert get_suite("variance_greediness") == [f"vg_{k}" for k in vg.VG_LOSSES]
    exp = get_experiment("vg_supcon")
    res = run_experiment(exp, profile="smoke", seeds=(0,), out_dir=str(tmp_path), progress=False,
                         figures=False, verbose=False)
    m = res.metrics[0]
    assert {"recall@1", "intra_var", "nearest_mean", "inter_cv", "map@r"} <= set(m)
    assert "train_active_ratio" in res.histories[0][0]


def test_verdict_rule():
    assert vg.clear_sign([1.0, 1.2, 1.1], [0.0, 0.1, 0.2]) == 1
    assert vg.clear_sign([1.0, 3.0, -1.0], [0.0, 0.1, 0.2]) == 0
    assert vg.claim_verdict([1, 1, 1]) == "reproduced"
    assert vg.claim_verdict([1, 0]) == "inconclusive"
    assert vg.claim_verdict([1, -1]) == "not reproduced"
    with pytest.raises(ValueError, match="finite"): vg.clear_sign([1.0, math.inf], [0.0, 1.0])


def test_colab_profile_fits_the_seen_classes():
    "colab: each batch's classes (p) and the class vectors fit the seen classes, without a download."
    from structloss.data import TORCHVISION_DATASETS
    from structloss.experiments import get_experiment
    import structloss.variance_greediness_paper as vg
    for key, (_, _, kw) in vg.VG_LOSSES.items():
        e = get_experiment(f"vg_{key}").resolve("colab")
        kwargs = e.dataset_kwargs
        n_classes = TORCHVISION_DATASETS[kwargs["name"]][4]
        n_seen = int(round(kwargs.get("seen_fraction", 0.5) * n_classes))
        assert 2 <= e.train["sampler"]["p"] <= n_seen, key
        if "num_classes" in kw:
            assert e.objective["kwargs"]["loss_kwargs"]["num_classes"] == n_seen, key
