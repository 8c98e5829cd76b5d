"""One check shared by the loss tests: a batch given as its own reference set is the plain call."""
import torch


def assert_batch_is_its_own_reference(loss, x, y, rtol=1e-9, atol=1e-10):
    """`loss(x, y, ref_emb=x, ref_labels=y, self_in_ref=True) == loss(x, y)` in float64: value, gradient
    (weighted per sample, so that `reduction="none"` is checked row by row) and active ratio."""
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    plain, with_self = loss(a, y), loss(b, y, ref_emb=b, ref_labels=y, self_in_ref=True)
    torch.testing.assert_close(with_self, plain, rtol=rtol, atol=atol)
    w = torch.linspace(1, 2, plain.numel(), dtype=plain.dtype).reshape(plain.shape)
    (plain * w).sum().backward()
    (with_self * w).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=10 * rtol, atol=10 * atol)
    torch.testing.assert_close(loss.active_ratio(x, y),
                               loss.active_ratio(x, y, ref_emb=x, ref_labels=y, self_in_ref=True))
