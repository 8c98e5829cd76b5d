"""The Latent Boost paper chapter (32): its registered experiments, suites and metrics, and one tiny run."""
import pytest
import torch

from structloss.experiments import get_experiment, get_suite, run_experiment
from structloss.latent_boost_paper import (LAMBDA_GRID, READINGS, WARMUP, distance_experiment,
                                           latent_boost_experiment, paper_metrics)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_suites_cover_every_method_on_the_cpu_grid():
    t2, t3 = get_suite("latent_boost_table2"), get_suite("latent_boost_table3")
    assert len(t2) == 1 + 4 * len(LAMBDA_GRID["cpu"]) and len(t3) == (len(READINGS) + 1) * len(LAMBDA_GRID["cpu"])
    for name in t2 + t3:
        e = get_experiment(name)
        assert len(e.resolve("cpu").seeds) >= 5
        assert e.resolve("colab").dataset == "fashion_mnist"
    full = get_suite("latent_boost_table3_full")
    assert len(full) == (len(READINGS) + 1) * len(LAMBDA_GRID["colab"])
    colab_only = [n for n in full if n not in t3]
    with pytest.raises(ValueError, match="has no 'cpu' profile"): get_experiment(colab_only[0]).resolve("cpu")


def test_experiment_specs():
    e = latent_boost_experiment("factor", 0.75).resolve("cpu")
    assert e.objective == {"factory": "latent_boost", "kwargs": {
        "lam": 0.75, "warmup_epochs": WARMUP["cpu"], "pca": True, "beta_placement": "factor", "hinge": False}}
    assert e.train["scheduler"] == "plateau" and e.train["patience"] == 4
    d = distance_experiment("triplet", 0.25).resolve("cpu")
    assert d.objective["mix"] == 0.25 and d.objective["terms"]["triplet"]["kwargs"] == {"margin": 0.05}
    with pytest.raises(ValueError, match="`loss` must be one of"): distance_experiment("proxy", 0.5)
    with pytest.raises(ValueError, match="`lam` must lie in"): latent_boost_experiment("literal", 1.0)


def test_a_tiny_latent_boost_run_logs_what_the_chapter_reads():
    exp = get_experiment("lbp_lb_detach_l75").derive("t_lb", profiles={"smoke": {
        "train": {"epochs": 2}, "objective": {"kwargs": {"warmup_epochs": 1}}}})
    res = run_experiment(exp, profile="smoke", out_dir=None, progress=False, verbose=False, figures=False)
    m, hist = res.metrics[0], res.histories[0]
    assert {"top1", "micro_f1", "macro_f1", "silhouette_euclidean", "epochs_run"} <= set(m)
    assert abs(m["micro_f1"] - m["top1"]) < 1e-12               # single-label: micro-F1 is accuracy
    assert "train_latent_boost" not in hist[0]                   # CE-only warm-up epoch
    assert 1 <= hist[-1]["train_latent_boost_dim"] <= 64          # kept components of the 64-d latent


def test_paper_metrics_macro_f1_differs_from_accuracy():
    from structloss.data import load_dataset
    data = load_dataset("mnist1d", seed=0, num_samples=300)

    class Const(torch.nn.Module):
        def __init__(self): super().__init__(); self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float(), x.flatten(1)[:, :4]
    m = paper_metrics(Const(), data, 0)
    acc = float((torch.as_tensor(data.test.targets) == 0).double().mean())
    assert abs(m["micro_f1"] - acc) < 1e-12 and m["macro_f1"] < acc
