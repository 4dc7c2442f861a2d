"""Stage 3: speculative decoding over the benchmark prompts; τ, per-position rates, calibration, plots.

:func:`run_eval` is what ``eval.py`` calls. One worker per visible GPU takes every W-th prompt of
each task; on CPU one in-process worker does everything. Every decoding round is kept
(``rounds.jsonl``): metrics, the confidence diagnostics, STS calibration and the serving simulator
all read that one record.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deepspec.errors import DeepSpecError, check_outputs_apart
from deepspec.eval.intervals import DEFAULT_DRAWS, DEFAULT_SEED
from deepspec.eval.tasks import TaskSpec, domains_of, load_prompts


class EvalSetupError(DeepSpecError, ValueError):
    """A draft / target / flag combination that cannot run; the message says what to change."""


@dataclass
class EvalOptions:
    target: str
    draft: str | None  # None with self_draft
    tasks: list[TaskSpec]
    output_dir: Path
    absent_tasks: list[str] = field(default_factory=list)  # requested known tasks without a prompt file
    max_new_tokens: int = 2048
    temperature: float = 1.0
    confidence_threshold: float = 0.0  # DeepSpec's rule: cut at the first slot with c_k < t (0 = off)
    survival_threshold: float | None = None  # cumulative rule: keep slots while Π c_i >= t
    seed: int = 0
    batch_size: int = 1
    device: str = "cpu"
    dtype: str = "auto"
    scheduler: str | None = None  # fixed | threshold | cumulative-threshold | prefix (None: see policy_choice)
    engine_profile: str | None = None
    async_scheduler: bool = False
    use_calibration: bool = True
    self_draft_gamma: int = 0  # > 0: the target drafts for itself (ceiling check, τ = γ+1)
    num_speculative_tokens: int | None = None  # tokens drafted per round (None: what the draft was trained for)
    bootstrap_draws: int = DEFAULT_DRAWS  # τ intervals: draws of the bootstrap over prompts
    bootstrap_seed: int = DEFAULT_SEED
    save_outputs: bool = False
    progress: bool = True


def resolve_draft_dir(path: str) -> str:
    """A draft folder, a training checkpoint root (its latest complete step), or a hub id."""
    from deepspec.training.checkpoint import latest_checkpoint

    p = Path(os.path.expanduser(path))
    # step_latest is a symlink to the newest step_N, i.e. a draft folder; earlier trainers wrote it as
    # a one-line text file naming that folder instead: follow it.
    if p.is_file() and p.name == "step_latest":
        p = p.parent / p.read_text().strip()
    if (p / "config.json").is_file():
        return str(p)
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise EvalSetupError(
                f"{p} holds no draft (no config.json) and no complete step_N checkpoint; "
                "pass a step folder such as checkpoints/<project>/<exp>/step_100"
            )
        return str(latest)
    return path  # a hub id: transformers downloads it (the only network use, on request)


def check_draft_fits_target(draft_config, target) -> None:
    """Fail early when a draft was trained for another target."""
    problems = []
    for key, mine, theirs in (
        ("hidden_size", draft_config.hidden_size, target.hidden_size),
        ("vocab_size", draft_config.vocab_size, target.vocab_size),
    ):
        if int(mine) != int(theirs):
            problems.append(f"{key} {mine} (draft) != {theirs} (target)")
    n = draft_config.num_target_layers
    if n is not None and int(n) != target.num_layers:
        problems.append(f"the draft was trained on a {n}-layer target, this target has {target.num_layers} layers")
    try:
        target.validate_layer_ids(draft_config.target_layer_ids)
    except ValueError as exc:
        problems.append(str(exc))
    drafting = target.family.drafting_family()
    want = target.config.model_type if drafting is target.family else drafting.model_types[0]
    if getattr(draft_config, "model_type", None) != want:
        problems.append(
            f"model_type {draft_config.model_type!r} (draft) != {want!r} (what drafts for this "
            f"{target.config.model_type!r} target use)"
        )
    if problems:
        raise EvalSetupError(
            "draft does not fit the target: "
            + "; ".join(problems)
            + ". Evaluate a draft trained for this target (its config.json names the target "
            "geometry), or pass the matching --target_name_or_path"
        )


def stop_token_ids(tokenizer, model) -> list[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    from deepspec.targets import FAMILIES

    for token in {m for family in FAMILIES for m in family.end_of_turn}:  # chat end-of-turn markers
        tid = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    return sorted(int(i) for i in ids)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """First user turn through the chat template, generation prompt on, thinking off."""
    messages = [{"role": "user", "content": text}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, enable_thinking=False)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def _load_pair(opts: EvalOptions, device: str, dtype_name: str):
    """(target, draft or None) in ``dtype_name``, the draft fitted to the target."""
    from deepspec.eval.decode_setup import torch_dtype
    from deepspec.export import load_any_draft
    from deepspec.targets import load_target

    dtype = torch_dtype(dtype_name)
    target = load_target(opts.target, dtype=dtype, device=device)
    if opts.self_draft_gamma > 0:
        return target, None
    # frozen_target fills what a speculators folder may omit
    draft = load_any_draft(resolve_draft_dir(opts.draft), frozen_target=opts.target)
    check_draft_fits_target(draft.config, target)
    draft.load_target_weights(target)  # the frozen embedding / LM head are the target's by definition
    return target, draft.to(device=device, dtype=dtype).eval()


def _proposer_factory(opts: EvalOptions, target, draft):
    from deepspec.algorithms import build_proposer
    from deepspec.decoding.proposers import TargetSelfProposer

    if draft is None:
        return lambda: TargetSelfProposer(target, gamma=opts.self_draft_gamma)
    return lambda: build_proposer(draft, num_speculative_tokens=opts.num_speculative_tokens)


def _layer_ids(target, draft) -> list[int]:
    return draft.config.target_layer_ids if draft is not None else [target.num_layers - 2]


def _load_in_chosen_dtype(opts: EvalOptions, device: str):
    """(target, draft or None, γ, the dtype choice): :func:`deepspec.eval.decode_setup.choose_dtype`'s rule;
    with ``auto`` on a CPU with native bf16 both dtypes load, a short probe decode in each picks one, and the
    other is dropped."""
    from deepspec.eval.decode_setup import (
        choose_dtype,
        describe_shapes,
        dtype_without_probe,
        probe_shapes,
        seconds_per_round,
    )

    loaded = {}

    def pair(name: str):
        if name not in loaded:
            loaded[name] = _load_pair(opts, device, name)
        return loaded[name]

    fixed = dtype_without_probe(opts.dtype, device=device)
    target, draft = pair(fixed.name if fixed else "fp32")
    gamma = _proposer_factory(opts, target, draft)().gamma
    if fixed is not None:
        return target, draft, gamma, fixed
    max_pos = int(getattr(target.config, "max_position_embeddings", 0) or 0)
    shapes = probe_shapes(batch=opts.batch_size, gamma=gamma, max_positions=max_pos)

    def probe(name: str) -> float:
        t, d = pair(name)
        proposer = _proposer_factory(opts, t, d)()
        return seconds_per_round(target=t, proposer=proposer, layer_ids=_layer_ids(t, d), shapes=shapes)

    print(f"[eval] --dtype auto: timing fp32 and bf16 decodes ({describe_shapes(shapes)}) ...", file=sys.stderr)
    choice = choose_dtype(opts.dtype, device=device, probe=probe, shapes=shapes)
    return *pair(choice.name), gamma, choice


def load_models(opts: EvalOptions, device: str):
    """(target, draft or None, proposer factory, γ, calibration temperatures or None, the dtype choice)."""
    from deepspec.algorithms import speculative_tokens
    from deepspec.decoding.confidence import load_calibration

    target, draft, gamma, choice = _load_in_chosen_dtype(opts, device)
    print(f"[eval] dtype {choice.name}: {choice.reason}", file=sys.stderr)
    make_proposer = _proposer_factory(opts, target, draft)
    if draft is None:
        return target, None, make_proposer, gamma, None, choice
    draft_dir = resolve_draft_dir(opts.draft)
    k = opts.num_speculative_tokens
    temps = None
    if opts.use_calibration and os.path.isdir(draft_dir) and getattr(draft, "confidence_head", None) is not None:
        if gamma == speculative_tokens(draft.config):
            temps = load_calibration(draft_dir, gamma=gamma)
        elif load_calibration(draft_dir) is not None:  # fitted on full blocks: a shorter block's confidences differ
            print(
                f"[eval] note: {draft_dir}/calibration.json was fitted on full blocks; with "
                f"--num-speculative-tokens {k} the raw confidences are used",
                file=sys.stderr,
            )
    return target, draft, make_proposer, gamma, temps, choice


def check_num_speculative_tokens(opts: EvalOptions) -> int | None:
    """The draft's trained tokens per round, after refusing a ``--num-speculative-tokens`` above it, before
    any model loads (None for a hub id, checked when it loads, and for --self-draft, which has its own γ)."""
    from deepspec.algorithms import speculative_tokens
    from deepspec.export.speculators import read_any_config
    from deepspec.models.draft_config import draft_config_from_dict

    if opts.self_draft_gamma:
        if opts.num_speculative_tokens is not None:
            raise EvalSetupError("--num-speculative-tokens applies to a draft; --self-draft GAMMA sets its own γ")
        return None
    draft_dir = resolve_draft_dir(opts.draft)
    if not os.path.isdir(draft_dir):
        return None
    config = draft_config_from_dict(read_any_config(draft_dir))
    speculative_tokens(config, opts.num_speculative_tokens)
    return speculative_tokens(config)


def policy_choice(
    scheduler: str | None, *, confidence_threshold: float = 0.0, survival_threshold: float | None = None
) -> tuple[str, float | None]:
    """(policy name, its threshold) from eval.py's --scheduler / --confidence-threshold / --survival-threshold.

    Without --scheduler: "threshold" (DeepSpec's per-slot rule) when --confidence-threshold > 0,
    "cumulative-threshold" when --survival-threshold is given, else "fixed". Each threshold
    belongs to its own policy; any other combination is an error.
    """
    for flag, t in (("--confidence-threshold", confidence_threshold), ("--survival-threshold", survival_threshold)):
        if t is not None and not 0.0 <= t <= 1.0:
            raise EvalSetupError(f"{flag} must lie in [0, 1], got {t}")
    if confidence_threshold > 0 and survival_threshold is not None:
        raise EvalSetupError(
            "--confidence-threshold (per-slot rule, DeepSpec's) and --survival-threshold "
            "(cumulative prefix-survival rule) exclude each other; pass one of them"
        )
    name = scheduler or (
        "threshold"
        if confidence_threshold > 0
        else "cumulative-threshold"
        if survival_threshold is not None
        else "fixed"
    )
    if name == "cumulative-threshold":
        if survival_threshold is None:
            raise EvalSetupError(
                "--scheduler cumulative-threshold needs --survival-threshold T in [0, 1] "
                "(keeps the leading slots whose prefix survival Π c_i >= T)"
            )
        return name, survival_threshold
    if survival_threshold is not None:
        raise EvalSetupError(f"--survival-threshold applies to --scheduler cumulative-threshold, not {name}")
    if name == "threshold":
        return name, confidence_threshold
    if confidence_threshold > 0:
        raise EvalSetupError(f"--confidence-threshold applies to --scheduler threshold, not {name}")
    return name, None


def _policy(opts: EvalOptions, gamma: int):
    from deepspec.decoding.scheduler import build_policy

    name, threshold = policy_choice(
        opts.scheduler, confidence_threshold=opts.confidence_threshold, survival_threshold=opts.survival_threshold
    )
    if name == "fixed":
        return None
    return build_policy(
        name, gamma=gamma, threshold=threshold, cost_table=opts.engine_profile, asynchronous=opts.async_scheduler
    )


def decode_shard(opts: EvalOptions, *, rank: int, world: int, device: str) -> dict:
    """Decode this worker's share of every task: {"gamma", "calibration", "tasks": {task: {"records", ...}},
    "setup": the dtype and thread choices with their reasons (results.json's meta)}. torch's thread count is
    put back afterwards."""
    from deepspec.eval.decode_setup import ThreadRule

    threads = ThreadRule(device=device)
    threads.apply()  # the dtype probe in load_models runs at the decode's thread count
    try:
        return _decode_tasks(opts, rank=rank, world=world, device=device, threads=threads)
    finally:
        threads.restore()


def _decode_tasks(opts: EvalOptions, *, rank: int, world: int, device: str, threads) -> dict:
    from tqdm.auto import tqdm

    from deepspec.decoding.engine import speculative_generate
    from deepspec.decoding.target_runner import TargetRunner
    from deepspec.eval.draft_cost import MeteredProposer
    from deepspec.eval.intervals import prompt_id

    target, draft, make_proposer, gamma, temps, dtype = load_models(opts, device)
    layer_ids = _layer_ids(target, draft)
    runner = TargetRunner(target, layer_ids=layer_ids)
    stops = stop_token_ids(target.tokenizer, target.model)
    max_pos = int(getattr(target.config, "max_position_embeddings", 0) or 0)
    policy = _policy(opts, gamma)
    gen = torch.Generator(device=device).manual_seed(opts.seed * 1000 + rank)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    out = {"gamma": gamma, "calibration": temps, "tasks": {}, "setup": {}}
    for task in opts.tasks:
        prompts = load_prompts(task)
        mine = list(range(rank, len(prompts), world))
        records, truncated, costs, t0 = [], 0, [], time.perf_counter()
        bar = tqdm(total=len(mine), desc=f"{task.name}", disable=not opts.progress or rank != 0, unit="prompt")
        for start in range(0, len(mine), opts.batch_size):
            batch = mine[start : start + opts.batch_size]
            encoded = []
            for i in batch:
                ids = encode_prompt(target.tokenizer, prompts[i])
                room = max_pos - opts.max_new_tokens - gamma - 1 if max_pos else len(ids)
                if len(ids) > room:  # keep the end of an over-long prompt (the question and the chat header)
                    if room < 8:
                        raise EvalSetupError(
                            f"--max-new-tokens {opts.max_new_tokens} leaves no room for a prompt "
                            f"in the target's {max_pos} positions; lower it"
                        )
                    ids, truncated = ids[-room:], truncated + 1
                encoded.append(ids)
            proposer = MeteredProposer(make_proposer(), synchronize=sync)
            gens = speculative_generate(
                runner=runner,
                proposer=threads.watch(proposer),  # re-checks the free cores as it goes
                prompts=encoded,
                max_new_tokens=opts.max_new_tokens,
                temperature=opts.temperature,
                stop_token_ids=stops,
                policy=policy,
                confidence_temperatures=temps,
                generator=gen,
            )
            costs.append(proposer.totals())
            for i, ids, g in zip(batch, encoded, gens):
                records.append(
                    {
                        "prompt_index": i,
                        "prompt_id": prompt_id(prompts[i]),
                        "prompt_tokens": len(ids),
                        "tokens": g.tokens,
                        "rounds": g.rounds,
                        "stopped": g.stopped,
                        "text": target.tokenizer.decode(g.tokens, skip_special_tokens=True)
                        if opts.save_outputs
                        else None,
                    }
                )
            bar.update(len(batch))
        bar.close()
        out["tasks"][task.name] = {
            "records": records,
            "seconds": time.perf_counter() - t0,
            "truncated_prompts": truncated,
            "draft_cost": costs,  # MeteredProposer totals, one per batch
        }
    out["setup"] = {**dtype.meta(), **threads.meta()}
    return out


def _decode_shard_to_file(info, *, opts: EvalOptions, shard_dir: str) -> None:
    result = decode_shard(opts, rank=info.rank, world=info.world_size, device=str(info.device))
    with open(Path(shard_dir) / f"shard_{info.rank}.json", "w") as fh:
        json.dump(result, fh)


def decode_all(opts: EvalOptions) -> dict:
    """All shards merged: {"gamma", "calibration", "tasks": {name: {"records", "seconds", ...}}}."""
    world = torch.cuda.device_count() if opts.device == "cuda" else 1  # "cuda": every visible GPU
    if world <= 1:
        return decode_shard(opts, rank=0, world=1, device=opts.device)
    import functools
    import tempfile

    from deepspec.launch import launch, plan_launch

    plan = plan_launch(device_type="cuda", nproc=world, multi_node=False)
    with tempfile.TemporaryDirectory(dir=opts.output_dir) as shard_dir:
        launch(functools.partial(_decode_shard_to_file, opts=opts, shard_dir=shard_dir), plan, process_group=False)
        shards = [json.loads((Path(shard_dir) / f"shard_{r}.json").read_text()) for r in range(world)]
    merged = {"gamma": shards[0]["gamma"], "calibration": shards[0]["calibration"], "tasks": {}}
    merged["setup"] = shards[0]["setup"]  # one rule on every GPU
    for name in shards[0]["tasks"]:
        parts = [s["tasks"][name] for s in shards]
        merged["tasks"][name] = {
            "records": sorted((r for p in parts for r in p["records"]), key=lambda r: r["prompt_index"]),
            "seconds": max(p["seconds"] for p in parts),  # workers run side by side
            "truncated_prompts": sum(p["truncated_prompts"] for p in parts),
            "draft_cost": [c for p in parts for c in p["draft_cost"]],
        }
    return merged


def check_output_dir(opts: EvalOptions) -> None:
    """The report folder must be a folder, apart from the prompt files and the models it reads."""
    out = opts.output_dir
    if out.exists() and not out.is_dir():
        raise EvalSetupError(
            f"--output-dir {out} is a file; pass a folder (it receives results.json, table.md, rounds.jsonl and plots)"
        )
    inputs = {str(task.path.parent) for task in opts.tasks}
    inputs |= {p for p in (opts.target, opts.draft) if p and os.path.exists(os.path.expanduser(p))}
    check_outputs_apart(inputs=sorted(inputs), outputs=[out], what="--output-dir", may_write_into=("eval run",))


def run_eval(opts: EvalOptions) -> dict:
    """Decode, then write rounds.jsonl, results.json, table.md, plots (and outputs.jsonl)."""
    from deepspec.eval.diagnostics import write_reports

    check_output_dir(opts)
    check_num_speculative_tokens(opts)  # a wrong draft path or K fails before the target loads
    opts.output_dir.mkdir(parents=True, exist_ok=True)
    decoded = decode_all(opts)
    scheduler, _ = policy_choice(
        opts.scheduler, confidence_threshold=opts.confidence_threshold, survival_threshold=opts.survival_threshold
    )
    return write_reports(opts, decoded, domains=domains_of(opts.tasks), scheduler=scheduler)
