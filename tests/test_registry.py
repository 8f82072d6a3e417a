from __future__ import annotations

from dataclasses import dataclass

import pytest

from peftbench.errors import UsageError
from peftbench.registry import available_methods, get_method, load_plugin, register_method


def test_builtin_methods_registered():
    assert {"linear", "full"} <= set(available_methods())


def test_unknown_method_suggests_close_names():
    with pytest.raises(UsageError, match=r"unknown method 'lineer'; did you mean 'linear'\?"):
        get_method("lineer")


def test_unknown_method_suggests_prefix_matches():
    with pytest.raises(UsageError, match=r"unknown method 'vpt'; did you mean 'vpt_deep', 'vpt_shallow'\?"):
        get_method("vpt")


def test_duplicate_registration_rejected():
    @dataclass
    class Cfg:
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_method("linear", config=Cfg, description="x")(lambda *a: None)


def test_config_must_be_dataclass():
    with pytest.raises(TypeError):
        register_method("bad_cfg", config=dict, description="x")


def test_plugin_file_registers_method(tmp_path):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(
        "from dataclasses import dataclass\n"
        "from peftbench.registry import register_method\n"
        "@dataclass\nclass Cfg:\n    pass\n"
        "@register_method('plugin_probe_test', config=Cfg, description='test plugin')\n"
        "def build(backbone, num_classes, cfg, ctx):\n    return backbone\n")
    load_plugin(plugin)
    assert get_method("plugin_probe_test").description == "test plugin"


def test_missing_plugin_file_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_plugin(tmp_path / "nope.py")
