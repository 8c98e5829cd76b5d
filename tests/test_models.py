"""structloss.models: shapes, normalisation, gradients, backbones."""
import pytest
import torch
from structloss.models import (EmbeddingModel, DigitsCNN, MNIST1DCNN, MLP, PreActResNet18, build_model,
                               torchvision_encoder, ENCODERS)


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see conftest.py


@pytest.mark.parametrize("encoder,shape", [("digits_cnn", (1, 8, 8)), ("mnist1d_cnn", (1, 40)), ("mlp", (1, 8, 8)),
                                           ("preact_resnet18", (3, 32, 32)), ("resnet18", (3, 32, 32)),
                                           ("resnet50", (3, 32, 32)), ("vgg16", (3, 32, 32)),
                                           ("efficientnet_b0", (3, 32, 32)), ("resnet18", (1, 28, 28)),
                                           ("resnet18", (3, 80, 80))])
def test_shapes_and_unit_norm(encoder, shape):
    torch.manual_seed(0)
    m = build_model(encoder, shape, num_classes=7, embedding_dim=16).eval()
    logits, z = m(torch.randn(2, *shape))
    assert logits.shape == (2, 7) and z.shape == (2, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = build_model("digits_cnn", (1, 8, 8), num_classes=3, embedding_dim=8)
    logits, z = m(torch.randn(6, 1, 8, 8))
    (logits.sum() + z.pow(3).sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_classifier_placement_and_options():
    enc = MLP(64, hidden=(32,))
    m = EmbeddingModel(enc, 32, embedding_dim=5, num_classes=4, classifier_on="features", normalize=False)
    assert m.classifier.in_features == 32
    _, z = m(torch.randn(3, 1, 8, 8)); assert not torch.allclose(z.norm(dim=1), torch.ones(3))
    m2 = EmbeddingModel(MLP(64, hidden=(32,)), 32, projection=None, num_classes=None)
    logits, z2 = m2(torch.randn(3, 64)); assert logits is None and z2.shape == (3, 32) and m2.embedding_dim == 32
    # classifier on the embedding: CE gradients reach the projection head
    m3 = EmbeddingModel(MLP(64, hidden=(32,)), 32, embedding_dim=5, num_classes=4)
    logits, _ = m3(torch.randn(3, 64)); logits.sum().backward()
    assert m3.projection[0].weight.grad.abs().sum() > 0


def test_no_pretrained_weights_and_cifar_stem():
    net, dim = torchvision_encoder("resnet18", small_input=True)
    assert dim == 512 and net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, torch.nn.Identity)
    net2, _ = torchvision_encoder("resnet18", small_input=False)
    assert net2.conv1.kernel_size == (7, 7)
    assert PreActResNet18().out_dim == 512 and MNIST1DCNN().out_dim == 128 and DigitsCNN(width=8).out_dim == 32


def test_errors():
    with pytest.raises(ValueError, match="Unknown encoder"): build_model("vit_b_16", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="Unknown torchvision backbone"): torchvision_encoder("alexnet")
    with pytest.raises(ValueError, match="`projection` must be"): EmbeddingModel(MLP(4), 256, projection="deep")
    assert set(ENCODERS) >= {"digits_cnn", "mnist1d_cnn", "resnet18", "resnet50", "vgg16", "efficientnet_b0", "preact_resnet18"}
