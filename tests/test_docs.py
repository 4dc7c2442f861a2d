"""The docs cannot drift from the tools they describe.

Every command in README.md, docs/*.md and eval_datasets/README.md (fenced shell blocks, with `\\`
continuations, and inline code) that calls one of our entry points (``python train.py``, ``python eval.py``,
``python <dir>/<tool>.py``, ``python -m deepspec.<module>``, ``bash <dir>/<tool>.sh``,
``torchrun ... train.py``; env-var prefixes allowed) is checked against the code:

* the script exists;
* every ``--flag`` is one that the tool's ``--help`` shows today (run once per tool, two at a time), so a
  misspelt flag or a hidden alias fails. A shell script accepts the flags of its own ``case`` patterns plus
  those of the Python tool it hands its arguments to (:data:`SHELL_FORWARDS`);
* every ``--opts key.path=value`` (and train.sh's bare ``key.path=value``) names a key of the config the
  command names, else of ``config/dspark/dspark_tiny.py``; ``+key.path=value`` adds a key and is not checked.
  eval.sh's bare ``name=value`` must be an eval.py flag;
* every ``name=value`` before a shell script names a variable the script (or a file it sources) reads,
  spelled exactly as the script spells it (``DEEPSPEC_*`` ones may be read by the Python side);
  :data:`PENDING_SHELL_NAMES` lists the names the docs use before the scripts read them;
* every ``config/....py`` it names exists.

Besides commands: a flag named in prose (`--nproc`) must be one that the tool named before it in its sentence
or table header shows (any of our tools when none is named); every repository path named in code
(``config/``, ``deepspec/``, ``scripts/``, ...) exists; every relative link and ``#anchor`` resolves. Each
failure names the file and line.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from deepspec.run_config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "eval_datasets" / "README.md"]
DEFAULT_CONFIG = "config/dspark/dspark_tiny.py"

# Names the docs set before a shell script that the script does not read yet: the lowercase spellings that
# scripts/data/prepare_data.sh is about to accept (today it reads MODEL, CONFIG, ...). Empty it once the
# scripts read them; test_pending_shell_names_are_still_pending says when an entry has become stale.
PENDING_SHELL_NAMES: dict[str, set[str]] = {}

# A shell script's flags: its own `case` patterns, plus those of the Python tool it hands the rest to
# (None: the rest goes to a tool that is not ours, e.g. pytest, and is not checked).
SHELL_FORWARDS: dict[str, str | None] = {
    "scripts/train/train.sh": "train.py",
    "scripts/eval/eval.sh": "eval.py",
    "scripts/data/prepare_data.sh": "scripts/data/prepare_target_cache.py",
    "bench/gpu_check.sh": "bench/gpu_check.py",
    "scripts/test.sh": None,
}
# What a shell script does with a bare name=value argument: config overrides, or --name value.
# What a bare name=value after a shell script is, besides one of the script's own variables: a config
# override (opts), a flag of the tool it runs, spelled with '_' or '-' (flags), or nothing else (vars).
SHELL_KEY_VALUES = {
    "scripts/train/train.sh": "opts",
    "scripts/eval/eval.sh": "flags",
    "scripts/data/prepare_data.sh": "vars",
    "scripts/quickstart.sh": "vars",
}

# Flags of programs that are not ours, named in prose next to ours: vLLM, torchrun, pip.
FOREIGN_FLAGS = {"--speculative-config", "--nnodes", "--nproc-per-node", "--no-deps"}
SKIPPED_LANGUAGES = {"python", "py", "json", "yaml", "toml", "text", "txt"}
REPO_DIRS = ("config", "deepspec", "scripts", "bench", "tests", "eval_datasets", "docs")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Command:
    where: str  # file:line
    tokens: list[str]
    text: str

    def fail(self, why: str) -> str:
        return f"{self.where}: {why}\n    {self.text}"


@dataclass
class Snippet:
    where: str  # file:line
    text: str


# ----------------------------------------------------------------------------- reading the docs


def _strip_comment(line: str) -> str:
    """Drop a shell comment: a # at the start of a word, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def snippets(path: Path) -> list[Snippet]:
    """Fenced blocks (logical lines, continuations joined) and inline code spans of one Markdown file."""
    rel = path.relative_to(ROOT) if path.is_absolute() and path.is_relative_to(ROOT) else path
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Snippet] = []
    fence: str | None = None
    language = ""
    pending: tuple[int, str] | None = None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, language = match.group(1), match.group(2).lower()
                continue
            for span in re.finditer(r"(`+)(.+?)\1", line):
                out.append(Snippet(f"{rel}:{number}", span.group(2).strip()))
            continue
        if stripped.startswith(fence):
            fence = None
            continue
        if language in SKIPPED_LANGUAGES:
            continue
        code = _strip_comment(line).rstrip()
        start, joined = pending if pending else (number, "")
        if code.endswith("\\"):
            pending = (start, joined + code[:-1] + " ")
            continue
        pending = None
        out.append(Snippet(f"{rel}:{start}", joined + code))
    return out


