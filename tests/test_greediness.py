"""Greediness diagnostics on every loss of the book: finite reports, agreement with an ordinary backward."""
from __future__ import annotations
import math
import pytest
import torch

from structloss.greediness import build_loss, find_losses, greediness_report, loss_decay, mean_reports, objective_greediness
from structloss.objectives import Objective

LOSSES = find_losses(verbose=False)
N, C, D = 16, 4, 5


def _encoder_batch(seed=0):
    torch.manual_seed(seed)
    encoder = torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.Tanh(), torch.nn.Linear(8, D)).double()
    x = torch.randn(N, 7, dtype=torch.float64)
    labels = torch.arange(N) % C
    return encoder, x, labels


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_report_matches_backward(name):
    encoder, x, labels = _encoder_batch()
    loss = build_loss(LOSSES[name], num_classes=C, embedding_size=D).double()
    report = greediness_report(loss, encoder(x), labels, model=encoder)
    for key, value in report.items():
        assert math.isfinite(value), f"{name}: {key} = {value}"
    assert 0 <= report["active_ratio"] <= 1 and 0 <= report["grad_active_ratio"] <= 1
    # the same numbers from an ordinary backward
    z = encoder(x)
    z.retain_grad()
    encoder.zero_grad()
    value = loss(z, labels)
    value.backward()
    assert report["loss"] == pytest.approx(float(value.detach()), rel=1e-9, abs=1e-12)
    assert report["grad_norm_embeddings"] == pytest.approx(float(z.grad.norm()), rel=1e-7, abs=1e-12)
    g_theta = math.sqrt(sum(float((p.grad ** 2).sum()) for p in encoder.parameters() if p.grad is not None))
    assert report["grad_norm_params"] == pytest.approx(g_theta, rel=1e-7, abs=1e-12)
    rows = z.grad.norm(dim=1)
    assert report["grad_active_ratio"] == pytest.approx(float((rows > 0).double().mean()))


def test_report_does_not_touch_grad_fields_and_keeps_the_graph():
    encoder, x, labels = _encoder_batch()
    name = sorted(LOSSES)[0]
    loss = build_loss(LOSSES[name], num_classes=C, embedding_size=D).double()
    z = encoder(x)
    greediness_report(loss, z, labels, model=encoder)
    assert all(p.grad is None for p in encoder.parameters())
    loss(z, labels).backward()  # the training loop's own backward still works
    assert all(p.grad is not None for p in encoder.parameters())


def test_objective_greediness_and_mean_reports():
    encoder, x, labels = _encoder_batch()
    names = sorted(LOSSES)[:2]
    objective = Objective({f"t{i}": (build_loss(LOSSES[n], C, D).double(), 1.0) for i, n in enumerate(names)})
    reports = objective_greediness(objective, encoder(x), labels, model=encoder)
    assert list(reports) == [f"t{i}" for i in range(len(names))]
    mean = mean_reports(list(reports.values()))
    assert set(mean) == set(next(iter(reports.values())))


def test_loss_decay():
    assert loss_decay([4.0, 2.0, 0.4, 0.1]) == 2
    assert loss_decay([4.0, 2.0, 1.0]) is None
    with pytest.raises(ValueError, match="positive first loss"):
        loss_decay([-1.0, -3.0])


def test_tolerance_rule_makes_softmax_losses_look_selective():
    "Eq. 1 with `active_tol` can fall below 1 for a softmax loss whose every sample keeps a gradient (eq. 2)."
    from structloss.contrastive import InfoNCELoss
    from structloss.pairs import TripletMarginLoss
    labels = torch.arange(4).repeat_interleave(4)
    centres = torch.eye(4, 6, dtype=torch.float64) * 10
    z = centres[labels] + 0.01 * torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    soft = greediness_report(InfoNCELoss(temperature=0.07), z, labels)
    assert soft["active_ratio"] == 0.0 and soft["grad_active_ratio"] == 1.0   # nothing "active", all pushed
    hinge = greediness_report(TripletMarginLoss(margin=0.05), z, labels)
    assert hinge["active_ratio"] == 0.0 and hinge["grad_active_ratio"] == 0.0  # margins met: exactly zero
