"""`Objective` with every loss of the book as a term: single- and two-view batches, both forms (eqs. 1-2)."""
from __future__ import annotations
import pytest
import torch
import torch.nn.functional as F

from structloss.greediness import build_loss, find_losses
from structloss.objectives import Objective, ce_plus, latent_boost, silhouette_objective

LOSSES = find_losses(verbose=False)
N, C, D = 12, 4, 6


def _batch(views: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3, 3, 0, 1])
    shape = (N, D) if views == 1 else (N, views, D)
    z = torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()
    logits = torch.randn(*shape[:-1], C, generator=g, dtype=dtype).requires_grad_()
    return logits, z, labels


def test_losses_found():
    assert sorted(LOSSES) == ["ArcFaceLoss", "CenterContrastiveLoss", "CenterLoss", "ContrastiveLoss", "GraphSmoothnessLoss", "InfoNCELoss", "LatentBoostLoss", "MagnetLoss", "NPairsLoss", "ProxyNCALoss", "SoftSilhouetteLoss", "SupConLoss", "TripletMarginLoss"]   # a chapter whose import fails would silently shrink this list


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("mix", [None, 0.75])
def test_every_loss_as_a_term(name, views, mix):
    loss = build_loss(LOSSES[name], num_classes=C, embedding_size=D).double()
    objective = Objective({"term": (loss, 0.5)}, mix=mix)
    logits, z, labels = _batch(views)
    total, logs = objective(logits, z, labels)
    extra = [f"term_{k}" for k in getattr(loss, "extra_logs", dict)()]   # e.g. Latent Boost's PCA dim
    assert sorted(logs) == sorted(["ce", "term", "total"] + extra)
    assert torch.isfinite(total) and total.dtype == torch.float64
    # eq. 1 / eq. 2 recomputed by hand, views flattened sample by sample unless the loss takes them
    with torch.no_grad():
        ce = F.cross_entropy(logits.reshape(-1, C), labels.repeat_interleave(views))
        if getattr(loss, "accepts_views", False) or views == 1: term = loss(z, labels)
        else: term = loss(z.reshape(-1, D), labels.repeat_interleave(views))
        want = ce + 0.5 * term if mix is None else mix * 0.5 * term + (1 - mix) * ce
    torch.testing.assert_close(total.detach(), want)
    total.backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(logits.grad).all()
    for p in objective.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_float32_total(dtype):
    name = sorted(LOSSES)[0]
    objective = ce_plus(build_loss(LOSSES[name], num_classes=C, embedding_size=D), 0.5)
    logits, z, labels = _batch(2, dtype=dtype)
    total, logs = objective(logits, z, labels)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert torch.isfinite(z.grad).all()


def test_learnable_terms_are_parameters_of_the_objective():
    learnable = [n for n, c in LOSSES.items() if any(True for _ in build_loss(c, C, D).parameters())]
    if not learnable: pytest.skip("no loss with learnable class vectors is available")
    for name in learnable:
        objective = ce_plus(build_loss(LOSSES[name], C, D))
        assert len(list(objective.parameters())) > 0, name


def test_latent_boost_set_epoch_reaches_the_loss():
    objective = latent_boost(lam=0.5)
    objective.set_epoch(7, 20)
    loss = next(iter(objective.losses.values()))
    assert (loss.epoch, loss.num_epochs) == (7, 20)


def test_silhouette_objectives():
    logits, z, labels = _batch(2)
    total, logs = silhouette_objective(0.3, supcon2=True)(logits, z, labels)
    assert sorted(logs) == ["ce", "silhouette", "supcon", "total"] and torch.isfinite(total)
    with pytest.raises(ValueError, match="expects 2 views"):
        silhouette_objective(0.3, supcon2=True)(logits[:, 0], z[:, 0], labels)
    total1, logs1 = silhouette_objective(0.3)(logits[:, 0], z[:, 0], labels)
    assert sorted(logs1) == ["ce", "silhouette", "total"] and torch.isfinite(total1)


def test_latent_boost_warmup_is_ce_only_then_logs_the_pca_dimension():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 4, generator=g); y = torch.arange(3).repeat(4); logits = torch.randn(12, 3, generator=g)
    objective = latent_boost(lam=0.4, warmup_epochs=3)
    for epoch in range(3):
        objective.set_epoch(epoch, 10)
        total, logs = objective(logits, z, y)
        assert sorted(logs) == ["ce", "total"]
        assert torch.allclose(total, 0.6 * F.cross_entropy(logits, y))
    objective.set_epoch(3, 10)
    total, logs = objective(logits, z, y)
    assert sorted(logs) == ["ce", "latent_boost", "latent_boost_dim", "total"]
    loss = objective.losses["latent_boost"]
    assert (loss.epoch, loss.num_epochs, loss.beta) == (0, 7, 1.0)
    with pytest.raises(ValueError, match="`warmup_epochs` must be an int >= 0"):
        latent_boost(warmup_epochs=-1)


def test_inputs_are_checked_once_for_all_terms():
    "The embeddings' values are read once by the objective, not again by each EmbeddingLoss term."
    from unittest import mock
    import structloss.core as core
    from structloss.contrastive import InfoNCELoss, SupConLoss
    calls = []
    real = core.check_finite
    def counting(x, name):
        calls.append(name)
        return real(x, name)
    objective = Objective({"a": (SupConLoss(), 1.0), "b": (InfoNCELoss(), 0.5)})
    logits, z, labels = _batch(2)
    with mock.patch.object(core, "check_finite", counting):
        total, _ = objective(logits, z, labels)
    assert calls.count("embeddings") == 1
    # the checked path gives what each loss gives when called on its own
    with torch.no_grad():
        ce = F.cross_entropy(logits.reshape(-1, C), labels.repeat_interleave(2))
        want = ce + SupConLoss()(z, labels) + 0.5 * InfoNCELoss()(z.reshape(-1, D), labels.repeat_interleave(2))
    torch.testing.assert_close(total.detach(), want)


def test_objective_errors_stay_clear():
    from structloss.contrastive import SupConLoss
    logits, z, labels = _batch(1)
    objective = Objective({"s": (SupConLoss(), 1.0)})
    bad = z.detach().clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        objective(logits, bad, labels)
    with pytest.raises(ValueError, match="cross-entropy"):
        objective(logits, z, labels + C)
    with pytest.raises(ValueError, match="one number"):
        Objective({"s": (SupConLoss(reduction="none"), 1.0)})(logits, z, labels)
    with pytest.raises(ValueError, match="d = 0"):
        objective(logits, z[:, :0], labels)
