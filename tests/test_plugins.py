"""Plug-ins through installed entry points, as a user's own package would register them."""

from __future__ import annotations

import importlib
import sys

import pytest

from exitbench.datasets.registry import DATASETS, open_testset
from exitbench.models.registry import ARCHITECTURES
from exitbench.plugins import PluginError, Registry
from exitbench.policies import POLICIES, parse_policy

ENTRY_POINTS = """\
[exitbench.datasets]
tiny-synthetic = exitbench_userplugin:tiny_set

[exitbench.models]
user-press = exitbench_userplugin:user_press

[exitbench.policies]
always-deepest = exitbench_userplugin:AlwaysDeepest
"""

MODULE = '''
from exitbench.datasets.synthetic import SyntheticMixtures
from exitbench.models.press import build_press
from exitbench.policies.builtin import Static


def tiny_set(path=None, **options):
    return SyntheticMixtures(num_utterances=2, seconds=1.0)


def user_press(config=None):
    return build_press({"size": "tiny"})


class AlwaysDeepest(Static):
    name = "always-deepest"
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A fake installed distribution: a module plus a dist-info folder with entry_points.txt."""
    (tmp_path / "exitbench_userplugin.py").write_text(MODULE)
    info = tmp_path / "exitbench_userplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: exitbench-userplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("exitbench_userplugin", None)
    for reg, name in ((DATASETS, "tiny-synthetic"), (ARCHITECTURES, "user-press"), (POLICIES, "always-deepest")):
        reg.unregister(name)


def test_entry_points_register_datasets_models_and_policies(user_package):
    assert "tiny-synthetic" in DATASETS.names()
    assert len(open_testset("tiny-synthetic").ids()) == 2
    model = ARCHITECTURES.get("user-press")()
    assert model.levels[0] == "exit1"
    assert "always-deepest" in POLICIES.names()
    assert parse_policy("always-deepest:l=1").values["l"] == 1


def test_unknown_plugin_names_list_what_is_known():
    reg = Registry("thing", "exitbench.nonexistent-group", {"a": "math:sqrt"})
    assert reg.get("a")(4.0) == 2.0
    with pytest.raises(PluginError, match="unknown thing 'b'; known: a"):
        reg.get("b")
    with pytest.raises(PluginError, match="cannot import module"):
        reg.get("no_such_module_xyz:f")


def test_registries_check_what_they_hold_and_refuse_a_silent_overwrite():
    from exitbench.datasets.base import DatasetError
    from exitbench.policies import PolicyError
    from exitbench.policies.builtin import Static

    with pytest.raises(PolicyError, match="policy 'static' is already registered; pass replace=True"):
        POLICIES.register("static", Static)
    with pytest.raises(PolicyError, match="which is not a Policy subclass"):
        POLICIES.register("not-a-policy", dict)
    with pytest.raises(PolicyError, match="which is not a Policy subclass"):
        parse_policy("collections:OrderedDict")
    with pytest.raises(DatasetError, match="dataset 'math:pi' resolves to 3.14.*not callable"):
        DATASETS.get("math:pi")
    with pytest.raises(DatasetError, match="dataset 'fractions:Fraction' returned Fraction, not a TestSet"):
        DATASETS.build("fractions:Fraction", numerator=3)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'; known:"):
        open_testset("nope")
    try:  # replacing is allowed when asked for
        POLICIES.register("deep2", Static)
        POLICIES.register("deep2", Static, replace=True)
    finally:
        POLICIES.unregister("deep2")


def test_a_plugin_policy_is_stored_under_its_qualified_target(user_package):
    p = parse_policy("always-deepest:l=1")
    assert p.spec() == "exitbench_userplugin:AlwaysDeepest:l=1"
    assert parse_policy(p.spec()) == p  # the stored name resolves back without the entry point
    assert parse_policy("static:l=1").spec() == "static:l=1"
