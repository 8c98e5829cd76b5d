"""Property tests that drive every exported loss of structloss over random batches.

Each loss is discovered (EmbeddingLoss subclasses exported by any structloss module), built with its defaults
(learnable losses get `num_classes` and `embedding_size`), and called on random batch sizes, dimensions,
label patterns, embedding patterns and dtypes. The contract (structloss/core.py, CONVENTIONS):

- a call gives a finite 0-dim value in the input dtype with finite gradients (embeddings and parameters),
  or raises a ValueError/TypeError with a message; never NaN, never IndexError/RuntimeError;
- `active_ratio` gives a finite value in [0, 1] (or the same ValueError/TypeError as the call);
- a batch with nothing to learn (one sample; one class with identical embeddings) gives 0 with zero
  gradients for losses without learnable class vectors;
- the value does not depend on the order of the batch, and (without learnable class vectors) not on the
  names of the labels (any injective relabelling, negative ids and gaps included).
"""
from __future__ import annotations
import importlib, inspect, math, pkgutil
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st

import structloss
from structloss.core import EmbeddingLoss

NUM_CLASSES = 12          # learnable losses are built with this many class vectors
MAX_N, MAX_D = 24, 8
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
LABEL_PATTERNS = ("random", "one_class", "all_distinct", "singletons", "gaps", "two_classes", "negative")
EMBEDDING_PATTERNS = ("random", "collapsed", "zero", "large", "tiny", "one_zero_row", "duplicates")
PROPERTY_SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, print_blob=True,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECONDARY_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=20)


# ----------------------------------------------------------------------------------------------- discovery
def _discover():
    "`{module.Class: class}` of concrete exported EmbeddingLoss subclasses, and `{module: error}` of failed imports."
    found, errors = {}, {}
    for info in sorted(pkgutil.iter_modules(structloss.__path__), key=lambda i: i.name):
        if info.name.startswith("_"): continue
        if info.name == "distributed": continue  # wrappers of these losses; tests/test_distributed.py
        try: mod = importlib.import_module(f"structloss.{info.name}")
        except Exception as e:  # a module that does not import is a failure of the suite
            errors[info.name] = f"{type(e).__name__}: {e}"
            continue
        for name in getattr(mod, "__all__", [n for n in vars(mod) if not n.startswith("_")]):
            obj = getattr(mod, name, None)
            if (inspect.isclass(obj) and issubclass(obj, EmbeddingLoss) and obj is not EmbeddingLoss
                    and obj.__module__ == mod.__name__ and obj.__name__ == name):  # aliases are tested once
                found[f"{info.name}.{name}"] = obj
    return found, errors


LOSSES, IMPORT_ERRORS = _discover()


def _build(cls, d: int, seed: int = 0):
    "The loss with its defaults, and `num_classes`, `embedding_size` where they are required arguments."
    torch.manual_seed(seed)
    kwargs, params = {}, inspect.signature(cls).parameters
    for key, value in (("num_classes", NUM_CLASSES), ("embedding_size", d)):
        if key in params and params[key].default is inspect.Parameter.empty: kwargs[key] = value
    return cls(**kwargs)


def _is_learnable(cls) -> bool:
    "A loss with learnable class vectors (proxies, centres, weights): its value depends on label ids."
    try: return any(True for _ in _build(cls, 4).parameters())
    except Exception: return False


def _is_abstract(cls) -> bool:
    "A base class whose mathematics is left to subclasses raises NotImplementedError on a plain call."
    try: _build(cls, 4)(torch.randn(8, 4), torch.arange(8) % 4)
    except NotImplementedError: return True
    except Exception: return False
    return False


CONCRETE = {k: c for k, c in LOSSES.items() if not _is_abstract(c)}
LOSS_IDS = sorted(CONCRETE)
RELATIONAL_IDS = [k for k in LOSS_IDS if not _is_learnable(CONCRETE[k])]
# Losses whose value depends on the order of the batch by design (documented, as in pytorch-metric-learning).
ORDER_DEPENDENT = {"pairs.NPairsLoss": "keeps the first positive pair of each class, as PML's NPairsLoss does"}
ORDER_IDS = [k for k in LOSS_IDS if k not in ORDER_DEPENDENT]


def test_every_module_imports():
    assert not IMPORT_ERRORS, f"structloss modules that fail to import: {IMPORT_ERRORS}"


def test_losses_were_found():
    assert LOSS_IDS, "no EmbeddingLoss subclass was found in structloss.*"


