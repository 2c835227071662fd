"""netvis.models.create / list_models: names, options and errors."""

import pytest
import torch
from torch import nn

from netvis.models import create, list_models


def test_list_models_names_the_lecture_architectures():
    names = list_models()
    for expected in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121",
                     "densenet169", "densenet201", "densenet264", "densenet_bc_100", "resnet20_cifar",
                     "resnet56_cifar", "plain20_cifar", "plain56_cifar"]:
        assert expected in names
    assert names == sorted(names)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds(name):
    with torch.device("meta"):
        model = create(name)
    assert isinstance(model, nn.Module)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_create_forwards_options():
    model = create("resnet18", num_classes=7, in_channels=1, stem="cifar")
    out = model.eval()(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 7)


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        create("resnet19")


def test_unsupported_option_is_named():
    with pytest.raises(ValueError, match="'colour'.*supported options"):
        create("resnet18", colour="red")
    with pytest.raises(ValueError, match="'growth'"):
        create("densenet121", growth=12)


def test_wrong_input_channels_is_a_clear_error():
    model = create("resnet18").eval()
    with pytest.raises(ValueError, match="in_channels"):
        model(torch.randn(1, 1, 64, 64))


def test_architecture_fixed_by_the_name_is_not_an_option():
    with pytest.raises(ValueError, match="'layers'"):
        create("resnet18", layers=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="'block_config'"):
        create("densenet121", block_config=(1, 1, 1, 1))
