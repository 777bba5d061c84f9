"""The convolutional models: output shape, Opacus compatibility as built, and weight loading."""

from __future__ import annotations

import pytest
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models import MODELS, build_model
from models.resnet import num_groups
from utils.config import ModelConfig
from utils.errors import ConfigError

IMAGE_MODELS = ["resnet18", "cnn"]


def small(name: str, **settings) -> nn.Module:
    """A narrow network (width 8) for fast tests."""
    return build_model(ModelConfig(name=name, width=8, **settings), (3, 64, 64))


def test_both_are_registered():
    assert {"resnet18", "cnn"} <= set(MODELS.names())


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("size", [64, 128])
def test_one_logit_per_example_at_64_and_128_px(name, size):
    model = build_model(ModelConfig(name=name, width=8), (3, size, size))
    assert model(torch.randn(5, 3, size, size)).shape == (5,)
    assert model(torch.randn(1, 3, size, size)).shape == (1,)  # a batch of one keeps its batch axis


def test_resnet18_at_standard_width_has_the_paper_architecture():
    model = build_model(ModelConfig(name="resnet18", width=64), (3, 128, 128))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert len(convs) == 17  # + the linear head: 18 weight layers
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.18e6, rel=0.01)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 for m in norms)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_opacus_accepts_the_models_as_built(name):
    model = small(name)
    assert ModuleValidator.validate(model, strict=False) == []
    ModuleValidator.validate(model, strict=True)  # raises on any incompatibility
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())


# Opacus' notice about its non-cryptographic RNG, and torch's about full backward hooks on a first
# layer whose input needs no gradient (Opacus' hooks only need the parameters' gradients).
@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook is firing")
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_one_dp_sgd_step_through_opacus(name):
    torch.manual_seed(0)
    model = small(name)
    data = TensorDataset(torch.randn(16, 3, 64, 64), torch.randint(0, 2, (16,)).float())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = PrivacyEngine(accountant="rdp")
    private_model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=DataLoader(data, batch_size=8),
        noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True,
    )
    before = [p.detach().clone() for p in private_model.parameters()]
    x, y = next(x_y for x_y in loader if len(x_y[0]) > 0)  # Poisson batches can be empty
    optimizer.zero_grad()
    nn.functional.binary_cross_entropy_with_logits(private_model(x), y).backward()
    # Opacus computed one gradient per example for every parameter (GroupNorm and conv included).
    for parameter in private_model.parameters():
        assert parameter.grad_sample.shape == (len(x), *parameter.shape)
    optimizer.step()
    after = list(private_model.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after))  # noise reaches every weight
    assert engine.get_epsilon(delta=1e-5) > 0


def test_weights_of_another_model_are_refused(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save(small("cnn").state_dict(), path)
    with pytest.raises(ConfigError, match="does not match model ResNet18"):
        small("resnet18", weights=str(path))
    # The same architecture loads, and computes the same function.
    loaded = small("cnn", weights=str(path))
    original = small("cnn")
    original.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), original(x))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_tabular_inputs_are_a_config_error(name):
    with pytest.raises(ConfigError, match="model.name: .* Use model.name: mlp"):
        build_model(ModelConfig(name=name), (104,))


def test_group_counts():
    assert [num_groups(c) for c in (64, 128, 256, 512)] == [32, 32, 32, 32]  # Wu and He's 32
    assert [num_groups(c) for c in (8, 16, 24)] == [4, 8, 12]  # two channels per group when narrow
    assert all(c % num_groups(c) == 0 for c in range(1, 600))
