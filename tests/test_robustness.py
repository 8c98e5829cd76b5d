"Tests for structloss.robustness: the corruption suite and the corruption errors (chapter 25)."
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from structloss.data import ArrayDataset, DataSplits
from structloss.robustness import (CORRUPTIONS, SEVERITY_LEVELS, SEVERITY_PARAMS, blur, contrast,
                                   corrupt, corruption_errors, corruption_metrics, dataset_tensors,
                                   gaussian_noise, impulse_noise, mean_corruption_error, shift)

BATCHES = [lambda g: torch.rand(7, 1, 8, 8, generator=g),
           lambda g: torch.randn(5, 3, 12, 10, generator=g, dtype=torch.float64),
           lambda g: torch.randn(9, 1, 40, generator=g),
           lambda g: torch.randn(4, 2, 17, generator=g, dtype=torch.float64)]


@pytest.mark.parametrize("make", BATCHES)
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_shape_dtype_determinism(make, name):
    x = make(torch.Generator().manual_seed(0))
    x0 = x.clone()
    for s in SEVERITY_LEVELS:
        a, b = corrupt(x, name, s, seed=5), corrupt(x, name, s, seed=5)
        assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
        assert torch.equal(a, b)
        assert not torch.equal(a, x)                        # every corruption changes something
    assert torch.equal(x, x0)                               # the input is never modified in place
    if name in ("gaussian_noise", "impulse_noise"):
        assert not torch.equal(corrupt(x, name, 3, seed=1), corrupt(x, name, 3, seed=2))


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "blur", "contrast"])
@pytest.mark.parametrize("seed", range(3))
def test_severity_grows(name, seed):
    x = torch.randn(64, 1, 40, generator=torch.Generator().manual_seed(seed))
    dist = [float((corrupt(x, name, s, seed=seed) - x).abs().mean()) for s in SEVERITY_LEVELS]
    assert all(a < b for a, b in zip(dist, dist[1:])), dist


def test_gaussian_noise_scale():
    g = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(200, 1, 50, generator=g, dtype=torch.float64)
    for s in SEVERITY_LEVELS:
        noise = gaussian_noise(x, s, torch.Generator().manual_seed(s)) - x
        want = SEVERITY_PARAMS["gaussian_noise"][s - 1] * float(x.std())
        assert float(noise.std()) == pytest.approx(want, rel=0.03)


def test_impulse_noise_fraction_and_values():
    x = torch.rand(100, 2, 30, generator=torch.Generator().manual_seed(0))
    for s in SEVERITY_LEVELS:
        xc = impulse_noise(x, s, torch.Generator().manual_seed(s))
        hit = xc != x
        p = SEVERITY_PARAMS["impulse_noise"][s - 1]
        assert float(hit.float().mean()) == pytest.approx(p, abs=0.01)
        assert set(xc[hit].unique().tolist()) <= {float(x.max()), float(x.min())}


def test_blur_properties():
    c = torch.full((3, 2, 9, 7), -1.25)
    for s in SEVERITY_LEVELS: assert_close(blur(c, s), c)             # constants are fixed points
    x = torch.rand(6, 1, 40, generator=torch.Generator().manual_seed(0))
    assert float(blur(x, 5).var()) < float(x.var())                        # blurring smooths
    # a centred spike spreads symmetrically with total mass 1 (no edge effects in the middle)
    spike = torch.zeros(1, 1, 41, dtype=torch.float64); spike[..., 20] = 1.0
    out = blur(spike, 3)[0, 0]
    assert_close(out.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert_close(out, out.flip(0))
    sigma = SEVERITY_PARAMS["blur"][2]
    assert float(out[21] / out[20]) == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=1e-9)


def test_contrast_properties():
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for s in SEVERITY_LEVELS:
        xc = contrast(x, s)
        m = x.mean((1, 2, 3), keepdim=True)
        assert_close(xc.mean((1, 2, 3)), x.mean((1, 2, 3)))
        assert_close(xc - m, SEVERITY_PARAMS["contrast"][s - 1] * (x - m))


@pytest.mark.parametrize("L", [8, 40])
def test_shift_moves_a_spike(L):
    pos = L // 2
    spike = torch.zeros(20, 1, L); spike[..., pos] = 1.0
    for s in SEVERITY_LEVELS:
        amount = max(1, round(SEVERITY_PARAMS["shift"][s - 1] * L))
        moved = shift(spike, s, torch.Generator().manual_seed(s))
        where = moved[:, 0].argmax(1)
        assert set(where.tolist()) <= {pos - amount, pos + amount}
        assert_close(moved.sum((1, 2)), torch.ones(20))


def test_shift_2d_both_axes_and_edges():
    img = torch.arange(64.0).view(1, 1, 8, 8).repeat(10, 1, 1, 1)
    out = shift(img, 1, torch.Generator().manual_seed(0))                 # 1 pixel on each axis
    for n in range(10):
        diffs = {(dy, dx) for dy in (-1, 1) for dx in (-1, 1)
                 if torch.equal(out[n, 0, 1:-1, 1:-1], img[n, 0, 1 - dy:7 - dy, 1 - dx:7 - dx])}
        assert len(diffs) == 1
    # replicated edges: every value of the output is a value of the input
    assert set(out.unique().tolist()) <= set(img.unique().tolist())


