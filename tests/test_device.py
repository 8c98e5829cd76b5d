"""What changes when the device is a GPU, checked on a machine without one.

Two stand-ins for a CUDA device, since a test here cannot put a tensor on a GPU:

- under `FakeTensorMode`, tensors can claim to live on `cuda` (shapes, dtypes and devices, no values) without a
  GPU; an operation that mixes one with a CPU tensor raises, as it would on a GPU, and CUDA's float16 autocast
  can be entered on them. Their backward pass needs a real device, hence
- the `meta` device, which runs forward and backward without values; mixing `meta` and CPU tensors raises too.

Neither holds values, so the checks that read values on the CPU only are skipped on them, as on a GPU.
"""
import contextlib
import inspect
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from structloss.greediness import find_losses
from structloss.models import build_model
from structloss.train import TrainStep, _rng_state, _set_rng_state, knn_accuracy, svc_accuracy

N, C, D = 32, 4, 8
LOSSES = find_losses(verbose=False)
_autocast = torch.autocast


@pytest.fixture(autouse=True)
def assign_moved_parameters():
    "`module.to(fake or meta)` assigns new parameters (a fake tensor cannot be swapped into a CPU one)."
    before = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    yield
    torch.__future__.set_overwrite_module_params_on_conversion(before)


def cuda_autocast():
    "CUDA's float16 autocast, entered without a GPU (its constructor asks whether CUDA is available)."
    with mock.patch("torch.cuda.is_available", lambda: True):
        return _autocast("cuda", dtype=torch.float16)


@contextlib.contextmanager
def on_device(kind: str):
    "`(device, autocast or None)`: fake CUDA tensors, or the meta device (which has no autocast: switched off)."
    if kind == "cuda":
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield "cuda", cuda_autocast()
    else:
        meta_off = lambda device_type, *a, **k: (contextlib.nullcontext() if device_type == "meta"
                                                 else _autocast(device_type, *a, **k))
        with mock.patch("torch.autocast", meta_off):
            yield "meta", None


def make_loss(cls):
    params = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in (("num_classes", C), ("embedding_size", D)) if k in params})


@pytest.mark.parametrize("kind", ["cuda", "meta"])
def test_the_stand_ins_catch_a_device_mismatch(kind):
    "Not vacuous: a tensor made without `device=` inside a computation on the device raises."
    with on_device(kind) as (device, _):
        z = torch.randn(N, D, device=device)
        assert z.device.type == device
        with pytest.raises(Exception, match="device"):
            z + torch.zeros(N, D)
        (z + torch.zeros(N, D, device=z.device)).sum()


def test_cuda_autocast_is_on_for_the_fake_tensors():
    "The float16 autocast really applies to fake CUDA tensors: a linear layer's output is float16."
    lin = torch.nn.Linear(D, D)
    with on_device("cuda") as (device, autocast):
        lin.to(device)
        with autocast:
            assert lin(torch.randn(2, D, device=device)).dtype == torch.float16


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_stays_on_the_gpu(name):
    "Value, reference set and active ratio on fake CUDA tensors: float32, float16, float16 autocast."
    cls = LOSSES[name]
    loss = make_loss(cls)
    with on_device("cuda") as (device, autocast):
        loss.to(device)
        y = torch.arange(N, device=device) % C
        for dtype in (torch.float32, torch.float16):
            z = torch.randn(N, D, device=device, dtype=dtype, requires_grad=True)
            out = loss(z, y)
            assert (out.device.type, out.dtype) == ("cuda", dtype)
        with autocast:                       # the loss turns autocast off and computes in float32
            assert loss(z, y).device.type == "cuda"
        if cls.supports_reference:
            ref, ref_y = torch.randn(2 * N, D, device=device), torch.arange(2 * N, device=device) % C
            assert loss(z, y, ref_emb=ref, ref_labels=ref_y).device.type == "cuda"
        try: ratio = loss.active_ratio(z, y)
        except NotImplementedError: return
        assert ratio.device.type == "cuda"


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_backward_stays_on_the_device(name):
    "Forward and backward on the meta device: no CPU tensor enters the gradient either."
    loss = make_loss(LOSSES[name])
    with on_device("meta") as (device, _):
        loss.to(device)
        z = torch.randn(N, D, device=device, dtype=torch.float16, requires_grad=True)
        loss(z, torch.arange(N, device=device) % C).backward()
        assert z.grad.device.type == "meta" and z.grad.dtype == torch.float16
        for p in loss.parameters():
            assert p.grad is None or p.grad.device.type == "meta"


def objectives():
    "One objective of each kind `train` meets: CE, CE + terms, views, mixing, proxies, a memory."
    from structloss.contrastive import SupConLoss
    from structloss.memory import memory_loss
    from structloss.objectives import (ce_plus, cross_entropy, latent_boost, loss_only,
                                       silhouette_objective)
    from structloss.proxies import ProxyNCALoss
    from structloss.variance_greediness_paper import DiagnosedObjective
    sil = {"num_classes": 10}
    return {
        "ce": (cross_entropy, 1, True),
        "ce_sil": (lambda: silhouette_objective(silhouette_kwargs=sil), 1, True),
        "supcon2_sil": (lambda: silhouette_objective(supcon2=True, silhouette_kwargs=sil), 2, True),
        "latent_boost": (lambda: latent_boost(num_classes=10), 1, True),
        "proxies": (lambda: ce_plus(ProxyNCALoss(10, 16)), 1, True),
        "memory": (lambda: loss_only(memory_loss(embedding_size=16, memory_size=64)), 1, False),
        "diagnosed": (lambda: DiagnosedObjective(SupConLoss()), 1, False),
    }


