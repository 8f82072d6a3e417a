"""A CLI that explains itself: suite defaults that agree, help for every option, valid names listed on errors."""

from __future__ import annotations

import argparse

import pytest

from peftbench.cli import main


def test_methods_and_tasks_default_to_the_run_suite_and_say_so(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("defaults from suite mini (recipe peftbench/suites/mini.yaml)")
    assert "    epochs = 15  " in out and "    vpt_deep.prompt_length = 5  " in out
    assert main(["methods", "--suite", "vtab1k"]) == 0
    out = capsys.readouterr().out
    assert "    epochs = 100  " in out and "    vpt_deep.prompt_length = 50  " in out
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "suite mini (the default" in out and "sprite_loc" in out and "cifar100" not in out


def test_bare_command_prints_help_and_exits_0(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: peftbench") and "inspect" in out and "make-synthetic" in out


def test_plugin_is_accepted_after_the_command(tmp_path, capsys):
    plugin = tmp_path / "late_plugin.py"
    plugin.write_text(
        "from dataclasses import dataclass\n"
        "from peftbench.registry import register_method\n"
        "@dataclass\nclass Cfg:\n    pass\n"
        "@register_method('late_plugin_probe', config=Cfg, description='registered after the command')\n"
        "def build(backbone, num_classes, cfg, ctx):\n    return backbone\n")
    assert main(["methods", "--plugin", str(plugin)]) == 0
    assert "late_plugin_probe v1  registered after the command" in capsys.readouterr().out


def test_every_option_of_every_command_has_help():
    from peftbench.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lacking = [f"{name} {action.dest}" for name, command in [("peftbench", parser), *sub.choices.items()]
               for action in command._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert lacking == []


@pytest.mark.parametrize("argv, names", [
    (["tasks", "--suite", "vtab2k"], "(suites: fgvc, mini, vtab1k)"),
    (["run", "--tasks", "digitz"], "(tasks: digits, texture, sprite_loc, sprite_ori, count; or 'all')"),
    (["inspect", "--method", "full", "--suite", "vtab1k", "--task", "cifar1000"], "(tasks: cifar100, caltech101, "),
])
def test_unknown_task_or_suite_lists_the_valid_names(argv, names, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown ") and names in err, err
