"""The architecture registry: every entry complete and importable, lookups by name only."""

from __future__ import annotations

import dataclasses

import pytest

from ivit_tvm.models import ARCHITECTURES, Architecture, architecture, config_from_dict
from ivit_tvm.models.registry import Lazy

FIELDS = [field.name for field in dataclasses.fields(Architecture)]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_sets_every_field(name):
    arch = ARCHITECTURES[name]
    assert arch.name == name
    assert arch.config_class().arch == name
    for field in FIELDS:
        value = getattr(arch, field)
        assert value not in (None, "", ()), f"{name}.{field} is empty"
        if isinstance(value, Lazy):
            assert callable(value.resolve()), f"{name}.{field} -> {value.path}"


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_field_names_exist_on_the_config(name):
    arch = ARCHITECTURES[name]
    config = arch.config_class()
    for field in (*arch.timm_fields, arch.depth_field):
        assert hasattr(config, field), f"{name}: {arch.config_class.__name__} has no {field}"


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_config_round_trips_through_dict(name):
    config = ARCHITECTURES[name].config_class()
    assert config_from_dict(config.to_dict()) == config


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown architecture 'convnext'.*vit, swin"):
        architecture("convnext")


def test_config_dict_of_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet'.*vit, swin"):
        config_from_dict({"arch": "resnet"})