# ----------------------------------------------------------------------------------------------- inputs
def _labels(pattern: str, n: int, g: torch.Generator) -> torch.Tensor:
    "Labels following `pattern`: in [0, NUM_CLASSES) except for `negative`."
    if pattern == "one_class": y = torch.full((n,), 3)
    elif pattern == "all_distinct": y = torch.randperm(NUM_CLASSES, generator=g)[:n] if n <= NUM_CLASSES else torch.arange(n) % NUM_CLASSES
    elif pattern == "singletons":  # one pair of class 0, every other sample alone in its class
        y = torch.arange(n) % NUM_CLASSES; y[: min(n, 2)] = 0
    elif pattern == "gaps": y = torch.tensor([0, 5, 11])[torch.randint(3, (n,), generator=g)]
    elif pattern == "two_classes": y = torch.arange(n) % 2 * 7
    elif pattern == "negative": y = torch.randint(NUM_CLASSES, (n,), generator=g) - NUM_CLASSES // 2  # invalid ids for class vectors
    else: y = torch.randint(NUM_CLASSES, (n,), generator=g)
    return y.long()


def _embeddings(pattern: str, n: int, d: int, g: torch.Generator) -> torch.Tensor:
    "float64 embeddings following `pattern`."
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if pattern == "collapsed": x = x[:1].expand(n, d).clone()
    elif pattern == "zero": x = torch.zeros(n, d, dtype=torch.float64)
    elif pattern == "large": x = x * 100
    elif pattern == "tiny": x = x * 1e-4
    elif pattern == "one_zero_row": x[0] = 0
    elif pattern == "duplicates": x[n // 2:] = x[: n - n // 2].clone()
    return x


def _describe(cls, n, d, lp, ep, dtype, seed):
    return f"{cls.__name__}: N={n}, d={d}, labels={lp}, embeddings={ep}, dtype={dtype}, seed={seed}"


def _call(loss, z, y, where):
    "The loss value, or None if it raised an acceptable, explained ValueError/TypeError."
    try:
        value = loss(z, y)
        event("computed a value")
        return value
    except (ValueError, TypeError) as e:
        assert len(str(e)) > 10, f"{where}: {type(e).__name__} without an explanation: {e!r}"
        event(f"{type(e).__name__}: {str(e)[:60]}")
        return None
    except Exception as e:
        pytest.fail(f"{where}: raised {type(e).__name__}: {e}")


# ----------------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("key", LOSS_IDS)
@PROPERTY_SETTINGS
@given(n=st.integers(1, MAX_N), d=st.integers(1, MAX_D), label_pattern=st.sampled_from(LABEL_PATTERNS),
       embedding_pattern=st.sampled_from(EMBEDDING_PATTERNS), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_finite_value_and_gradients_or_clear_error(key, n, d, label_pattern, embedding_pattern, dtype, seed):
    cls = CONCRETE[key]
    where = _describe(cls, n, d, label_pattern, embedding_pattern, dtype, seed)
    g = torch.Generator().manual_seed(seed)
    y = _labels(label_pattern, n, g)
    z = _embeddings(embedding_pattern, n, d, g).to(dtype).requires_grad_()
    loss = _build(cls, d, seed)
    value = _call(loss, z, y, where)
    if value is None: return
    assert isinstance(value, torch.Tensor) and value.ndim == 0, f"{where}: not a 0-dim tensor: {value!r}"
    assert value.dtype == dtype, f"{where}: value in {value.dtype}, expected the input dtype {dtype}"
    assert torch.isfinite(value), f"{where}: value {value.item()}"
    if value.requires_grad:
        value.backward()
    grads = [("embeddings", z.grad)] + [(name, p.grad) for name, p in loss.named_parameters()]
    if dtype == torch.float16 and z.grad is not None and not torch.isfinite(z.grad).all():
        # float16 cannot hold a gradient above 65504; excuse it only when the float32 gradient is that large too
        z32 = z.detach().float().requires_grad_()
        loss32 = _build(cls, d, seed)
        g32, = torch.autograd.grad(loss32(z32, y), z32)
        if g32.abs().max() >= torch.finfo(torch.float16).max: grads = grads[1:]
    for name, grad in grads:
        assert grad is None or torch.isfinite(grad).all(), f"{where}: non-finite gradient w.r.t. {name}"
    # active_ratio: defined, finite, in [0, 1]
    try:
        ratio = loss.active_ratio(z.detach(), y)
    except (ValueError, TypeError) as e:
        assert len(str(e)) > 10, f"{where}: active_ratio raised {type(e).__name__} without an explanation"
        return
    except NotImplementedError as e:
        pytest.fail(f"{where}: active_ratio is not implemented ({e})")
    except Exception as e:
        pytest.fail(f"{where}: active_ratio raised {type(e).__name__}: {e}")
    ratio = float(torch.as_tensor(ratio).float())
    assert 0.0 <= ratio <= 1.0, f"{where}: active_ratio = {ratio}"


@pytest.mark.parametrize("key", RELATIONAL_IDS)
@SECONDARY_SETTINGS
@given(n=st.integers(1, MAX_N), d=st.integers(1, MAX_D), dtype=st.sampled_from((torch.float32, torch.float64)),
       single=st.booleans(), seed=st.integers(0, 2**16))
def test_nothing_to_learn_gives_zero(key, n, d, dtype, single, seed):
    "One sample, or one class whose embeddings are all the same vector: value 0, gradients 0."
    cls = CONCRETE[key]
    n = 1 if single else n
    where = _describe(cls, n, d, "one_class", "collapsed(non-zero)", dtype, seed)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, d, generator=g, dtype=torch.float64)
    v = v / v.norm() * 1.5  # a non-zero vector off the unit sphere
    z = v.expand(n, d).clone().to(dtype).requires_grad_()
    y = torch.full((n,), 4)
    loss = _build(cls, d, seed)
    value = _call(loss, z, y, where)
    if value is None: return
    assert float(value.detach()) == 0.0, f"{where}: value {float(value.detach())} on a batch with nothing to learn"
    if value.requires_grad:
        value.backward()
        assert z.grad is None or bool((z.grad == 0).all()), f"{where}: non-zero gradient, max |g| = {z.grad.abs().max():.3g}"


@pytest.mark.parametrize("key", ORDER_IDS)
@SECONDARY_SETTINGS
@given(n=st.integers(2, MAX_N), d=st.integers(1, MAX_D), label_pattern=st.sampled_from(LABEL_PATTERNS),
       seed=st.integers(0, 2**16))
def test_batch_order_invariance(key, n, d, label_pattern, seed):
    cls = CONCRETE[key]
    where = _describe(cls, n, d, label_pattern, "random", torch.float64, seed)
    g = torch.Generator().manual_seed(seed)
    y, z = _labels(label_pattern, n, g), _embeddings("random", n, d, g)
    perm = torch.randperm(n, generator=g)
    loss = _build(cls, d, seed)
    a = _call(loss, z, y, where)
    if a is None: return
    b = loss(z[perm], y[perm])
    torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9, msg=lambda m: f"{where}: order changes the value. {m}")


