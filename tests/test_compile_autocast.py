"""Every exported loss under `torch.compile` and under bfloat16 autocast on the CPU.

By default (CI): bfloat16 autocast for every loss; `torch._dynamo.explain` for every loss (graph
breaks printed with -s); `torch.compile(backend="aot_eager")` (Dynamo + AOTAutograd, without code
generation) for every loss, values and gradients. Inductor (C++ code generation) costs 20-100 s per
loss on a 2-core machine, so the inductor cases run only with STRUCTLOSS_INDUCTOR_TESTS=1.
Tolerances: compiled vs eager, float32: rtol 1e-4, atol 1e-5 (reordered reductions). bfloat16
autocast vs float32: loss within 2e-2 relative + 2e-2 absolute (bf16 keeps 8 mantissa bits and the
loss comes back in the input's dtype); gradient cosine similarity >= 0.99 to the float32 gradient.
"""
import inspect, os
import pytest
import torch
from structloss.greediness import find_losses

LOSSES = find_losses(verbose=False)
C, D, N = 4, 8, 16
INDUCTOR = os.environ.get("STRUCTLOSS_INDUCTOR_TESTS") == "1"

def make_loss(name):
    cls = LOSSES[name]
    params = inspect.signature(cls).parameters
    kw = {"num_classes": C} if "num_classes" in params else {}      # ids known: no torch.unique
    if "embedding_size" in params: kw.update(embedding_size=D, seed=0)
    return cls(**kw)

def batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, D, generator=g).to(dtype), torch.arange(C).repeat(N // C)

def value_and_grad(fn, z, y):
    z = z.clone().requires_grad_()
    v = fn(z, y)
    v.backward()
    return v.detach(), z.grad

def check_compiled(name, backend):
    loss = make_loss(name)
    z, y = batch()
    v0, g0 = value_and_grad(loss, z, y)
    torch._dynamo.reset()
    v1, g1 = value_and_grad(torch.compile(loss, backend=backend), z, y)
    torch.testing.assert_close(v1, v0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)

@pytest.mark.parametrize("name", sorted(LOSSES))
def test_aot_eager(name, one_thread):
    check_compiled(name, "aot_eager")

@pytest.mark.skipif(not INDUCTOR, reason="inductor compiles for 20-100 s per loss here; "
                                         "set STRUCTLOSS_INDUCTOR_TESTS=1")
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_inductor(name, one_thread):
    check_compiled(name, "inductor")

@pytest.mark.parametrize("name", sorted(LOSSES))
def test_graph_breaks(name, one_thread):
    "Dynamo traces the forward; how many graphs and breaks, and why (printed with -s)."
    loss = make_loss(name)
    z, y = batch()
    torch._dynamo.reset()
    report = torch._dynamo.explain(loss)(z, y)
    reasons = sorted({str(b.reason).splitlines()[0][:80] for b in report.break_reasons})
    print(f"\n{name}: {report.graph_count} graphs, {report.graph_break_count} breaks: {reasons}")
    assert report.graph_count >= 1 and report.graph_break_count >= len(reasons)

@pytest.mark.parametrize("name", sorted(LOSSES))
def test_autocast_bfloat16(name, one_thread):
    "A bf16 model output (a Linear under autocast) into the loss: finite, close to float32."
    loss = make_loss(name)
    x, y = batch()
    torch.manual_seed(0)
    layer = torch.nn.Linear(D, D)
    def run(autocast):
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            z = layer(x)
            v = loss(z, y)
        v.float().backward()
        return z.dtype, v.dtype, v.detach().float(), layer.weight.grad.clone()
    dt32, vt32, v32, g32 = run(False)
    dt16, vt16, v16, g16 = run(True)
    assert (dt32, vt32) == (torch.float32, torch.float32)
    assert (dt16, vt16) == (torch.bfloat16, torch.bfloat16)
    assert torch.isfinite(v16) and torch.isfinite(g16).all()
    torch.testing.assert_close(v16, v32, rtol=2e-2, atol=2e-2)
    if g32.norm() > 0:
        cos = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
        assert cos >= 0.99, f"{name}: gradient cosine {float(cos):.4f} under bfloat16 autocast"
