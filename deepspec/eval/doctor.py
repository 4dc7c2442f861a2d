"""The τ doctor: before an engine comparison runs, check each known cause of "τ lower than offline eval".

Users who find an engine's acceptance below the paper's or ``eval.py``'s usually hit one of a few
mismatches between training, offline evaluation and the engine. Each check below looks for one and says
``pass`` or ``warn`` with the fix:

- ``frozen_pieces``: the draft folder's embedding / LM head differ from the target's (``eval.py`` always
  uses the target's; an engine that loads the folder's copy does not);
- ``mask_token``: a block drafter's mask token is not the family's;
- ``layer_ids``: the captured layers do not fit the target's depth, or the target cache the draft was
  trained on holds other layers (or another target);
- ``chat_template``: the training data's chat template is not the target family's, or the regenerated
  answers were written with thinking on while evaluation and the engine run with it off;
- ``sampling``: the engine would not sample from the target's distribution (``vllm serve`` applies the
  target's ``generation_config.json`` top-k / top-p / temperature to requests that do not set them);
- ``num_speculative_tokens``: more than the draft was trained to propose;
- ``anchor_layout``: the draft's block layout is not the one the engine's method reads.

:func:`run_doctor` runs them all; ``scripts/eval/engine_check.py`` runs it first, ``--doctor-only`` alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

PASS, WARN = "pass", "warn"
THINK_MARKERS = ("<think>", "</think>")
SCAN_LINES = 2000  # regenerated rows read for think blocks (the start of each file)


@dataclass(frozen=True)
class Check:
    name: str  # one of the checks in the module docstring
    status: str  # PASS or WARN
    detail: str  # what was found
    fix: str | None = None  # what to do (warnings)

    def line(self) -> str:
        text = f"[doctor] {self.status.upper():4s}  {self.name}: {self.detail}"
        return text + (f"\n[doctor]        fix: {self.fix}" if self.fix else "")


@dataclass
class DoctorInputs:
    target: str
    draft: str  # a draft folder, either layout
    num_speculative_tokens: int | None = None  # what the engine is asked to draft (None: the draft's trained count)
    method: str | None = None  # the engine's speculative method (None: the one the export is served with)
    temperature: float = 0.0  # the comparison's temperature
    enable_thinking: bool = False  # what evaluation and the engine render prompts with
    target_cache_dir: str | None = None  # the cache the draft was trained on (default: train_config.json's)
    train_data_paths: list[str] = field(default_factory=list)  # regenerated data (default: the cache's sources)


class _Context:
    """What the checks read, each loaded once, on first use."""

    def __init__(self, inputs: DoctorInputs):
        self.inputs = inputs

    @cached_property
    def draft_config(self) -> dict:
        from deepspec.export.speculators import read_any_config

        return read_any_config(self.inputs.draft)

    @cached_property
    def raw_draft_config(self) -> dict:
        from deepspec.export.speculators import read_config_json

        return read_config_json(self.inputs.draft)

    @cached_property
    def algorithm(self):
        from deepspec.algorithms import algorithm_of
        from deepspec.models.draft_config import draft_config_from_dict

        return algorithm_of(draft_config_from_dict(self.draft_config))

    @cached_property
    def target_config(self):
        from deepspec.targets import load_target_config

        return load_target_config(self.inputs.target)

    @cached_property
    def family(self):
        from deepspec.targets import family_of

        return family_of(self.target_config)

    @cached_property
    def train_config(self) -> dict:
        from deepspec.training.checkpoint import CONFIG_NAME

        try:
            return json.loads((Path(self.inputs.draft) / CONFIG_NAME).read_text())
        except (OSError, ValueError):
            return {}

    @cached_property
    def cache_manifest(self) -> tuple[str | None, dict | None]:
        from deepspec.cache.format import MANIFEST_NAME

        cache = self.inputs.target_cache_dir or (self.train_config.get("data") or {}).get("target_cache_path")
        if not cache:
            return None, None
        try:
            return cache, json.loads((Path(cache) / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            return cache, None


# ----------------------------------------------------------------------------- the checks


def check_frozen_pieces(ctx: _Context) -> Check:
    import torch

    from deepspec.export.speculators import read_any_draft
    from deepspec.target_files import load_frozen_target_pieces

    _, state = read_any_draft(ctx.inputs.draft, frozen_target=ctx.inputs.target)
    embed, head = load_frozen_target_pieces(ctx.inputs.target, config=ctx.target_config)
    differ = []
    for key, theirs in (("embed_tokens.weight", embed), ("lm_head.weight", head)):
        ours = state[key]
        if ours.shape != theirs.shape or not torch.equal(ours, theirs.to(ours.dtype)):
            delta = (ours.float() - theirs.float()).abs().max().item() if ours.shape == theirs.shape else None
            differ.append(
                f"{key} ({'shape ' + str(tuple(ours.shape)) if delta is None else f'max |diff| {delta:.3g}'})"
            )
    if not differ:
        return Check(
            "frozen_pieces", PASS, "the draft's embedding and LM head are the target's (or the target fills them)"
        )
    return Check(
        "frozen_pieces",
        WARN,
        f"the draft folder's {' and '.join(differ)} differ from the target's: eval.py decodes with the target's, "
        "an engine that loads the folder's copy does not",
        "export the draft from a checkpoint trained on this target (export_draft.py copies the pieces it was "
        "trained with), or check that --target is the model the draft was trained for",
    )


def expected_mask_token(ctx: _Context) -> int | None:
    """The family's mask token, or (targets whose vocabulary is too small for it, the tiny ones) the tokenizer's."""
    vocab = int(ctx.family.text_config(ctx.target_config).vocab_size)
    if ctx.family.mask_token_id is not None and ctx.family.mask_token_id < vocab:
        return ctx.family.mask_token_id
    from transformers import AutoTokenizer

    return getattr(AutoTokenizer.from_pretrained(ctx.inputs.target), "mask_token_id", None)


def check_mask_token(ctx: _Context) -> Check:
    mask = ctx.draft_config.get("mask_token_id")
    if mask is None:
        return Check("mask_token", PASS, f"{ctx.algorithm.name} drafts use no mask token")
    want = expected_mask_token(ctx)
    if want is None or int(mask) == want:
        return Check("mask_token", PASS, f"mask_token_id {mask} (the {ctx.family.name} family's)")
    return Check(
        "mask_token",
        WARN,
        f"mask_token_id {mask}, but the {ctx.family.name} family's is {want}: the draft learned another "
        "placeholder than the one this target's drafts use (a token that occurs in text confuses its block)",
        f"train with model.mask_token_id={want} (the default), or check that --target is the draft's target",
    )


def check_layer_ids(ctx: _Context) -> Check:
    from deepspec.targets import validate_layer_ids

    ids = list(ctx.draft_config.get("target_layer_ids") or [])
    n = int(ctx.family.text_config(ctx.target_config).num_hidden_layers)
    problems = []
    try:
        validate_layer_ids(ids, num_layers=n)
    except ValueError as exc:
        problems.append(str(exc))
    trained_on = ctx.draft_config.get("num_target_layers")
    if trained_on is not None and int(trained_on) != n:
        problems.append(f"the draft was trained on a {trained_on}-layer target, this one has {n} layers")
    cache, manifest = ctx.cache_manifest
    if manifest is not None:
        missing = sorted(set(ids) - set(manifest.get("layer_ids") or []))
        if missing:
            problems.append(f"the target cache {cache} holds layers {manifest.get('layer_ids')}, not {missing}")
        problems += _cache_target_problem(ctx, cache, manifest)
    if problems:
        return Check(
            "layer_ids",
            WARN,
            "; ".join(problems),
            "evaluate and serve the draft with the target (and cache) it was trained on; an engine feeds it the "
            "layers its config names, so features from other layers give other drafts",
        )
    where = f", all in the cache {cache}" if manifest is not None else ""
    return Check("layer_ids", PASS, f"target_layer_ids {ids} fit the {n}-layer target{where}")


def _cache_target_problem(ctx: _Context, cache: str, manifest: dict) -> list[str]:
    from deepspec.target_files import target_fingerprint
    from deepspec.targets import TargetError

    try:
        ours = target_fingerprint(ctx.inputs.target)
    except TargetError:
        return []  # a hub id not downloaded: nothing to compare
    theirs = manifest.get("target_fingerprint")
    return (
        [f"the target cache {cache} was built from another target ({manifest.get('target_model')})"]
        if theirs not in (None, ours)
        else []
    )


def check_chat_template(ctx: _Context) -> Check:
    from deepspec.targets import family_by_chat_template

    problems, fixes = [], []
    template = (ctx.train_config.get("data") or {}).get("chat_template")
    if template is None:
        _, manifest = ctx.cache_manifest
        template = ((manifest or {}).get("extra") or {}).get("chat_template")
    if template is not None:
        family = family_by_chat_template(template)
        if family is None or family.name not in (ctx.family.name, ctx.family.drafting_family().name):
            problems.append(
                f"the training data was tokenized with data.chat_template={template!r}, this target's is "
                f"{ctx.family.chat_template!r}"
            )
            fixes.append(f"rebuild the target cache with data.chat_template={ctx.family.chat_template!r}")
    thinking, scanned = count_think_turns(training_data_files(ctx))
    if thinking and not ctx.inputs.enable_thinking:
        problems.append(
            f"{thinking} of {scanned} regenerated assistant turns read hold think blocks (regenerated with "
            "thinking on), while evaluation and the engine render prompts with thinking off"
        )
        fixes.append("regenerate the data with --disable-thinking (the default), or evaluate with thinking on")
    if problems:
        return Check("chat_template", WARN, "; ".join(problems), "; ".join(fixes))
    seen = (
        f"{scanned} regenerated assistant turns without think blocks"
        if scanned
        else "no regenerated data found to read"
    )
    return Check("chat_template", PASS, f"chat template {template or '(not recorded)'}; {seen}")


def training_data_files(ctx: _Context) -> list[str]:
    """The regenerated data the draft was trained on: given, in train_config.json, or the cache's sources."""
    paths = list(ctx.inputs.train_data_paths) or list(
        (ctx.train_config.get("data") or {}).get("train_data_paths") or []
    )
    if not paths:
        _, manifest = ctx.cache_manifest
        paths = [s.get("path") for s in (manifest or {}).get("source_files") or [] if isinstance(s, dict)]
    return [p for p in paths if p and os.path.isfile(p)]


