"""structloss.experiments: experiments as data, profiles, registry, lazy losses, runs, the CLI."""
import json, os, shutil, subprocess, sys
import pytest
import torch
import structloss.experiments as E
from structloss.data import digits_splits


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see conftest.py


def test_profiles_merge():
    e = E.get_experiment("ce_mnist1d")
    s, c = e.resolve("smoke"), e.resolve("cpu")
    assert s.dataset_kwargs["num_samples"] == 2000 and c.dataset_kwargs["num_samples"] == 10_000
    assert s.train["epochs"] < c.train["epochs"] and s.train["lr"] == c.train["lr"]  # nested merge keeps the rest
    assert len(c.seeds) >= 3
    assert E.get_experiment("ce_mnist1d").train["epochs"] == 15  # resolving does not mutate the registered experiment
    with pytest.raises(ValueError, match="no 'cpu' profile"): E.get_experiment("ce_cifar10").resolve("cpu")
    with pytest.raises(ValueError, match="Unknown profile"): e.resolve("gpu")


def test_registry(monkeypatch):
    E._import_all()   # first: modules imported inside the patch would register into the copy
    monkeypatch.setattr(E, "EXPERIMENTS", dict(E.EXPERIMENTS))
    exp = E.Experiment("my_exp", "digits", model={"encoder": "mlp"})
    E.register_experiment(exp)
    assert E.get_experiment("my_exp") is exp
    with pytest.raises(ValueError, match="already registered"):
        E.register_experiment(E.Experiment("my_exp", "mnist1d"))
    E.register_experiment(E.Experiment("my_exp", "mnist1d"), overwrite=True)
    with pytest.raises(ValueError, match="Unknown experiment 'nope'"): E.get_experiment("nope")
    assert {"ce_digits", "ce_mnist1d"} <= set(E.EXPERIMENTS)
    json.dumps(exp.to_dict())


def test_lazy_losses_and_objectives():
    data = digits_splits()
    assert E.resolve_loss("SupConLoss").__module__ == "structloss.contrastive"
    obj = E.build_objective({"terms": {"supcon": {"loss": "SupConLoss", "kwargs": {"temperature": 0.2}, "weight": 0.5}}},
                            data, 16)
    assert obj.weights == {"supcon": 0.5} and obj.losses["supcon"].temperature == 0.2
    assert type(E.build_objective({}, data, 16)).__name__ == "Objective"
    assert E.build_objective({"factory": "cross_entropy"}, data, 16).ce_weight == 1.0
    with pytest.raises(ValueError, match="Unknown loss 'SupConn'"):
        E.build_objective({"terms": {"x": {"loss": "SupConn"}}}, data, 16)
    with pytest.raises(ValueError, match="must be a dict with a 'loss'"):
        E.build_objective({"terms": {"x": "SupConLoss"}}, data, 16)
    with pytest.raises(ValueError, match="unknown key"): E.build_objective({"lambda": 1}, data, 16)
    with pytest.raises(ValueError, match="Unknown objective factory"): E.build_objective({"factory": "nope"}, data, 16)

    class NeedsShapes(torch.nn.Module):
        def __init__(self, num_classes, embedding_size, scale=1.0):
            super().__init__(); self.shape = (num_classes, embedding_size)
    assert E._make_loss(NeedsShapes, {}, data, 16).shape == (10, 16)


def test_bad_configs_fail_early():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['epochs'\]"):
        E.Experiment("x", "digits", profiles={"smoke": {"epochs": 1}})
    with pytest.raises(ValueError, match="unknown profile"): E.Experiment("x", "digits", profiles={"gpu": {}})
    bad_train = E.Experiment("x", "digits", model={"encoder": "digits_cnn"}, train={"epoch": 3})
    with pytest.raises(ValueError, match="unknown option"): E.run_experiment(bad_train, profile="smoke", out_dir=None)
    no_enc = E.Experiment("x", "digits")
    with pytest.raises(ValueError, match="needs an 'encoder'"): E.run_experiment(no_enc, profile="smoke", out_dir=None)
    bad_data = E.Experiment("x", "digitz", model={"encoder": "digits_cnn"})
    with pytest.raises(ValueError, match="Unknown dataset"): E.run_experiment(bad_data, profile="smoke", out_dir=None)
    with pytest.raises(ValueError, match="seeds"): E.run_experiment("ce_digits", profile="smoke", seeds=[], out_dir=None)


def test_run_saves_everything(tmp_path):
    exp = E.Experiment("tiny", "digits", model={"encoder": "digits_cnn", "embedding_dim": 8, "encoder_kwargs": {"width": 8}},
                       train={"epochs": 3, "batch_size": 32, "lr": 3e-3}, seeds=(0, 1))
    r = E.run_experiment(exp, profile="smoke", out_dir=str(tmp_path), progress=False, verbose=False, tsne=True)
    d = tmp_path / "tiny" / "smoke"
    for f in ("results.json", "summary.csv", "curves.png", "embeddings_pca.png", "embeddings_tsne.png",
              "seed_0/history.json", "seed_1/checkpoint.pt"):
        assert (d / f).exists(), f
    res = json.load(open(d / "results.json"))
    assert len(res["metrics"]) == 2 and res["summary"]["top1"]["n"] == 2 and res["profile"] == "smoke"
    assert r.summary["top1"][0] > 0.3 and r.embeddings.shape == (len(r.labels), 8)
    assert "top1" in r.table() and "±" in r.table()