# the diagnosed objective differentiates inside its forward: fake CUDA cannot, meta can
STEP_CASES = [(n, k) for n in sorted(objectives()) for k in ("cuda", "meta")
              if (n, k) != ("diagnosed", "cuda")]


@pytest.mark.parametrize("name, kind", STEP_CASES)
def test_train_step_under_float16_autocast(name, kind):
    """`TrainStep` as `train` builds it on a GPU: model under float16 autocast, objective in float32,
    every logged term on the device; backward on meta."""
    make, views, classifier = objectives()[name]
    torch.manual_seed(0)
    model = build_model("digits_cnn", (1, 8, 8), 10 if classifier else None, embedding_dim=16,
                        encoder_kwargs={"width": 8})
    objective = make()
    with on_device(kind) as (device, autocast):
        model.to(device); objective.to(device); objective.set_epoch(3, 5)
        step = TrainStep(model, objective, views, amp=True, amp_dtype=torch.float16)
        x = torch.randn(8, *((views,) if views > 1 else ()), 1, 8, 8, device=device)
        y = torch.arange(8, device=device) % 4
        with mock.patch("torch.autocast", lambda *a, **k: autocast or contextlib.nullcontext()):
            for _ in range(2):                                # a memory is read on the second step
                total, terms, logits, labels = step(x, y)
                assert (total.device.type, total.dtype) == (device, torch.float32)
                assert all(v.device.type == device for v in terms.values()), terms
                if kind == "meta": total.backward()


class OnDevice:
    "An RNG state as `torch.load(checkpoint, map_location='cuda')` returns it: a tensor off the CPU."
    def __init__(self, state): self.state = state
    def cpu(self): return self.state


def test_resume_restores_rng_states_that_were_mapped_to_the_gpu():
    """`train(resume=True)` loads the checkpoint onto the training device; the generators take their
    state from the CPU only (`torch.set_rng_state` raises a TypeError for any other tensor)."""
    torch.manual_seed(3)
    saved = _rng_state()
    expected = torch.rand(4)
    torch.manual_seed(99)
    _set_rng_state({**saved, "torch": OnDevice(saved["torch"])})
    torch.testing.assert_close(torch.rand(4), expected)


def test_accuracies_take_tensors_with_a_graph():
    "kNN and SVC accuracy detach and copy to the host what they are given (a GPU tensor, a live graph)."
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    z = (torch.nn.functional.one_hot(y, 3).float() + 0.1 * torch.randn(60, 3, generator=g)).requires_grad_()
    assert knn_accuracy(z, y, z, y, 1) == 1.0
    assert svc_accuracy(z, y, z, y) == 1.0
    assert svc_accuracy(z, y, z, y, max_train=30) == 1.0


def test_project_2d_takes_tensors_with_a_graph():
    from structloss.experiments import project_2d
    z = torch.randn(20, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    xy = project_2d(z)
    assert isinstance(xy, np.ndarray) and xy.shape == (20, 2)


@pytest.mark.parametrize("name", sorted(objectives()))
def test_train_step_float16_autocast_values(name, one_thread):
    """Real values under float16 autocast (as on a T4; the CPU runs it too): the total and the model's
    gradient agree with float32 (the terms compute in float32), and stay finite, on digits."""
    from structloss.data import digits_splits
    data = digits_splits(seed=0)
    x = torch.stack([data.train[i][0] for i in range(64)])
    y = torch.as_tensor([int(data.train[i][1]) for i in range(64)])
    make, views, classifier = objectives()[name]
    if views > 1: x = torch.stack([x, x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))], 1)
    out = {}
    for amp in (False, True):
        torch.manual_seed(0)
        model = build_model("digits_cnn", (1, 8, 8), 10 if classifier else None, embedding_dim=16,
                            normalize=name != "latent_boost", encoder_kwargs={"width": 8})
        objective = make(); objective.set_epoch(3, 5)
        total, _, _, _ = TrainStep(model, objective, views, amp=amp, amp_dtype=torch.float16)(x, y)
        total.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert torch.isfinite(total) and torch.isfinite(grad).all()
        out[amp] = (total.detach(), grad)
    (t32, g32), (t16, g16) = out[False], out[True]
    torch.testing.assert_close(t16, t32, rtol=1e-2, atol=1e-3)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


def distributed_losses():
    "The losses of the distributed chapter, in one process (R = 1): the same arithmetic."
    import structloss.distributed as sd
    from structloss.magnet import MagnetLoss
    from structloss.silhouette import SoftSilhouetteLoss
    return {
        "class_sum_silhouette": lambda: sd.ClassSumSoftSilhouetteLoss(SoftSilhouetteLoss(num_classes=C)),
        "class_sum_silhouette_relative": lambda: sd.ClassSumSoftSilhouetteLoss(
            SoftSilhouetteLoss(num_classes=C, metric="sqeuclidean", temperature_scale="relative")),
        "class_sum_magnet": lambda: sd.ClassSumMagnetLoss(MagnetLoss(), C),
        "global_batch": lambda: sd.GlobalBatchLoss(SoftSilhouetteLoss(num_classes=C)),
    }


@pytest.mark.parametrize("kind", ["cuda", "meta"])
@pytest.mark.parametrize("name", sorted(distributed_losses()))
def test_distributed_losses_stay_on_the_device(name, kind):
    loss = distributed_losses()[name]()
    with on_device(kind) as (device, _):
        loss.to(device)
        z = torch.randn(N, D, device=device, dtype=torch.float16, requires_grad=True)
        out = loss(z, torch.arange(N, device=device) % C)
        assert (out.device.type, out.dtype) == (device, torch.float16)
        if kind == "meta":
            out.backward()
            assert z.grad.device.type == "meta"