def count_think_turns(files: list[str]) -> tuple[int, int]:
    """(assistant turns holding a think marker, assistant turns read) over the first rows of ``files``."""
    thinking = scanned = 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for i, line in enumerate(fh):
                if i >= SCAN_LINES:
                    break
                try:
                    turns = json.loads(line).get("conversations") or []
                except (ValueError, AttributeError):
                    continue
                for turn in turns:
                    if isinstance(turn, dict) and turn.get("role") == "assistant":
                        scanned += 1
                        thinking += any(m in str(turn.get("content") or "") for m in THINK_MARKERS)
    return thinking, scanned


def check_sampling(ctx: _Context) -> Check:
    """``vllm serve`` (``--generation-config auto``) applies generation_config.json's sampling defaults."""
    try:
        gen = json.loads((Path(ctx.inputs.target) / "generation_config.json").read_text())
    except (OSError, ValueError):
        gen = {}
    truncating = {
        k: gen[k] for k in ("top_k", "top_p", "min_p") if k in gen and gen[k] not in (None, 0, -1, 1, 1.0, 0.0)
    }
    if gen.get("top_k") == 1:
        truncating["top_k"] = 1
    detail = "engine_check samples with top_k off, top_p 1 and eval.py's temperature"
    if not truncating:
        return Check("sampling", PASS, f"{detail}; the target's generation_config.json sets no truncation")
    shown = ", ".join(f"{k}={v}" for k, v in truncating.items())
    return Check(
        "sampling",
        WARN,
        f"{detail}, but `vllm serve` applies the target's generation_config.json ({shown}) to requests that do "
        "not set them: those sample from a truncated distribution, not the target's, and acceptance at "
        "temperature > 0 differs from eval.py's",
        "serve with --generation-config vllm, or send top_k=-1, top_p=1 (and the temperature you evaluated at) "
        "with each request",
    )


