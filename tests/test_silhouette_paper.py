"Silhouette-paper chapter: stand-in datasets, the probe rule, the verdict rule, the registry."
import numpy as np, pytest, torch
from structloss.data import ArrayDataset, DataSplits, load_dataset
from structloss.experiments import get_experiment, get_suite, run_experiment
import structloss.silhouette_paper as sp

def test_datasets_are_deterministic_and_sized():
    a, b = sp.digits_few_splits(0, per_class=5), sp.digits_few_splits(0, per_class=5)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
    assert np.bincount(a.train.targets).tolist() == [5] * 10
    assert np.bincount(a.val.targets).tolist() == [10] * 10
    f = sp.finegrained_splits(0, num_classes=6, groups=2, per_class=(3, 2, 4))
    assert (len(f.train), len(f.val), len(f.test), f.num_classes) == (18, 12, 24, 6)
    assert f.input_shape == (1, 32) and f.train.transform is None
    assert sp.finegrained_splits(0, augment=True).train.transform is not None
    assert load_dataset("finegrained", 0, num_classes=6, groups=2).num_classes == 6   # registered

def test_finegrained_groups_make_classes_of_a_group_closer():
    f = sp.finegrained_splits(0, num_classes=20, groups=4, per_class=(30, 1, 1), noise=0.1)
    x, y = f.train.x[:, 0], torch.as_tensor(f.train.targets)
    means = torch.stack([x[y == c].mean(0) for c in range(20)])
    d = torch.cdist(means, means)
    group = torch.arange(20) % 4
    same = (group[:, None] == group[None]) & ~torch.eye(20, dtype=torch.bool)
    diff = group[:, None] != group[None]
    assert d[same].mean() < 0.7 * d[diff].mean()

class _Fixed(torch.nn.Module):
    "Embeddings = inputs; one parameter so that `embed` finds a device."
    def __init__(self):
        super().__init__(); self.p = torch.nn.Parameter(torch.zeros(1))
    def forward(self, x): return None, x.flatten(1) + 0 * self.p

def _splits(x_tr, y_tr, x_te, y_te, C):
    tr, te = ArrayDataset(x_tr, y_tr), ArrayDataset(x_te, y_te)
    return DataSplits("t", tr, te, te, C, tuple(x_tr.shape[1:]), None, {}, tr)

def test_linear_probe_separable_and_random():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(8).repeat(20)
    x = torch.nn.functional.one_hot(y, 8).float() + 0.05 * torch.randn(160, 8, generator=g)
    m = sp.linear_probe(_Fixed(), _splits(x, y, x, y, 8), seed=0)
    assert m["probe_top1"] == 1.0 and m["probe_top5"] == 1.0
    y_rand = torch.randint(0, 8, (160,), generator=g)
    x_rand = torch.randn(160, 8, generator=g)
    m = sp.linear_probe(_Fixed(), _splits(x_rand, y_rand, torch.randn(400, 8, generator=g),
                                          torch.randint(0, 8, (400,), generator=g), 8), seed=0)
    assert m["probe_top1"] < 0.25 and m["probe_top1"] <= m["probe_top5"]

def test_probed_model_hides_logits_in_evaluation():
    data = sp.digits_few_splits(0, per_class=3)
    model = sp.make_model(data, "mlp")
    x = torch.stack([data.test[i][0] for i in range(4)])
    model.train(); logits, z = model(x)
    assert logits.shape == (4, 10) and z.shape == (4, 64)
    model.eval(); logits, z = model(x)
    assert logits is None and torch.allclose(z.norm(dim=1), torch.ones(4))
    assert sp.make_model(data, "mlp", classifier=False).classifier is None

@pytest.mark.parametrize("a,b,verdict", [
    ([1.0, 1.1, 0.9], [0, 0, 0], "A > B"), ([0, 0, 0], [1.0, 1.1, 0.9], "A < B"),
    ([0.5, -0.5, 0.1], [0, 0, 0], "no difference"), ([1.0], [0.0], "no difference")])
def test_paired_verdict(a, b, verdict):
    assert sp.paired_verdict(a, b)["verdict"] == verdict

def test_paired_verdict_is_paired_by_seed():
    a = np.array([0.50, 0.60, 0.70, 0.80, 0.90])          # large spread across seeds, constant gain
    assert sp.paired_verdict(a + 0.01, a)["verdict"] == "A > B"
    with pytest.raises(ValueError, match="same length"): sp.paired_verdict([1, 2], [1, 2, 3])

def test_best_verdict():
    c = [1.0, 1.1, 1.2]
    assert sp.best_verdict(c, {"x": [0, 0.1, 0.1]}) == "reproduced"
    assert sp.best_verdict(c, {"x": [0, 0.1, 0.1], "y": [2, 2, 2]}) == "not reproduced"
    assert sp.best_verdict(c, {"x": [0, 0.1, 0.1], "y": [1.0, 1.2, 1.1]}) == "inconclusive"

def test_registry():
    assert len(get_suite("silhouette_table1")) == len(sp.METHODS) * len(sp.SETTINGS)
    assert len(get_suite("silhouette_table1_colab")) == len(sp.METHODS) * len(sp.PAPER_SETTINGS)
    for name in get_suite("silhouette_table1") + get_suite("silhouette_sensitivity"):
        exp = get_experiment(name)
        exp.resolve("smoke")
        assert exp.resolve("cpu").train["sampler"]["m"] >= 2          # a(i) needs a class-mate
        with pytest.raises(ValueError, match="no 'colab' profile"): exp.resolve("colab")
    for name in get_suite("silhouette_table1_colab"):
        with pytest.raises(ValueError, match="no 'cpu' profile"):
            get_experiment(name).resolve("cpu")
    sil = sp.TEMPERATURE["mnist1d"].resolve("cpu").objective["terms"]["silhouette"]["kwargs"]
    assert sil["temperature_scale"] == "relative"

def test_one_smoke_run_reports_the_probe():
    r = run_experiment(sp.TABLE1["CE+Sil+SupCon2", "digits_few"], profile="smoke", out_dir=None,
                       progress=False, verbose=False)
    m = r.metrics[0]
    assert {"probe_top1", "probe_top5", "knn1", "silhouette"} <= set(m) and "top1" not in m
    assert len(r.histories[0]) == 1 and "train_supcon" in r.histories[0][0]