def _tokens(text: str) -> list[list[str]]:
    """Shell words of a line, split into simple commands at ; && || |."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quotes in prose: fall back to plain words
        words = text.split()
    commands, current = [], []
    for word in words:
        if word and set(word) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in commands + [current] if c]


def entry_point(tokens: list[str]) -> tuple[int, str] | None:
    """(index, repo-relative script or deepspec module) of the entry point a command calls, if it is ours."""
    i = 0
    while i < len(tokens) and "=" in tokens[i] and ENV_NAME.match(tokens[i].split("=", 1)[0]):
        i += 1  # NAME=value prefixes
    if i >= len(tokens):
        return None
    head = tokens[i]
    if head in ("python", "python3") or head.endswith("/python"):
        j = i + 1
        while j < len(tokens) and tokens[j].startswith("-") and tokens[j] not in ("-m", "-c"):
            j += 1
        if j + 1 < len(tokens) and tokens[j] == "-m" and tokens[j + 1].startswith("deepspec."):
            return j + 1, tokens[j + 1]
        if j < len(tokens) and tokens[j].endswith(".py"):
            return j, tokens[j]
        return None
    if head == "bash" and i + 1 < len(tokens) and tokens[i + 1].endswith(".sh"):
        return i + 1, tokens[i + 1]
    if head == "torchrun":
        for j in range(i + 1, len(tokens)):
            if tokens[j].endswith(".py"):
                return j, tokens[j]
    return None


def commands(snippet: Snippet) -> list[Command]:
    found = []
    for tokens in _tokens(snippet.text):
        if entry_point(tokens) is not None:
            found.append(Command(snippet.where, tokens, snippet.text))
    return found


def doc_commands(paths=DOCS) -> list[Command]:
    return [c for path in paths for s in snippets(path) for c in commands(s)]


# ----------------------------------------------------------------------------- what the tools accept


def _script_path(script: str) -> Path:
    if script.startswith("deepspec."):
        module = ROOT / (script.replace(".", "/") + ".py")
        return module if module.exists() else ROOT / script.replace(".", "/") / "__main__.py"
    return ROOT / script


@functools.cache
def _help_flags(script: str) -> frozenset[str]:
    """Every --flag that `python <script> --help` shows (option lines only, not the prose)."""
    argv = ["-m", script] if script.startswith("deepspec.") else [str(ROOT / script)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, *argv, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{script} --help failed:\n{proc.stderr[-2000:]}"
    flags = set()
    for line in proc.stdout.splitlines():
        if re.match(r"^\s{1,8}-", line):  # "  -h, --help   text": the invocation ends at two spaces
            invocation = re.split(r"\s{2,}", line.strip())[0]
            flags.update(re.findall(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)", invocation))
    return frozenset(flags)


def _shell_source(script: str) -> str:
    """A shell script's text plus the shell files it sources."""
    path = ROOT / script
    text = path.read_text(encoding="utf-8")
    for sourced in re.findall(r'^\s*(?:source|\.)\s+"?\$\(dirname "\$\{BASH_SOURCE\[0\]\}"\)/([\w./-]+)"?', text, re.M):
        text += "\n" + (path.parent / sourced).read_text(encoding="utf-8")
    return text


