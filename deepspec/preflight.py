"""Checks made before a pipeline's first stage: every input a later stage needs, in the first seconds.

The shell entry points run this first (quickstart.sh, prepare_data.sh; train.py and eval.py make the
same checks themselves before loading or spawning anything), so a missing prompt file, target, draft
or config, an output folder that cannot be written, or a disk too small for the target cache stops
the run before any work, not after an hour of it. Every problem found is listed in one message,
each with what to do; nothing is created or changed.

    python -m deepspec.preflight --tasks gsm8k:4,humaneval:4 --target ~/.cache/deepspec/tiny_target \\
        --output-dir runs/quickstart --cache-dir runs/quickstart/cache --config config/dspark/dspark_tiny.py \\
        --cache-samples 256 --cache-tokens 512
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deepspec.cli import add_draft, add_output_dir, add_target
from deepspec.hub import NoSuchFolderError, local_or_hub_id
from deepspec.errors import DeepSpecError, cli_main
from deepspec.fsio import existing_ancestor, free_disk


class PreflightError(DeepSpecError, ValueError):
    """One or more inputs of the run are missing or unusable; the message lists each with its fix."""


def _path(text: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(text)))


def check_model(name: str, *, what: str, flag: str) -> str:
    """A local model folder (with config.json), or a hub id: returns what it is; raises when unusable."""
    try:
        resolved, local = local_or_hub_id(name, what=what)
    except NoSuchFolderError as exc:
        raise PreflightError(f"{flag}: {exc}") from None
    if local:
        if not Path(resolved).is_dir() or not (Path(resolved) / "config.json").is_file():
            raise PreflightError(f"{flag}: {name} is not a model folder (no config.json in it)")
        if what == "target" and _is_draft(Path(resolved) / "config.json"):
            raise PreflightError(
                f"{flag}: {name} is a trained draft, not a target (its config.json names a draft architecture); "
                "pass the target model the draft was trained for"
            )
        return f"{what} {resolved} (local folder)"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise PreflightError(
                f"{what} {name} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids the "
                "download; download it once with the hub reachable, or give a local folder"
            )
        return f"{what} {name} (hub id, in the local cache)"
    return f"{what} {name} (hub id: downloaded from the Hugging Face hub on first use)"


def _is_draft(config_path: Path) -> bool:
    """Whether a local config.json is a draft's (ours, or a speculators-format one); unreadable: not judged here."""
    import json

    from deepspec.draft_specs import is_speculators_config, saved_architecture

    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and (is_speculators_config(config) or saved_architecture(config) is not None)


def check_draft(name: str, *, flag: str) -> str:
    """A draft is a step folder, a checkpoint root (its latest step) or a hub id: a missing path is refused."""
    try:
        local_or_hub_id(name, what="draft")
    except NoSuchFolderError as exc:
        raise PreflightError(f"{flag}: {exc}") from None
    return f"draft {name}"


