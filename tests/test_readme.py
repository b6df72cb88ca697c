"""The README against what the code does: every Python block runs as written from a clean copy of the repository,
and the command lines, exit codes and tolerance rule it gives agree with `bnfold --help` and each command's help."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bnfold.cli import cli
from bnfold.cli.common import EXIT_CODES, WORST_EXIT_CODE
from bnfold.cli.verify_cmd import TOLERANCE_RULE

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = "`" * 3


def code_blocks(language: str) -> list:
    """The README's fenced blocks of one language ('' for unlabelled ones), in order."""
    blocks, current, opened = [], None, None
    for line in README.splitlines():
        if current is None and line.startswith(FENCE):
            current, opened = [], line[len(FENCE):].strip()
        elif current is not None and line.strip() == FENCE:
            if opened == language:
                blocks.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return blocks


PYTHON_BLOCKS = code_blocks("python")


def first_line(block: str) -> str:
    return next(line for line in block.splitlines() if line.strip() and not line.startswith(("import", "from")))


def clean_copy(target: Path) -> Path:
    """The repository's files as a checkout has them (tracked, plus new files git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def imported_modules(block: str) -> set:
    modules = set()
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def test_the_readme_has_python_blocks_and_each_imports_what_it_uses():
    assert len(PYTHON_BLOCKS) >= 7
    for block in PYTHON_BLOCKS:
        compile(block, "README block", "exec")
        if "bnfold." in block:
            assert "bnfold" in imported_modules(block), block  # no block continues an earlier one


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[first_line(block)[:40] for block in PYTHON_BLOCKS])
def test_python_block_runs_as_written_in_a_clean_copy(block, tmp_path):
    missing = [name for name in imported_modules(block) if name != "models" and importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (an optional extra)")
    copy = clean_copy(tmp_path / "repository")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if re.search(r"^def test_", block, re.M):  # a pytest example: run by pytest, as the README says
        script = copy / "test_readme_example.py"
        script.write_text(block)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", script.name]
    else:
        script = copy / "readme_example.py"
        script.write_text(block)
        command = [sys.executable, script.name]
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert "Traceback" not in done.stderr


def test_blocks_read_only_files_the_repository_ships():
    for block in PYTHON_BLOCKS:
        for name in re.findall(r'"([^"]+\.onnx)"', block):
            written = re.search(rf'(fold_file|export)\([^)]*"{re.escape(name)}"\s*[,)]', block) and \
                not re.search(rf'"{re.escape(name)}"\s*,\s*"', block)
            if name.startswith("models/") or not written:
                assert (ROOT / name).is_file(), f"{name} in the README is not in the repository"


# --- exit codes, flags and the tolerance rule: one wording, everywhere -----------------------------------------


def help_text(*command: str) -> str:
    result = CliRunner().invoke(cli, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def help_exit_codes(text: str) -> dict:
    """{code: meaning} from the 'Exit codes:' block of a --help text (continuation lines joined)."""
    block = text[text.index("Exit codes:"):].splitlines()[1:]
    codes, current = {}, None
    for line in block:
        match = re.match(r"^\s+(\d+)\s+(.*)$", line)
        if match:
            current = match.group(1)
            codes[current] = match.group(2).strip()
        elif line.startswith("       ") and current:
            codes[current] += " " + line.strip()
        else:
            break
    return codes


def readme_exit_codes() -> dict:
    table = README[README.index("<!-- exit-codes"):]
    rows = re.findall(r"^\| (\d+) \| (.*) \|$", table, re.M)
    return dict(rows[:len(EXIT_CODES)])


def normalized(text: str) -> str:
    return " ".join(text.replace("`", "").split())


COMMANDS = [()] + [(name,) for name in sorted(cli.commands) if name != "rules"]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(("bnfold", *c)))
def test_exit_codes_are_the_same_in_every_help_and_in_the_readme(command):
    text = help_text(*command)
    expected = {code: normalized(meaning) for code, meaning in EXIT_CODES}
    assert {code: normalized(meaning) for code, meaning in help_exit_codes(text).items()} == expected
    assert {code: normalized(meaning) for code, meaning in readme_exit_codes().items()} == expected
    assert WORST_EXIT_CODE in " ".join(text.split()) and WORST_EXIT_CODE in README


def test_worst_exit_code_order_is_what_the_code_computes():
    from bnfold.batch import worst_exit_code

    order = [int(code) for code in re.findall(r"\d+", WORST_EXIT_CODE.split(":")[1])]
    for worse, better in zip(order, order[1:]):
        assert worst_exit_code([better, worse]) == worse == worst_exit_code([worse, better])


def test_tolerance_rule_is_worded_identically_in_verify_help_and_readme():
    readme = re.search(r"<!-- tolerance-rule -->\n(.*?)\n<!-- /tolerance-rule -->", README, re.S).group(1)
    assert normalized(readme) == normalized(TOLERANCE_RULE)
    assert normalized(TOLERANCE_RULE) in normalized(help_text("verify"))


def test_tolerance_rule_numbers_are_the_comparisons():
    from bnfold import tolerances
    from bnfold.checking import tolerance as compare

    rule = normalized(TOLERANCE_RULE)
    assert f"at least {compare.MIN_CHANNEL_ELEMENTS} elements per channel" in rule
    assert f"within {compare.CHANNEL_MEAN_FRACTION:g} x the default atol" in rule
    assert f"largest |reference| / {compare.CHANNEL_PEAK_FLOOR:g})" in rule
    assert f"differ by {tolerances.NOISE_MULTIPLE:g} x the original's own distance" in rule


def options_of(command: click.Command) -> set:
    return {name for param in command.params if isinstance(param, click.Option) for name in param.opts}


def readme_command_lines() -> list:
    """(subcommand, words) for every `bnfold ...` line of the README's shell blocks."""
    lines = []
    for block in code_blocks(""):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = part.split("#")[0].split()
                if words[:1] == ["bnfold"] and len(words) > 1:
                    name = words[1] if words[1] in cli.commands else "fold"
                    lines.append((name, words))
    return lines


def test_every_flag_the_readme_uses_exists_on_its_command():
    lines = readme_command_lines()
    assert {name for name, _ in lines} >= {"fold", "check", "verify", "bench", "export"}
    for name, words in lines:
        known = options_of(cli.commands[name]) | {"--help", "-h"}
        for word in words:
            flag = word.split("=")[0].strip("[]")
            if flag.startswith("-") and flag not in ("-", "-o-"):
                assert flag in known, f"README: `{' '.join(words)}` uses {flag}, which bnfold {name} does not have"


def test_every_option_of_every_command_is_documented_in_the_readme():
    documented = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", README))
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and "--help" not in param.opts:
                assert set(param.opts) & documented, f"bnfold {name} {'/'.join(param.opts)} is not in the README"


@pytest.mark.parametrize("name", ["fold", "check", "verify", "bench", "export"])
def test_one_convention_for_json_and_quiet(name):
    command = cli.commands[name]
    json_option = next(param for param in command.params if "--json" in getattr(param, "opts", ()))
    assert not json_option.is_flag and json_option.flag_value == "-" and json_option.metavar == "[FILE]"
    assert {"-q", "--quiet"} <= options_of(command)
    runs = "--runs" in options_of(command)
    assert runs == (name in ("fold", "verify"))