def _case_flags(script: str) -> set[str]:
    text = (ROOT / script).read_text(encoding="utf-8")
    flags = set()
    for pattern in re.findall(r"^\s*\(?((?:-{1,2}[\w-]+\s*\|?\s*)+)\)", text, re.M):
        flags.update(f.strip() for f in pattern.split("|") if f.strip().startswith("--"))
    flags.update(re.findall(r'=\s*"(--[\w-]+)"', text))  # [ "$1" = "--help" ]
    return flags


@functools.cache
def _python_literals() -> frozenset[str]:
    """Every quoted ALL_CAPS string in our Python files: the environment variables the Python side reads."""
    names = set()
    for pattern in ("*.py", "deepspec/**/*.py", "scripts/**/*.py", "bench/*.py"):
        for path in ROOT.glob(pattern):
            names.update(re.findall(r"[\"']([A-Z][A-Z0-9_]*)[\"']", path.read_text(encoding="utf-8")))
    return frozenset(names)


def shell_reads(script: str, name: str) -> bool:
    """Does the shell script (or what it sources) read $name, spelled exactly so?"""
    if re.search(r"\$\{?" + re.escape(name) + r"(?![A-Za-z0-9_])", _shell_source(script)):
        return True
    return name.isupper() and name in _python_literals()  # read by the Python side (e.g. DEEPSPEC_TINY_TARGET)


@functools.cache
def config_keys(config: str) -> frozenset[str]:
    cfg = load_config(ROOT / config)

    def walk(node, prefix=""):
        for key, value in node.items():
            yield prefix + key
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")

    return frozenset(walk(cfg))


class Tools:
    """The --help flags of every Python tool the commands reach, fetched two at a time, once each."""

    def __init__(self, cmds: list[Command]):
        needed = set()
        for cmd in cmds:
            _, script = entry_point(cmd.tokens)
            if not script.endswith(".sh"):
                needed.add(script)
            elif SHELL_FORWARDS.get(script):
                needed.add(SHELL_FORWARDS[script])
        needed = {s for s in needed if _script_path(s).is_file()}
        with ThreadPoolExecutor(max_workers=2) as pool:
            self.flags = dict(zip(sorted(needed), pool.map(_help_flags, sorted(needed))))

    def accepted(self, script: str) -> frozenset[str] | None:
        """Flags a script accepts; None when they are not ours to check."""
        if not script.endswith(".sh"):
            return self.flags.get(script, frozenset())
        if SHELL_FORWARDS.get(script, "") is None:
            return None
        forwarded = self.flags.get(SHELL_FORWARDS.get(script) or "", frozenset())
        return frozenset(_case_flags(script)) | forwarded


# ----------------------------------------------------------------------------- the checks


def _config_of(tokens: list[str]) -> str:
    for token in tokens:
        for match in re.findall(r"(config/[\w/.-]+\.py)", token):
            return match
    return DEFAULT_CONFIG


def _check_key(cmd: Command, override: str, config: str) -> list[str]:
    key = override.split("=", 1)[0].strip()
    if "=" not in override or not key:
        return [cmd.fail(f"override {override!r} is not key.path=value")]
    if key.startswith("+"):
        return []
    if not (ROOT / config).is_file():
        return []  # reported as a missing config
    if key not in config_keys(config):
        return [cmd.fail(f"config key {key!r} is not in {config}")]
    return []