@pytest.mark.parametrize("key", RELATIONAL_IDS)
@SECONDARY_SETTINGS
@given(n=st.integers(2, MAX_N), d=st.integers(1, MAX_D), label_pattern=st.sampled_from(LABEL_PATTERNS),
       seed=st.integers(0, 2**16))
def test_relabelling_invariance(key, n, d, label_pattern, seed):
    "Without class vectors, only which samples share a label matters: y -> 7*y - 40 (negative ids, gaps)."
    cls = CONCRETE[key]
    where = _describe(cls, n, d, label_pattern, "random", torch.float64, seed)
    g = torch.Generator().manual_seed(seed)
    y, z = _labels(label_pattern, n, g), _embeddings("random", n, d, g)
    loss = _build(cls, d, seed)
    a = _call(loss, z, y, where)
    if a is None: return
    b = _call(loss, z, 7 * y - 40, where + " (relabelled 7*y-40)")
    assert b is not None, f"{where}: rejects negative or gapped labels that core's conventions allow"
    torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9, msg=lambda m: f"{where}: relabelling changes the value. {m}")


@pytest.mark.parametrize("key", LOSS_IDS)
def test_bad_inputs_raise_clear_errors(key):
    "Malformed inputs give ValueError/TypeError with a message, never IndexError/RuntimeError or a value."
    cls = CONCRETE[key]
    z, y = torch.randn(6, 4), torch.tensor([0, 1, 1, 2, 2, 0])
    nan = z.clone(); nan[2, 1] = float("nan")
    cases = {"empty batch": (torch.randn(0, 4), torch.zeros(0, dtype=torch.long)),
             "1-d embeddings": (torch.randn(6), y), "integer embeddings": (z.long(), y),
             "float labels": (z, y.float()), "[N, 1] labels": (z, y[:, None]), "too few labels": (z, y[:4]),
             "NaN embedding": (nan, y), "numpy embeddings": (z.numpy(), y)}
    if any(True for _ in _build(cls, 4).parameters()):
        cases["label >= num_classes"] = (z, y + NUM_CLASSES)
        cases["wrong embedding size"] = (torch.randn(6, 5), y)
    for name, (emb, lab) in cases.items():
        loss = _build(cls, 4)
        with pytest.raises((ValueError, TypeError)) as info:
            loss(emb, lab)
        assert len(str(info.value)) > 10, f"{cls.__name__}, {name}: unexplained {info.type.__name__}"


@pytest.mark.parametrize("name", LOSS_IDS)
def test_every_loss_computes_on_an_ordinary_batch(name):
    # the property tests above accept a clear error as an answer; this one makes sure a loss is not all errors
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(12, 4, generator=g, dtype=torch.float64, requires_grad=True), torch.arange(12) % 4
    value = _build(CONCRETE[name], 4)(z, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()


def test_every_loss_of_the_book_is_tested():
    assert len(LOSS_IDS) == 13 and not IMPORT_ERRORS, (LOSS_IDS, IMPORT_ERRORS)