def check_writable(folder: str | os.PathLike, *, what: str) -> str:
    """``folder`` is a folder we may create or write into; nothing is created."""
    path = _path(folder)
    probe = existing_ancestor(path)
    if not probe.is_dir():
        raise PreflightError(f"{what} {path}: {probe} is a file, not a folder; choose another folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PreflightError(f"{what} {path}: {probe} is not writable by this user; choose a folder you can write")
    return f"{what} {path} (writable)"


def check_free_disk(folder: str | os.PathLike, *, needed_bytes: int, what: str) -> str:
    from deepspec.cache.format import format_bytes

    probe, free = free_disk(folder)
    line = f"{what}: about {format_bytes(needed_bytes)} needed, {format_bytes(free)} free on {probe}"
    if needed_bytes > free:
        raise PreflightError(
            f"{line}; free space, choose a folder on a larger disk, use less data, or train online "
            "(train.py --online stores no cache)"
        )
    return line


class Checks:
    """Runs checks, keeps their report lines and every problem; :meth:`finish` raises them as one error."""

    def __init__(self):
        self.lines: list[str] = []
        self.problems: list[str] = []

    def run(self, fn, *args, report: bool = True, **kwargs):
        try:
            out = fn(*args, **kwargs)
        except (DeepSpecError, OSError) as exc:
            self.problems.append(str(exc))
            return None
        if report:
            self.lines.extend(out if isinstance(out, list) else [out])
        return out

    def finish(self) -> list[str]:
        if len(self.problems) == 1:
            raise PreflightError(self.problems[0])
        if self.problems:
            head = f"{len(self.problems)} inputs of this run cannot be used; nothing was started:"
            raise PreflightError("\n".join([head] + [f"  - {p}" for p in self.problems]))
        return self.lines


def check_run_inputs(
    *, target: tuple[str, str], draft: tuple[str, str] | None = None, outputs: dict[str, str | os.PathLike]
) -> None:
    """An entry point's own checks before it loads anything: the ``target`` and ``draft`` ((name, flag))
    can load, the ``outputs`` ({what: folder}) can be written. One error lists every problem."""
    checks = Checks()
    checks.run(check_model, str(target[0]), what="target", flag=target[1])
    if draft is not None:
        checks.run(check_draft, str(draft[0]), flag=draft[1])
    for what, folder in outputs.items():
        checks.run(check_writable, folder, what=what)
    checks.finish()


def hidden_size_of(target: str, *, tiny: bool) -> int | None:
    """The target's hidden size from its local config (the family's text config), or the tiny target's
    when a later stage builds it; None for a hub id (its config is not read here)."""
    if (_path(target) / "config.json").is_file():
        from deepspec.targets import family_of, load_target_config

        config = load_target_config(str(_path(target)))
        return int(family_of(config).text_config(config).hidden_size)
    if tiny:
        from deepspec.tiny_models import MODEL_CONFIG

        return int(MODEL_CONFIG["hidden_size"])
    return None


def cache_estimate(*, config: str, opts: list[str], samples: int, tokens: int, target: str | None, tiny: bool):
    """``(bytes or None, how)``: the target cache a config builds from ``samples`` conversations of ``tokens``."""
    from deepspec.cache.format import estimate_cache_bytes
    from deepspec.run_config import load_config

    cfg = load_config(config, opts=opts)
    target = target or cfg.model.target_model_name_or_path
    hidden = hidden_size_of(target, tiny=tiny)
    if hidden is None:
        return None, f"cache size not estimated: {target} is not a local folder (its hidden size is unknown here)"
    avg = min(tokens, int(cfg.data.max_length))
    layers = len(cfg.model.target_layer_ids)
    needed = estimate_cache_bytes(num_samples=samples, avg_tokens=avg, num_layers=layers, hidden_size=hidden)
    return needed, f"{samples} samples x {avg} tokens, {layers} captured layers + the last, hidden {hidden}"


def check_prompts(spec: str, data_dir: str | None) -> list[str]:
    """The eval task list resolves to at least one prompt file; the absent ones are named in one line."""
    from deepspec.eval.tasks import absent_tasks_line, default_eval_data_dir, parse_tasks

    tasks, absent = parse_tasks(spec, eval_data_dir=data_dir)
    lines = [f"prompt files: {', '.join(f'{t.name} ({t.count})' for t in tasks)}"]
    if absent:
        lines.append(absent_tasks_line(absent, data_dir=data_dir or default_eval_data_dir()))
    return lines


def check_inputs(paths: list[str]) -> str:
    missing = [p for p in paths if not _path(p).exists()]
    if missing:
        raise PreflightError(f"input {', '.join(missing)} not found; check the path (relative to {Path.cwd()})")
    return f"inputs: {', '.join(paths)}"


def run_checks(args) -> list[str]:
    """Every check the arguments ask for; returns their report lines, or raises one PreflightError for all."""
    checks = Checks()
    for spec in args.tasks:
        checks.run(check_prompts, spec, args.eval_data_dir)
    config_ok = bool(args.config) and _path(args.config).is_file()
    if args.config and not config_ok:
        checks.problems.append(f"config file {args.config} not found; fix the config path (relative to {Path.cwd()})")
    if args.target:
        checks.run(check_model, args.target, what="target", flag="--target")
    if args.draft:
        checks.run(check_draft, args.draft, flag="--draft")
    if args.input:
        checks.run(check_inputs, args.input)
    for folder in args.output_dir:
        checks.run(check_writable, folder, what="output folder")
    if args.cache_dir and args.cache_samples and config_ok:
        estimate = checks.run(
            cache_estimate,
            report=False,
            config=args.config,
            opts=args.opts,
            samples=args.cache_samples,
            tokens=args.cache_tokens,
            target=args.target,
            tiny=args.tiny_target,
        )
        if estimate is not None:
            needed, how = estimate
            if needed is None:
                checks.lines.append(how)
            else:
                what = f"target cache ({how})"
                checks.run(check_free_disk, args.cache_dir, needed_bytes=int(needed * 1.05), what=what)
    return checks.finish()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deepspec.preflight", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", action="append", default=[], help="eval task list (eval.py --tasks); repeatable")
    p.add_argument("--eval-data-dir", default=None, help="folder of <task>.jsonl (default: eval_datasets/)")
    add_target(p, default=None, help="target folder or hub id the later stages load")
    p.add_argument("--tiny-target", action="store_true", help="the target is the tiny one; absent, a stage builds it")
    add_draft(p, default=None, help="draft folder, checkpoint dir or hub id to evaluate")
    p.add_argument("--config", default=None, help="run config file (train.py --config)")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides key.path=value")
    p.add_argument("--input", action="append", default=[], help="a file or folder a later stage reads; repeatable")
    add_output_dir(
        p, aliases=("--output",), action="append", default=[], help="a folder a later stage writes; repeatable"
    )
    p.add_argument("--cache-dir", default=None, help="where the target cache will go (its free disk is checked)")
    p.add_argument("--cache-samples", type=int, default=None, help="conversations the cache will hold")
    p.add_argument("--cache-tokens", type=int, default=4096, help="tokens per conversation, at most (default 4096)")
    return p


@cli_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.tiny_target and args.target and not (_path(args.target) / "config.json").is_file():
        args.output_dir.append(args.target)  # a later stage builds it there
        args.target = None
    for line in run_checks(args):
        print(f"[preflight] {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