def test_errors():
    x = torch.rand(4, 1, 8)
    with pytest.raises(ValueError, match="Unknown corruption 'fog'"): corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"): corrupt(x, "blur", 0)
    with pytest.raises(ValueError, match="severity"): corrupt(x, "blur", True)
    with pytest.raises(ValueError, match=r"\[N, C, L\]"): blur(torch.rand(4, 8), 1)
    with pytest.raises(ValueError, match=r"\[N, C, L\]"): blur(torch.rand(2, 1, 3, 3, 3), 1)
    with pytest.raises(TypeError, match="floating"):
        contrast(torch.ones(2, 1, 4, dtype=torch.long), 1)
    with pytest.raises(TypeError, match="floating"): contrast([[1.0]], 1)


class _Linear(torch.nn.Module):
    def __init__(self, d, C, logits=True):
        super().__init__(); self.fc = torch.nn.Linear(d, C); self.logits = logits
    def forward(self, x):
        z = self.fc(x.flatten(1))
        return (z if self.logits else None), z


def _splits(seed=0, n=120, L=16, C=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    x = torch.randn(n, 1, L, generator=g) + 2.0 * torch.nn.functional.one_hot(y, L).float()[:, None]
    ds = ArrayDataset(x, y.numpy())
    return DataSplits("toy", ds, ds, ArrayDataset(x[:60], y[:60].numpy()), C, (1, L))


def test_corruption_metrics_keys_values_and_reproducibility():
    data = _splits(); torch.manual_seed(0); model = _Linear(16, 3)
    m = corruption_metrics(model, data, seed=3)
    n_sets = 1 + len(CORRUPTIONS) * len(SEVERITY_LEVELS)
    assert len([k for k in m if k.startswith("argmax_err_")]) == n_sets
    assert len([k for k in m if k.startswith("knn10_err_")]) == n_sets
    assert all(0.0 <= v <= 1.0 for v in m.values())
    x, y = dataset_tensors(data.test)
    with torch.no_grad(): want = float((model(x)[0].argmax(1) != y).float().mean())
    assert m["argmax_err_clean"] == pytest.approx(want)
    assert m == corruption_metrics(model, data, seed=3)                   # same seed, same numbers
    m2 = corruption_metrics(_Linear(16, 3, logits=False), data, seed=3, corruptions=("blur",),
                            severities=(1, 5), knn_k=3)
    assert set(m2) == {"knn3_err_clean", "knn3_err_blur_s1", "knn3_err_blur_s5"}
    with pytest.raises(ValueError, match="Unknown corruption"):
        corruption_metrics(model, data, corruptions=("fog",))


def test_corruption_errors_and_mce():
    base = {"clean": 0.1, "blur": [0.2, 0.4], "shift": [0.3, 0.5]}
    model = {"clean": 0.15, "blur": [0.2, 0.3], "shift": [0.3, 0.45]}
    r = mean_corruption_error(model, base)
    assert r["mCE"] == pytest.approx(100 * (0.5 / 0.6 + 0.75 / 0.8) / 2)
    assert r["relative_mCE"] == pytest.approx(100 * (0.2 / 0.4 + 0.45 / 0.6) / 2)
    assert r["clean_error"] == pytest.approx(15.0)
    same = mean_corruption_error(base, base)
    assert same["mCE"] == pytest.approx(100) and same["relative_mCE"] == pytest.approx(100)
    half = {"clean": 0.0, "blur": [0.1, 0.2], "shift": [0.15, 0.25]}
    zero_clean = {"clean": 0.0, "blur": [0.2, 0.4], "shift": [0.3, 0.5]}
    assert mean_corruption_error(half, zero_clean)["mCE"] == pytest.approx(50)
    with pytest.raises(ValueError, match="same corruptions"):
        mean_corruption_error({"clean": 0.1, "blur": [0.1, 0.2]}, base)
    metrics = {"argmax_err_clean": 0.1, "argmax_err_blur_s2": 0.4, "argmax_err_blur_s1": 0.2,
               "knn10_err_clean": 0.3}
    assert corruption_errors(metrics, "argmax") == {"clean": 0.1, "blur": [0.2, 0.4]}
    assert corruption_errors(metrics, "knn10") == {"clean": 0.3}
    with pytest.raises(ValueError, match="classifiers present"): corruption_errors(metrics, "svc")


def test_relative_mce_warns_on_near_zero_baseline_degradation():
    import math, warnings
    model = {"clean": 0.15, "blur": [0.2, 0.3], "shift": [0.3, 0.45]}
    # blur: severity 1 below clean, the total degradation -0.02 + 0.025 = 0.005 (near zero)
    near = {"clean": 0.1, "blur": [0.08, 0.125], "shift": [0.3, 0.5]}
    with pytest.warns(RuntimeWarning, match="total degradation on 'blur'"):
        r = mean_corruption_error(model, near)
    assert math.isfinite(r["relative_CE"]["blur"]) and r["relative_CE"]["shift"] == pytest.approx(75)
    zero = {"clean": 0.1, "blur": [0.05, 0.15], "shift": [0.3, 0.5]}          # exactly zero
    with pytest.warns(RuntimeWarning, match="about zero or a negative"):
        r = mean_corruption_error(model, zero)
    assert math.isnan(r["relative_CE"]["blur"]) and math.isnan(r["relative_mCE"])
    assert r["mCE"] == pytest.approx(100 * (0.5 / 0.2 + 0.75 / 0.8) / 2)        # mCE unaffected
    with pytest.warns(RuntimeWarning):                                       # a custom threshold
        mean_corruption_error(model, {"clean": 0.1, "blur": [0.2, 0.4], "shift": [0.3, 0.5]},
                              min_degradation=0.5)
    with warnings.catch_warnings():                                          # a healthy baseline
        warnings.simplefilter("error")
        mean_corruption_error(model, {"clean": 0.1, "blur": [0.2, 0.4], "shift": [0.3, 0.5]})