def check_command(cmd: Command, tools: Tools) -> list[str]:
    index, script = entry_point(cmd.tokens)
    tokens = [t.strip("[]") if t.startswith("[") or t.endswith("]") else t for t in cmd.tokens]
    problems = []
    if not _script_path(script).is_file():
        return [cmd.fail(f"{script} does not exist")]
    for token in tokens:
        for config in re.findall(r"(config/[\w/.-]+\.py)", token):
            if not (ROOT / config).is_file():
                problems.append(cmd.fail(f"config file {config} does not exist"))
    config = _config_of(tokens)
    # NAME=value before the command: a variable the shell script reads (our DEEPSPEC_* ones for any tool).
    pending = PENDING_SHELL_NAMES.get(script, set())
    for token in tokens[: index - 1]:
        name = token.split("=", 1)[0]
        if not ENV_NAME.match(name) or name in pending or "=" not in token:
            continue
        if script.endswith(".sh") and not shell_reads(script, name):
            problems.append(cmd.fail(f"{script} does not read the variable {name}"))
        elif name.startswith("DEEPSPEC_") and name not in _python_literals():
            problems.append(cmd.fail(f"nothing in DeepSpec reads the variable {name}"))
    accepted = tools.accepted(script)
    rest = tokens[index + 1 :]
    in_opts = False
    for position, token in enumerate(rest):
        if token == "--":
            break  # the rest goes to another program (e.g. vLLM)
        if token.startswith("--") and len(token) > 2:
            flag = token.split("=", 1)[0]
            in_opts = flag == "--opts"
            if accepted is not None and flag not in accepted:
                problems.append(cmd.fail(f"{script} has no flag {flag} (its --help shows no such option)"))
            if in_opts and "=" in token:
                problems += _check_key(cmd, token.split("=", 1)[1], config)
            continue
        if token.startswith("-"):
            in_opts = False
            continue
        if in_opts:
            problems += _check_key(cmd, token, config)
            continue
        mode = SHELL_KEY_VALUES.get(script)
        if mode and re.match(r"^\+?[A-Za-z_][\w.]*=", token):
            previous = rest[position - 1] if position else ""
            if previous.startswith("--"):
                continue  # the value of a flag, e.g. --tasks a=b
            name, tool = token.split("=", 1)[0], SHELL_FORWARDS.get(script)
            if "." not in name and shell_reads(script, name):
                continue  # the script's own variable (train.sh config_path=..., prepare_data.sh model_path=...)
            if mode == "opts":
                problems += _check_key(cmd, token, config)
            elif mode == "vars":
                problems.append(cmd.fail(f"{script} does not read the variable {name}"))
            elif not {f"--{name}", f"--{name.replace('_', '-')}", f"--{name.replace('-', '_')}"} & tools.flags.get(
                tool, frozenset()
            ):
                problems.append(cmd.fail(f"{script}: {name}=... is not a flag of {tool}"))
    return problems


def _expand_braces(text: str) -> list[str]:
    match = re.search(r"\{([^{}]*,[^{}]*)\}", text)
    if not match:
        return [text]
    return [
        expanded
        for part in match.group(1).split(",")
        for expanded in _expand_braces(text[: match.start()] + part + text[match.end() :])
    ]


def named_paths(paths=DOCS) -> list[tuple[str, str]]:
    """(file:line, path) for every repository path named in code: fenced blocks and inline spans."""
    pattern = re.compile(r"(?<![\w./~-])((?:" + "|".join(REPO_DIRS) + r")/[\w./{},*-]*)")
    found = []
    for path in paths:
        for snippet in snippets(path):
            for match in pattern.findall(snippet.text):
                candidate = match.rstrip(".,;:)")
                if "<" not in candidate and "…" not in candidate:
                    found.append((snippet.where, candidate))
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^(`{3,}|~{3,}).*?^\1", "", text, flags=re.M | re.S)  # headings inside code do not count
    return frozenset(_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M))


@functools.cache
def our_tools() -> dict[str, str]:
    """Basename -> repository path of every entry point (train.py, eval.py, scripts/, bench/, eval_datasets/)."""
    found = ["train.py", "eval.py"]
    for pattern in ("scripts/**/*.py", "scripts/**/*.sh", "bench/*.py", "bench/*.sh", "eval_datasets/*.py"):
        found += [str(p.relative_to(ROOT)) for p in ROOT.glob(pattern)]
    return {Path(p).name: p for p in found} | {"deepspec.preflight": "deepspec.preflight"}


def _tools_named(text: str) -> list[str]:
    names = re.findall(r"(?<![\w.-])((?:[\w-]+/)*[\w-]+\.(?:py|sh)|deepspec\.preflight)(?![\w-])", text)
    return [our_tools()[Path(n).name] for n in names if Path(n).name in our_tools()]


def prose_flags(paths=DOCS) -> list[tuple[str, str | None, str]]:
    """(file:line, tool or None, --flag) for flags named in inline code outside commands.

    A flag belongs to the tool named last before it in its sentence (`eval.py --self-draft G`, or
    "`train.py` flags: `--config`, ..."), in a table row to the tool its header names; with none named there,
    to any of our tools (None).
    """
    found = []
    for path in paths:
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        block: list[tuple[int, str]] = []
        fence = None
        header_tool, in_table = None, False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines() + [""], start=1):
            stripped = line.strip()
            if fence or re.match(r"^(`{3,}|~{3,})", stripped):
                if fence is None:
                    fence = stripped[:3]
                elif stripped.startswith(fence):
                    fence = None
                continue
            if block and (not stripped or re.match(r"^\s*(?:[-*]|\d+\.|\|)\s", line)):
                found += _block_flags(rel, block, header_tool if in_table else None)  # paragraph, item or row
                block = []
            if stripped.startswith("|") and not in_table:
                named = _tools_named(stripped)
                header_tool = named[0] if len(named) == 1 else None
            in_table = stripped.startswith("|")
            if stripped:
                block.append((number, line))
    return found


