"""tga_fast.models: every submodule stays reachable as a module (no exported function rebinds its name), and
every exported name exists."""

import importlib
import pkgutil
import sys
import types

import tga_fast.models as models


def test_no_export_shadows_a_submodule():
    for info in pkgutil.iter_modules(models.__path__):
        importlib.import_module(f"{models.__name__}.{info.name}")
        bound = getattr(models, info.name)
        assert isinstance(bound, types.ModuleType), f"tga_fast.models.{info.name} is a {type(bound).__name__}"
        assert bound is sys.modules[f"{models.__name__}.{info.name}"]
    assert not set(models.__all__) & {info.name for info in pkgutil.iter_modules(models.__path__)}


def test_all_names_exist():
    missing = [name for name in models.__all__ if not hasattr(models, name)]
    assert not missing