def test_summarize_and_table():
    s = E.summarize([{"a": 1.0, "b": 2.0}, {"a": 3.0}])
    assert s["a"] == (2.0, pytest.approx(1.4142135), 2) and s["b"] == (2.0, 0.0, 1)
    assert "2.0000 ± 1.4142" in E.format_table(s)


def test_supcon2_and_image_smoke_profiles(tmp_path):
    for name in ("supcon2_digits", "ce_cifar10"):
        r = E.run_experiment(name, profile="smoke", out_dir=str(tmp_path), progress=False, verbose=False, figures=False)
        assert len(r.metrics) == 1 and 0 <= r.metrics[0]["knn1"] <= 1


def test_main_in_process(tmp_path, capsys):
    assert E.main(["run", "ce_digits", "--profile", "smoke", "--out", str(tmp_path), "--no-progress", "--no-figures",
                   "--epochs", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "ce_digits (smoke)" in out and "top1" in out
    assert E.main(["run", "ce_digit", "--profile", "smoke"]) == 2
    assert "Unknown experiment 'ce_digit'" in capsys.readouterr().err
    assert E.main(["list"]) == 0 and "ce_mnist1d" in capsys.readouterr().out


@pytest.mark.skipif(not shutil.which("structloss", path=os.path.dirname(sys.executable)), reason="console script not installed")
def test_console_script(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "structloss")
    p = subprocess.run([exe, "run", "ce_digits", "--profile", "smoke", "--out", str(tmp_path), "--no-progress",
                        "--no-figures", "--epochs", "1", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "mean ± std" in p.stdout and (tmp_path / "ce_digits" / "smoke" / "results.json").exists()


def _tiny(name="t_tiny", **kw):
    kw.setdefault("model", {"encoder": "mlp", "embedding_dim": 8})
    return E.Experiment(name, "digits", train={"epochs": 1, "batch_size": 256}, seeds=(0,), **kw)


def test_run_or_load_reads_the_files_the_cli_writes(tmp_path, monkeypatch, capsys):
    "The CLI runs a suite; the chapter's `run_or_load` then reads its files and trains nothing."
    for name in ("t_a", "t_b"): E.register_experiment(_tiny(name), overwrite=True)
    E.register_suite("t_ab", ["t_a", "t_b"])
    try:
        assert E.main(["run", "t_ab", "--profile", "cpu", "--out", str(tmp_path), "--no-figures", "--no-progress"]) == 0
        assert "suite t_ab: 2 experiments" in capsys.readouterr().out
        stored = json.load(open(tmp_path / "t_b" / "cpu" / "results.json"))
        monkeypatch.setattr(E, "run_experiment", lambda *a, **k: pytest.fail("run_or_load re-ran a stored experiment"))
        res = E.run_suite("t_ab", "cpu", str(tmp_path))
        assert res["t_b"].metrics == stored["metrics"] and res["t_b"].histories == stored["histories"]
        assert res["t_a"].wall_s > 0 and res["t_a"].embeddings.shape[1] == 8
    finally:
        E.EXPERIMENTS.pop("t_a"); E.EXPERIMENTS.pop("t_b"); E.SUITES.pop("t_ab")


def test_run_or_load_reruns_a_changed_experiment(tmp_path):
    E.run_or_load(_tiny(), "cpu", str(tmp_path), figures=False)
    changed = _tiny(evaluation={"recall_k": (1, 3)})
    res = E.run_or_load(changed, "cpu", str(tmp_path), figures=False)
    assert "recall@3" in res.metrics[0]                                   # it ran again with the new evaluation
    assert E.load_result("t_tiny", "cpu", str(tmp_path)).experiment.evaluation == {"recall_k": [1, 3]}


def test_model_factory_and_extra_metrics(tmp_path):
    from structloss.models import build_model
    def factory(data, width=4):
        return build_model("mlp", data.input_shape, data.num_classes, embedding_dim=width,
                           encoder_kwargs={"hidden": (16,)})
    exp = _tiny("t_factory", model={"factory": factory, "width": 5},
                evaluation={"extra": [lambda model, data, seed: {"n_test": float(len(data.test))}]})
    res = E.run_experiment(exp, "cpu", out_dir=None, progress=False)
    assert res.embeddings.shape[1] == 5 and res.metrics[0]["n_test"] == 359.0  # 20% of each class of 1797


def test_experiment_chapter_is_the_registering_modules_notebook():
    "Each experiment maps to the chapter whose module registered it, the package's own included."
    from structloss.experiments import (EXPERIMENTS, Experiment, experiment_chapter,
                                        register_experiment, REGISTERED_IN, _import_all)
    _import_all()
    assert experiment_chapter("ce_digits") == "24_experiments"              # its top level
    assert experiment_chapter("xbm_contrastive_digits_m0") == "42_memory"   # imported early
    assert experiment_chapter("gsp_gsl_mnist1d") == "31_graph_paper"
    assert experiment_chapter("vg_npair") == "33_variance_greediness_paper"
    exp = EXPERIMENTS["ce_digits"]
    here = Experiment(**{**exp.to_dict(), "name": "t_chapter_here"})
    try:
        register_experiment(here)
        assert REGISTERED_IN["t_chapter_here"] == __name__
        assert experiment_chapter("t_chapter_here") is None                  # not a chapter's
    finally:
        EXPERIMENTS.pop("t_chapter_here", None); REGISTERED_IN.pop("t_chapter_here", None)
