"Tests for structloss.graph_paper: the Figure 1 model, the shape metrics, the experiments."
import pytest
import torch

from structloss.data import ArrayDataset, DataSplits, load_dataset
from structloss.experiments import EXPERIMENTS, SUITES, build_objective, run_experiment
from structloss.graph_paper import (GRAPH_PAPER, GRAPH_PAPER_SUITES, BottleneckModel,
                                    bottleneck_model, embedding_shape_metrics, graph_objective)


def test_suites_and_members_registered():
    for suite, members in GRAPH_PAPER_SUITES.items():
        assert SUITES[suite]["members"] == members
        for m in members: assert m in EXPERIMENTS
    assert {e.name for e in GRAPH_PAPER} == {m for ms in GRAPH_PAPER_SUITES.values() for m in ms}


@pytest.mark.parametrize("ds", ["digits", "mnist1d", "cifar10", "cifar100", "svhn"])
def test_equal_budget_between_ce_and_graph_loss(ds):
    ce, gsl = EXPERIMENTS[f"gsp_ce_{ds}"], EXPERIMENTS[f"gsp_gsl_{ds}"]
    assert ce.train == gsl.train and ce.dataset == gsl.dataset and ce.seeds == gsl.seeds
    assert ce.dataset_kwargs == gsl.dataset_kwargs and ce.model["encoder"] == gsl.model["encoder"]
    assert ce.objective == {} and gsl.objective["ce_weight"] == 0.0
    assert gsl.model["classifier"] is False and gsl.model["normalize"] is True
    assert len(ce.seeds) >= 3


def test_profiles():
    for name in GRAPH_PAPER_SUITES["graph_paper_colab"]:
        with pytest.raises(ValueError, match="no 'cpu' profile"): EXPERIMENTS[name].resolve("cpu")
        assert EXPERIMENTS[name].resolve("smoke").dataset == "fake"
    for suite in ("graph_paper_table1", "graph_paper_table2", "graph_paper_table2_tuned"):
        for name in GRAPH_PAPER_SUITES[suite]:
            assert len(EXPERIMENTS[name].resolve("cpu").seeds) >= 5


def test_graph_objective():
    spec = graph_objective(k=3, alpha=0.5, normalize=False)
    data = load_dataset("digits", 0)
    obj = build_objective(spec, data, 4)
    z, y = torch.randn(12, 4), torch.arange(12) % 3
    total, logs = obj(None, z, y)
    loss = obj.losses["graph"]
    assert (loss.k, loss.alpha, loss.normalize_embeddings) == (3, 0.5, False)
    assert float(total) == pytest.approx(float(loss(z, y)))


def test_bottleneck_model():
    data = load_dataset("digits", 0)
    m = bottleneck_model(data, "digits_cnn", dim=2)
    assert isinstance(m, BottleneckModel) and m.embedding_dim == 2
    logits, z = m(torch.randn(16, 1, 8, 8))
    assert logits.shape == (16, 10) and z.shape == (16, 2)
    assert_std = z.detach().std(0, unbiased=False)
    assert torch.allclose(z.detach().mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(assert_std, torch.ones(2), atol=1e-2)
    no_head = bottleneck_model(data, "digits_cnn", dim=5, classifier=False)
    assert no_head(torch.randn(4, 1, 8, 8))[0] is None
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="`dim` must be a positive int"):
            bottleneck_model(data, "mlp", dim=bad)


class _Identity(torch.nn.Module):
    def __init__(self): super().__init__(); self.w = torch.nn.Parameter(torch.zeros(1))
    def forward(self, x): return None, x.flatten(1)


def _shape(z, y):
    ds = ArrayDataset(z, y.numpy())
    data = DataSplits("t", ds, ds, ds, int(y.max()) + 1, (z.shape[1],))
    return embedding_shape_metrics(_Identity(), data)


def test_embedding_shape_metrics_tell_rays_from_blobs():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    direction = torch.stack([torch.cos(y * 1.5708), torch.sin(y * 1.5708)], 1)
    rays = direction * torch.rand(400, 1, generator=g) * 10
    blobs = direction * 5 + 0.3 * torch.randn(400, 2, generator=g)
    r, b = _shape(rays, y), _shape(blobs, y)
    assert r["sil_angle"] > 0.9 and r["sil_euclid"] < 0.6
    assert b["sil_euclid"] > 0.8
    # a shifted cloud: directions are taken from the centre, so the answer does not move
    assert _shape(rays + 100.0, y)["sil_angle"] == pytest.approx(r["sil_angle"], abs=1e-4)


def test_smoke_runs_give_the_classifier_metrics(tmp_path):
    r = run_experiment("gsp_gsl_digits", profile="smoke", out_dir=str(tmp_path), progress=False,
                       verbose=False, figures=False)
    m = r.metrics[0]
    assert {"knn1", "knn10", "svc"} <= set(m) and "top1" not in m
    r = run_experiment("gsp_gsl_bottleneck_digits", profile="smoke", out_dir=None, progress=False,
                       verbose=False, figures=False)
    assert {"sil_euclid", "sil_angle"} <= set(r.metrics[0]) and r.embeddings.shape[1] == 2


def test_tuning_grid_gives_both_losses_the_same_budget():
    from structloss.graph_paper import TUNE_GRID, TUNE_LRS, TUNE_EPOCHS
    assert SUITES["graph_paper_tune"]["members"] == [e.name for v in TUNE_GRID.values() for e in v]
    for ce, gsl in zip(TUNE_GRID["ce"], TUNE_GRID["gsl"]):
        for profile in ("smoke", "cpu", "colab"):
            rc, rg = ce.resolve(profile), gsl.resolve(profile)
            assert rc.train == rg.train and rc.seeds == rg.seeds
            assert rc.dataset_kwargs == rg.dataset_kwargs
        cpu = ce.resolve("cpu")
        assert cpu.train["epochs"] == TUNE_EPOCHS and len(cpu.seeds) >= 5
        assert ce.objective == {} and gsl.objective["ce_weight"] == 0.0
    assert sorted({e.train["lr"] for e in TUNE_GRID["gsl"]}) == sorted(TUNE_LRS)
    assert len(set(e.name for v in TUNE_GRID.values() for e in v)) == 2 * len(TUNE_LRS)


def test_diagnostic_variants_differ_only_in_the_batch():
    ref = EXPERIMENTS["gsp_gsl_mnist1d"].resolve("cpu")
    bal = EXPERIMENTS["gsp_gsl_mnist1d_balanced"].resolve("cpu")
    big = EXPERIMENTS["gsp_gsl_mnist1d_b400"].resolve("cpu")
    assert bal.train == {**ref.train, "sampler": {"m": 10, "p": 10}}
    assert big.train == {**ref.train, "batch_size": 400}
    assert bal.objective == ref.objective == big.objective and bal.model == ref.model