def check_num_speculative_tokens(ctx: _Context) -> Check:
    trained = ctx.algorithm.trained_tokens(ctx.draft_config)
    asked = ctx.inputs.num_speculative_tokens
    if asked is None or 1 <= asked <= trained:
        return Check("num_speculative_tokens", PASS, f"{asked or trained} (the draft was trained for {trained})")
    return Check(
        "num_speculative_tokens",
        WARN,
        f"{asked}, but the draft was trained to propose {trained} per round: positions past {trained} were "
        "never learned, so acceptance there is near zero and every round pays for them",
        f"set num_speculative_tokens to at most {trained}",
    )


def check_anchor_layout(ctx: _Context) -> Check:
    from deepspec.export.vllm_layout import engine_anchor_layout_problem

    problem = engine_anchor_layout_problem(
        raw_config=ctx.raw_draft_config, config=ctx.draft_config, method=ctx.inputs.method
    )
    if problem is None:
        return Check("anchor_layout", PASS, "the draft's block layout is the one the engine's method reads")
    why, fix = problem
    return Check("anchor_layout", WARN, why, fix)


CHECKS = (
    check_frozen_pieces,
    check_mask_token,
    check_layer_ids,
    check_chat_template,
    check_sampling,
    check_num_speculative_tokens,
    check_anchor_layout,
)


def run_doctor(inputs: DoctorInputs) -> list[Check]:
    """Every check, in order. A check that cannot read what it needs is a warning naming what failed."""
    from deepspec.errors import DeepSpecError

    ctx, out = _Context(inputs), []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            out.append(check(ctx))
        except (DeepSpecError, OSError, ValueError, KeyError) as exc:
            out.append(Check(name, WARN, f"could not be checked: {exc}", "fix what the message names and rerun"))
    return out


def doctor_report(checks: list[Check]) -> str:
    warned = sum(c.status == WARN for c in checks)
    lines = [c.line() for c in checks]
    lines.append(f"[doctor] {len(checks) - warned} passed, {warned} warning(s)")
    return "\n".join(lines)


def checks_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