def _block_flags(rel, block: list[tuple[int, str]], default: str | None) -> list[tuple[str, str | None, str]]:
    text = "\n".join(line for _, line in block)
    found = []
    for span in re.finditer(r"(`+)(.+?)\1", text):
        code = span.group(2).strip()
        words = code.split()
        if not words or entry_point(words) is not None:
            continue  # a command: test_every_command_matches_the_tools checks it
        if not words[0].startswith("-") and not _tools_named(words[0]):
            continue  # not about flags
        sentence = re.split(r"(?<=[.!?|])\s+(?=[A-Z`*\[(|])", text[: span.start()])[-1]
        named = _tools_named(sentence + " " + words[0])
        tool = named[-1] if named else default
        code = "" if code.startswith("-- ") else code.split(" -- ")[0]  # after --: another program's flags
        line = block[0][0] + text[: span.start()].count("\n")
        found += [(f"{rel}:{line}", tool, flag) for flag in re.findall(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)", code)]
    return found


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def all_commands():
    return doc_commands()


@pytest.fixture(scope="module")
def tools(all_commands):
    # Every Python tool, so that flags named in prose can be checked against any of them.
    every = [
        Command("", ["python", "-m", p] if p.startswith("deepspec.") else ["python", p], "")
        for p in our_tools().values()
        if not p.endswith(".sh")
    ]
    return Tools(all_commands + every)


def test_every_command_matches_the_tools(all_commands, tools):
    problems = [p for cmd in all_commands for p in check_command(cmd, tools)]
    assert not problems, f"{len(problems)} command(s) in the docs disagree with the code:\n" + "\n".join(problems)


def test_flags_named_in_prose_exist(tools):
    every = set(FOREIGN_FLAGS).union(*tools.flags.values())
    for script in our_tools().values():
        if script.endswith(".sh"):
            every |= _case_flags(script)
    wrong = []
    for where, tool, flag in prose_flags():
        if flag in FOREIGN_FLAGS:
            continue
        accepted = every if tool is None else tools.accepted(tool)
        if accepted is not None and flag not in accepted:
            wrong.append(f"{where}: {flag} is not a flag of {tool or 'any of our tools'}")
    assert not wrong, "flags named in the docs that the tools do not show in --help:\n" + "\n".join(wrong)


def test_the_commands_are_found(all_commands):
    # Guards the extractor: the README's two commands and its end-to-end block, and the flag-rich pages.
    called = {(c.where.split(":")[0], entry_point(c.tokens)[1]) for c in all_commands}
    for expected in [
        ("README.md", "scripts/quickstart.sh"),
        ("README.md", "scripts/test.sh"),
        ("README.md", "scripts/data/prepare_data.sh"),
        ("README.md", "scripts/train/train.sh"),
        ("README.md", "scripts/eval/eval.sh"),
        ("README.md", "scripts/export/export_draft.py"),
        ("docs/training.md", "train.py"),
        ("docs/evaluation.md", "eval.py"),
        ("docs/data.md", "scripts/data/prepare_target_cache.py"),
        ("docs/serving.md", "scripts/export/export_draft.py"),
    ]:
        assert expected in called, expected
    continued = [c for c in all_commands if "--format" in c.tokens and "--verifier" in c.tokens]
    assert continued, "a command continued with \\ over two lines is read as one"


def test_named_repository_paths_exist():
    missing = []
    for where, named in named_paths():
        expanded = _expand_braces(named)
        if not all(glob.glob(str(ROOT / p)) for p in expanded):
            missing.append(f"{where}: {named}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_links_and_anchors_resolve():
    broken = []
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"^[a-z]+:", target):
                    continue  # http(s), mailto
                file_part, _, anchor = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(ROOT)}:{number}"
                if not linked.exists():
                    broken.append(f"{where}: {target} (no such file)")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    broken.append(f"{where}: {target} (no heading #{anchor} in {linked.relative_to(ROOT)})")
    assert not broken, "broken links in the docs:\n" + "\n".join(broken)


