"""One vocabulary across the command-line tools: one flag per thing, old spellings as hidden aliases,
help text on every flag (deepspec/cli.py's add_* helpers)."""

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from deepspec.cli import add_draft, add_output_dir, add_overwrite, add_target, hide_aliases

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted(
    p.relative_to(ROOT)
    for folder in ("scripts", "bench", "eval_datasets", "deepspec")
    for p in (ROOT / folder).rglob("*.py")
) + [Path("train.py"), Path("eval.py")]

# Spellings that name a thing another flag names everywhere else; accepted only as aliases (or where the
# public DeepSpec release's tool spells it so: eval.py's *_name_or_path, generate_train_data.py --max-tokens).
OLD = {
    "--out": "--output-dir",
    "--output": "--output-dir or --output-file-path",
    "--force": "--overwrite",
    "--num": "--num-samples",
    "--samples": "--num-samples",
    "--max-samples": "--num-samples",
    "--target-model": "--target",
    "--target-name-or-path": "--target / eval.py's --target_name_or_path",
    "--draft-name-or-path": "--draft / eval.py's --draft_name_or_path",
}
PUBLIC = {("eval.py", "--target_name_or_path"), ("eval.py", "--draft_name_or_path")}


HELPERS = {"add_argument", "add_flag", "add_target", "add_draft", "add_output_dir", "add_output_file", "add_overwrite"}
HELPERS |= {"add_max_new_tokens", "add_num_samples"}


def flag_calls(path: Path):
    """(flag names, help node, line) of every add_argument / deepspec.cli add_* call in a file."""
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        name = getattr(getattr(node, "func", None), "attr", None) or getattr(getattr(node, "func", None), "id", None)
        if isinstance(node, ast.Call) and name in HELPERS and not str(path).endswith("deepspec/cli.py"):
            flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            yield flags, {k.arg: k.value for k in node.keywords}.get("help"), node.lineno


def test_every_flag_has_help_and_no_tool_registers_an_old_spelling():
    missing, old = [], []
    for path in TOOLS:
        for flags, help_node, line in flag_calls(path):
            suppressed = isinstance(help_node, ast.Attribute) and help_node.attr == "SUPPRESS"
            if help_node is None or (isinstance(help_node, ast.Constant) and not help_node.value):
                missing.append(f"{path}:{line} {flags}")
            for flag in flags:
                if flag in OLD and not suppressed:
                    old.append(f"{path}:{line} {flag} (use {OLD[flag]}, keep {flag} as an alias)")
                if "_" in flag and flag.startswith("--") and (str(path), flag) not in PUBLIC:
                    old.append(f"{path}:{line} {flag} (flags are spelled with '-')")
    assert not missing, "flags without help text:\n" + "\n".join(missing)
    assert not old, "old spellings registered as flags:\n" + "\n".join(old)


def test_aliases_parse_to_the_same_value_and_stay_out_of_help():
    parser = argparse.ArgumentParser(prog="tool")
    add_target(parser, aliases=("--target-model",), default=None, help="the target")
    add_draft(parser, aliases=("--draft_name_or_path",), default=None, help="the draft")
    add_output_dir(parser, aliases=("--out",), default=None, help="where to write")
    add_overwrite(parser, aliases=("--force",), help="replace")
    old = parser.parse_args(["--target-model", "t", "--draft_name_or_path", "d", "--out", "o", "--force"])
    new = parser.parse_args(["--target", "t", "--draft", "d", "--output-dir", "o", "--overwrite"])
    assert vars(old) == vars(new) == {"target": "t", "draft": "d", "output_dir": "o", "overwrite": True}
    text = parser.format_help()
    assert all(flag in text for flag in ("--target", "--draft", "--output-dir", "--overwrite"))
    assert not any(flag in text for flag in ("--target-model", "--draft_name_or_path", "--out ", "--force"))


def test_aliases_hide_in_groups_once_the_parser_is_told():
    parser = hide_aliases(argparse.ArgumentParser(prog="tool"))
    add_target(parser.add_argument_group("target"), aliases=("--target-model",), help="the target")
    assert "--target-model" not in parser.format_help() and parser.parse_args(["--target-model", "x"]).target == "x"


def test_a_flag_without_help_is_refused_when_the_parser_is_built():
    with pytest.raises(ValueError, match="--target needs help text"):
        add_target(argparse.ArgumentParser(), help="")


@pytest.mark.parametrize(
    "script, shown, hidden",
    [
        ("scripts/export/export_draft.py", ["--output-dir", "--overwrite", "--draft", "--target"], ["--output "]),
        ("scripts/data/estimate_target_cache_size.py", ["--target ", "--num-samples"], ["--target-model"]),
        ("scripts/eval/calibrate.py", ["--draft "], ["--draft_name_or_path", "--draft-name-or-path"]),
    ],
)
def test_the_tools_help_shows_one_name(script, shown, hidden):
    out = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    ).stdout
    assert all(flag in out for flag in shown), out
    assert not any(flag in out for flag in hidden), out