def test_pending_shell_names_are_still_pending():
    stale = [f"{s}: {n}" for s, names in PENDING_SHELL_NAMES.items() for n in sorted(names) if shell_reads(s, n)]
    assert not stale, "these scripts read the names now; remove them from PENDING_SHELL_NAMES:\n" + "\n".join(stale)


def test_the_checker_catches_mistakes(tmp_path):
    doc = tmp_path / "bad.md"
    doc.write_text(
        "\n".join(
            [
                "```bash",
                "python train.py --config config/dspark/dspark_tiny.py --target-cache /c  # not a flag",
                "python train.py --config config/dspark/dspark_qwen3_4b.py \\",
                "    --opts train.lr=1e-4 train.learning_rate=1e-4 +train.new_key=1",
                "python scripts/data/nope.py --x 1",
                "python eval.py --config config/dspark/dspark_qwen9.py",
                "CONFIG_PATH=config/dspark/dspark_tiny.py bash scripts/train/train.sh train.lrr=1",
                "bash scripts/eval/eval.sh temperatur=0 --tasks gsm8k:2",
                "DEEPSPEC_NOPE=1 python eval.py --tasks gsm8k:2",
                "```",
                "Inline: `python eval.py --draft-name x --tasks gsm8k` and `bash scripts/quickstart.sh --fastest`.",
            ]
        )
        + "\n"
    )
    cmds = doc_commands([doc])
    assert len(cmds) == 9
    problems = "\n".join(p.splitlines()[0] for cmd in cmds for p in check_command(cmd, Tools(cmds)))
    for needle in [
        "bad.md:2: train.py has no flag --target-cache",
        "bad.md:3: config key 'train.learning_rate' is not in config/dspark/dspark_qwen3_4b.py",
        "bad.md:5: scripts/data/nope.py does not exist",
        "bad.md:6: eval.py has no flag --config",
        "bad.md:6: config file config/dspark/dspark_qwen9.py does not exist",
        "bad.md:7: scripts/train/train.sh does not read the variable CONFIG_PATH",
        "bad.md:7: config key 'train.lrr' is not in config/dspark/dspark_tiny.py",
        "bad.md:8: scripts/eval/eval.sh: temperatur=... is not a flag of eval.py",
        "bad.md:9: nothing in DeepSpec reads the variable DEEPSPEC_NOPE",
        "bad.md:11: eval.py has no flag --draft-name",
        "bad.md:11: scripts/quickstart.sh has no flag --fastest",
    ]:
        assert needle in problems, f"{needle!r} not in:\n{problems}"
    assert len(problems.splitlines()) == 11, problems  # nothing else: train.lr, +train.new_key and --tasks are fine


def test_the_prose_check_attributes_flags(tmp_path, tools):
    doc = tmp_path / "prose.md"
    doc.write_text(
        "`train.py` flags: `--config`, `--nproc`; `eval.py` takes `--self-draft G`, not `--online`.\n"
        "\n"
        "| `export_draft.py` flag | meaning |\n"
        "|---|---|\n"
        "| `--format` | the layout |\n"
        "| `--tasks` | not its flag; `train.py --online` is another tool's |\n"
        "\n"
        "Any tool: `--no-progress`, `--nonsense`; `bash scripts/data/launch_vllm_server.sh` then `-- --api-key K`.\n"
    )
    found = [(where.split(":")[-1], tool, flag) for where, tool, flag in prose_flags([doc])]
    assert found == [
        ("1", "train.py", "--config"),
        ("1", "train.py", "--nproc"),
        ("1", "eval.py", "--self-draft"),
        ("1", "eval.py", "--online"),
        ("5", "scripts/export/export_draft.py", "--format"),
        ("6", "scripts/export/export_draft.py", "--tasks"),
        ("6", "train.py", "--online"),
        ("8", None, "--no-progress"),
        ("8", None, "--nonsense"),
    ]
