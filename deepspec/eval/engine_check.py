"""The engine check: a draft decoded by vLLM and by ``eval.py`` on the same prompts, side by side.

:func:`run_engine_check` is what ``scripts/eval/engine_check.py`` calls. In order:

1. the τ doctor (:mod:`deepspec.eval.doctor`), printed; warnings do not stop the check;
2. the target's own greedy output of every prompt (temperature 0 only), decoded here without a draft;
3. the export vLLM needs (:func:`deepspec.export.vllm_layout.vllm_serving_plan`: Eagle3 as a speculators
   folder for ``method: eagle3``, DSpark / DFlash as DeepSpec's folder for ``method: dspark``);
4. vLLM, in its own interpreter (:mod:`deepspec.eval.vllm_side`): ``LLM.chat`` over the same first user
   turns, the target's chat template with thinking off (as ``eval.py`` renders them), the same stop token
   ids, the same temperature with top-k / top-p off, per-request ``detailed`` spec-decode metrics, one run
   per ``num_speculative_tokens`` K, ``batch_size`` requests in flight;
5. ``eval.py``'s evaluation (:func:`deepspec.eval.runner.run_eval`) per K, same dtype and batch size;
6. the comparison (:func:`compare_run`): τ per task and pooled, acceptance per position, the share of
   requests whose verify steps are identical, whether outputs equal the target's greedy output and each
   other, prompts tokenized alike, tokens/s at equal concurrency, and the first request and round where
   the two part. Both sides' τ come from the same formulas over the per-step lists
   (:func:`deepspec.eval.metrics.task_metrics`), vLLM's in its own schema.

``agreement`` per K: ``exact`` (every request's steps and output identical), ``within tolerance`` (|Δτ| of
every task and of the pool at most ``tolerance``), else ``differs``. Everything goes to
``<output_dir>/engine_check.json``; ``eval.py``'s own reports to ``<output_dir>/deepspec_k<K>/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deepspec.errors import DeepSpecError
from deepspec.eval.tasks import TaskSpec, load_prompts

REPORT_NAME = "engine_check.json"
VLLM_SIDE = Path(__file__).with_name("vllm_side.py")
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
EXACT, WITHIN, DIFFERS = "exact", "within tolerance", "differs"


class EngineCheckError(DeepSpecError, ValueError):
    """The engine check cannot run as asked (no vLLM, a draft vLLM does not serve); the message says why."""


@dataclass
class EngineCheckOptions:
    target: str
    draft: str
    tasks: list[TaskSpec]
    output_dir: Path
    num_speculative_tokens: list[int] = field(default_factory=list)  # empty: the draft's trained count
    max_new_tokens: int = 64
    temperature: float = 0.0
    dtype: str = "fp32"  # fp32 | bf16, both engines
    batch_size: int = 1  # requests in flight, both engines
    tolerance: float = 0.01  # |Δτ| allowed per task and pooled
    seed: int = 0
    vllm_python: str | None = None  # default: vllm_interpreter()
    doctor_only: bool = False
    method: str | None = None  # the vLLM method the user serves with, for the doctor (None: the one served here)
    target_cache_dir: str | None = None
    train_data_paths: list[str] = field(default_factory=list)
    progress: bool = True


def vllm_interpreter(explicit: str | None = None) -> str:
    """vLLM's python: ``explicit``, else $DEEPSPEC_VLLM_PYTHON, else $DEEPSPEC_VLLM_VENV/bin/python, else
    ``<repo>/.venv-vllm/bin/python``; an error saying how to install it when there is none."""
    root = Path(__file__).resolve().parents[2]
    venv = os.environ.get("DEEPSPEC_VLLM_VENV")
    py = explicit or os.environ.get("DEEPSPEC_VLLM_PYTHON") or str(Path(venv or root / ".venv-vllm") / "bin" / "python")
    if not Path(py).is_file():
        raise EngineCheckError(
            f"no vLLM interpreter at {py}; install vLLM's environment with `bash scripts/data/setup_vllm_env.sh` "
            "or pass --vllm-python (or set DEEPSPEC_VLLM_PYTHON)"
        )
    return py


# ----------------------------------------------------------------------------- the two sides' records


def steps_as_rounds(steps: dict, *, gamma: int) -> list[dict]:
    """A request's per-step lists (vLLM's schema) as round records for :func:`task_metrics`."""
    return [
        {"gamma": gamma, "proposal_len": int(d), "accepted": int(a)}
        for a, d in zip(steps["per_step_accepted"], steps["per_step_drafted"])
    ]


def side_metrics(requests: list[dict], *, gamma: int, seconds: float | None) -> dict:
    """τ per task and pooled, acceptance per position (pooled) and tokens/s, from per-step lists."""
    from deepspec.eval.metrics import task_metrics

    by_task: dict[str, list[dict]] = {}
    for r in requests:
        by_task.setdefault(r["task"], []).append(r)
    taus = {}
    for task, reqs in by_task.items():
        rounds = [x for r in reqs for x in steps_as_rounds(r, gamma=gamma)]
        taus[task] = task_metrics(rounds, gamma=gamma, num_samples=len(reqs))["acceptance_length"]
    pooled = task_metrics(
        [x for r in requests for x in steps_as_rounds(r, gamma=gamma)], gamma=gamma, num_samples=len(requests)
    )
    tokens = sum(len(r["token_ids"]) for r in requests)
    return {
        "tau": taus,
        "tau_pooled": pooled["acceptance_length"],
        "accept_rate_by_position": pooled["accept_rate_by_position"],
        "generated_tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds else None,
    }


def first_difference(ours: list[dict], theirs: list[dict]) -> dict | None:
    """The first request (in prompt order) whose verify steps or output differ, and where."""
    for a, b in zip(ours, theirs):
        sa = list(zip(a["per_step_accepted"], a["per_step_drafted"]))
        sb = list(zip(b["per_step_accepted"], b["per_step_drafted"]))
        if sa == sb and a["token_ids"] == b["token_ids"]:
            continue
        step = next((i for i, (x, y) in enumerate(zip(sa, sb)) if x != y), min(len(sa), len(sb)))
        token = next((i for i, (x, y) in enumerate(zip(a["token_ids"], b["token_ids"])) if x != y), None)
        if token is None and len(a["token_ids"]) != len(b["token_ids"]):
            token = min(len(a["token_ids"]), len(b["token_ids"]))
        pick = lambda s: list(s[step]) if step < len(s) else None  # noqa: E731  ([accepted, drafted] or None)
        return {
            "task": a["task"],
            "prompt_index": a["prompt_index"],
            "round": step if sa != sb else None,
            "ours": pick(sa),
            "vllm": pick(sb),
            "first_token": token,
        }
    return None


def compare_run(
    *,
    ours: list[dict],
    theirs: list[dict],
    gamma: int,
    greedy: list[list[int]] | None,
    prompt_ids: list[list[int]],
    seconds: dict,
    tolerance: float,
) -> dict:
    """One K compared. ``ours`` / ``theirs``: per request (prompt order) ``task``, ``prompt_index``,
    ``token_ids``, ``per_step_accepted``, ``per_step_drafted`` (vLLM's also ``prompt_token_ids``);
    ``greedy``: the target's greedy outputs (None above temperature 0); ``seconds``: {"ours", "vllm"}."""
    n = len(ours)
    assert len(theirs) == n == len(prompt_ids), (
        f"{n} requests of ours, {len(theirs)} of vLLM's, {len(prompt_ids)} prompts"
    )
    a = side_metrics(ours, gamma=gamma, seconds=seconds.get("ours"))
    b = side_metrics(theirs, gamma=gamma, seconds=seconds.get("vllm"))
    same_steps = sum(
        (x["per_step_accepted"], x["per_step_drafted"]) == (y["per_step_accepted"], y["per_step_drafted"])
        for x, y in zip(ours, theirs)
    )
    same_out = sum(x["token_ids"] == y["token_ids"] for x, y in zip(ours, theirs))
    deltas = {t: (b["tau"].get(t) or 0.0) - (v or 0.0) for t, v in a["tau"].items()}
    deltas["pooled"] = (b["tau_pooled"] or 0.0) - (a["tau_pooled"] or 0.0)
    worst = max((abs(d) for d in deltas.values()), default=0.0)
    agreement = EXACT if same_steps == n and same_out == n else WITHIN if worst <= tolerance else DIFFERS
    return {
        "num_speculative_tokens": gamma,
        "num_requests": n,
        "ours": a,
        "vllm": b,
        "tau_difference": deltas,
        "identical_rounds": same_steps,
        "identical_rounds_share": same_steps / n if n else None,
        "identical_outputs": same_out,
        "outputs_equal_target_greedy": None
        if greedy is None
        else {
            "ours": sum(x["token_ids"] == g for x, g in zip(ours, greedy)),
            "vllm": sum(y["token_ids"] == g for y, g in zip(theirs, greedy)),
        },
        "prompts_tokenized_alike": sum(y.get("prompt_token_ids") == p for y, p in zip(theirs, prompt_ids)),
        "first_difference": first_difference(ours, theirs),
        "agreement": agreement,
        "tolerance": tolerance,
    }


def format_comparison(c: dict, *, method: str, dtype: str, temperature: float, batch_size: int) -> str:
    """The side-by-side text of one :func:`compare_run` result."""
    n, k, a, b = c["num_requests"], c["num_speculative_tokens"], c["ours"], c["vllm"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"K={k}: vLLM method {method}, {dtype}, temperature {temperature:g}, {n} requests, {batch_size} in flight"]
    lines.append(f"  {'task':<16}{'τ eval.py':>10}{'τ vLLM':>10}{'Δ':>9}")
    for task in a["tau"]:
        lines.append(
            f"  {task:<16}{fmt(a['tau'][task]):>10}{fmt(b['tau'].get(task)):>10}{c['tau_difference'][task]:>+9.3f}"
        )
    lines.append(
        f"  {'pooled':<16}{fmt(a['tau_pooled']):>10}{fmt(b['tau_pooled']):>10}{c['tau_difference']['pooled']:>+9.3f}"
    )
    lines.append(f"  {'position':<16}{'acc eval.py':>12}{'acc vLLM':>10}")
    for i, (x, y) in enumerate(zip(a["accept_rate_by_position"], b["accept_rate_by_position"]), 1):
        lines.append(f"  {i:<16}{fmt(x):>12}{fmt(y):>10}")
    lines.append(
        f"  identical rounds: {c['identical_rounds']}/{n} requests; identical outputs: {c['identical_outputs']}/{n}"
    )
    greedy = c["outputs_equal_target_greedy"]
    if greedy is not None:
        lines.append(f"  outputs = the target's greedy output: eval.py {greedy['ours']}/{n}, vLLM {greedy['vllm']}/{n}")
    lines.append(f"  prompts tokenized alike: {c['prompts_tokenized_alike']}/{n}")
    lines.append(
        f"  tokens/s with {batch_size} in flight: eval.py {fmt(a['tokens_per_second'])}, vLLM "
        f"{fmt(b['tokens_per_second'])} (decode only, model loading excluded)"
    )
    diff = c["first_difference"]
    if diff is not None:
        where = (
            f"round {diff['round']} (eval.py [accepted, drafted] {diff['ours']}, vLLM {diff['vllm']})"
            if diff["round"] is not None
            else "the same rounds"
        )
        lines.append(
            f"  first difference: {diff['task']} prompt {diff['prompt_index']}, {where}; outputs part at token "
            f"{diff['first_token']}"
        )
    lines.append(
        f"  agreement: {c['agreement']}" + ("" if c["agreement"] == EXACT else f" (tolerance {c['tolerance']:g})")
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running both engines


def prompt_list(tasks: list[TaskSpec]) -> list[dict]:
    """Every prompt of every task in evaluation order: ``task``, ``prompt_index``, ``text`` (first user turn)."""
    return [{"task": t.name, "prompt_index": i, "text": text} for t in tasks for i, text in enumerate(load_prompts(t))]


def reference_side(opts: EngineCheckOptions, prompts: list[dict], *, device: str) -> dict:
    """Our tokenization of each prompt, the stop token ids, and (temperature 0) the target's greedy outputs."""
    from deepspec.decoding.engine import target_generate
    from deepspec.decoding.target_runner import TargetRunner
    from deepspec.eval.decode_setup import dtype_without_probe
    from deepspec.eval.runner import encode_prompt, stop_token_ids
    from deepspec.targets import load_target

    # eval.py's rule (decode_setup): an explicit dtype is used as given, on both engines
    target = load_target(opts.target, dtype=dtype_without_probe(opts.dtype, device=device).dtype, device=device)
    encoded = [encode_prompt(target.tokenizer, p["text"]) for p in prompts]
    stops = stop_token_ids(target.tokenizer, target.model)
    greedy = None
    if opts.temperature == 0:
        runner = TargetRunner(target, layer_ids=[target.num_layers - 2])
        greedy = [
            target_generate(
                runner=runner, prompts=[ids], max_new_tokens=opts.max_new_tokens, temperature=0, stop_token_ids=stops
            )[0].tokens
            for ids in encoded
        ]
    max_pos = int(getattr(target.config, "max_position_embeddings", 0) or 0)
    return {"encoded": encoded, "stop_token_ids": stops, "greedy": greedy, "max_position_embeddings": max_pos}


def export_for_vllm(opts: EngineCheckOptions, config: dict) -> tuple[Path, str]:
    """The draft in the folder vLLM serves it from, and the method: (folder, method)."""
    from deepspec.eval.runner import resolve_draft_dir
    from deepspec.export import to_speculators_folder, to_vllm_folder
    from deepspec.export.vllm_layout import vllm_caveat, vllm_serving_plan

    fmt, method = vllm_serving_plan(config)
    src, out = resolve_draft_dir(opts.draft), opts.output_dir / "vllm_draft"
    if fmt == "speculators":
        caveat = vllm_caveat(config)
        if caveat:
            raise EngineCheckError(f"vLLM cannot serve this draft: {caveat}")
        to_speculators_folder(
            draft_dir=src, output_dir=out, overwrite=True, verifier_name_or_path=opts.target, frozen_target=opts.target
        )
    else:
        to_vllm_folder(draft_dir=src, output_dir=out, overwrite=True, frozen_target=opts.target)
    return out, method


V1_REFUSAL = "Model Runner V1 does not support"


def run_vllm(opts: EngineCheckOptions, job: dict) -> dict:
    """vLLM's side (:mod:`deepspec.eval.vllm_side`) in its own interpreter; its log goes to vllm.log."""
    py = vllm_interpreter(opts.vllm_python)
    job_file, out_file, log_file = (opts.output_dir / n for n in ("vllm_job.json", "vllm_out.json", "vllm.log"))
    job_file.write_text(json.dumps(job, indent=1))
    out_file.unlink(missing_ok=True)
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    print(f"[engine_check] vLLM ({py}): {len(job['runs'])} run(s) of {len(job['prompts'])} prompts; log {log_file}")
    with open(log_file, "w") as log:
        rc = subprocess.run(
            [py, str(VLLM_SIDE), str(job_file), str(out_file)], stdout=log, stderr=log, env=env
        ).returncode
    if not out_file.is_file():
        tail = log_file.read_text(errors="replace")[-1500:]
        hint = " (is it vLLM's interpreter? `import vllm` must work there)" if "No module named 'vllm'" in tail else ""
        raise EngineCheckError(
            f"vLLM exited with code {rc} before decoding anything{hint}; see {log_file}: ...{tail[-400:]}"
        )
    result = json.loads(out_file.read_text())
    for name, run in result["runs"].items():
        if "error" in run:
            lines = [line.strip() for line in run["error"].splitlines() if line.strip()]
            why = next((line for line in lines if V1_REFUSAL in line), lines[0] if lines else "no message")
            why = why.split(" [type=")[0]  # pydantic's trailer
            if V1_REFUSAL in run["error"]:
                why += (
                    "; this vLLM build runs its V1 model runner (no Triton, e.g. the CPU wheel), which has no DSpark: "
                    "DSpark and DeepSpec-layout DFlash need the V2 GPU runner"
                )
            raise EngineCheckError(f"vLLM refused run {name}: {why}; see {log_file}")
    return result


def run_ours(opts: EngineCheckOptions, k: int, *, device: str) -> tuple[list[dict], float]:
    """``eval.py``'s evaluation at K (its reports in deepspec_k<K>/): per-request steps and outputs, seconds."""
    from deepspec.eval.runner import EvalOptions, run_eval

    out = opts.output_dir / f"deepspec_k{k}"
    run_eval(
        EvalOptions(
            target=opts.target,
            draft=opts.draft,
            tasks=opts.tasks,
            output_dir=out,
            max_new_tokens=opts.max_new_tokens,
            temperature=opts.temperature,
            seed=opts.seed,
            batch_size=opts.batch_size,
            device=device,
            dtype=opts.dtype,
            num_speculative_tokens=k,
            save_outputs=True,
            progress=opts.progress,
        )
    )
    results = json.loads((out / "results.json").read_text())
    outputs = {
        (o["task"], o["prompt_index"]): o["token_ids"]
        for o in map(json.loads, (out / "outputs.jsonl").read_text().splitlines())
    }
    requests = [dict(r, token_ids=outputs[(r["task"], r["prompt_index"])]) for r in results["spec_decode"]["requests"]]
    return requests, sum(t["wall_seconds"] or 0.0 for t in results["tasks"].values())


def check_output_dir(opts: EngineCheckOptions) -> None:
    """A new or empty folder, or an earlier engine check's (replaced), apart from every input."""
    from deepspec.errors import check_outputs_apart

    out = opts.output_dir
    inputs = {str(t.path.parent) for t in opts.tasks} | {p for p in (opts.target, opts.draft) if os.path.exists(p)}
    check_outputs_apart(inputs=sorted(inputs), output_dirs=[out], what="--output-dir")
    if out.exists() and not out.is_dir():
        raise EngineCheckError(f"--output-dir {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_NAME).is_file():
        raise EngineCheckError(f"--output-dir {out} is not empty and holds no earlier {REPORT_NAME}; pick a new folder")


def ks_to_check(opts: EngineCheckOptions, config: dict) -> list[int]:
    from deepspec.algorithms import speculative_tokens
    from deepspec.models.draft_config import draft_config_from_dict

    draft_config = draft_config_from_dict(config)
    ks = opts.num_speculative_tokens or [speculative_tokens(draft_config)]
    return [speculative_tokens(draft_config, k) for k in ks]  # above the trained count: refused here


def vllm_job(
    opts: EngineCheckOptions, prompts: list[dict], ref: dict, *, folder: Path, method: str, ks: list[int]
) -> dict:
    """The job :mod:`deepspec.eval.vllm_side` runs: eval.py's prompts, rendering, stop ids and sampling."""
    longest = max(len(ids) for ids in ref["encoded"])
    return {
        "target": opts.target,
        "dtype": VLLM_DTYPES[opts.dtype],
        "max_model_len": longest + opts.max_new_tokens + 2 * max(ks) + 8,
        "max_num_seqs": opts.batch_size,
        "seed": opts.seed,
        "chat_template_kwargs": {"enable_thinking": False},  # as eval.py's encode_prompt renders prompts
        "sampling": {
            "temperature": opts.temperature,
            "max_tokens": opts.max_new_tokens,
            "stop_token_ids": ref["stop_token_ids"],
            "seed": opts.seed,
        },
        "prompts": [
            {"task": p["task"], "prompt_index": p["prompt_index"], "messages": [{"role": "user", "content": p["text"]}]}
            for p in prompts
        ],
        "runs": [{"name": f"k{k}", "method": method, "draft": str(folder), "num_speculative_tokens": k} for k in ks],
    }


def run_engine_check(opts: EngineCheckOptions) -> dict:
    """Doctor, export, vLLM, eval.py, comparison (module docstring); returns the report it writes."""
    import torch

    from deepspec.eval.doctor import DoctorInputs, checks_json, doctor_report, run_doctor
    from deepspec.eval.runner import resolve_draft_dir
    from deepspec.export.speculators import read_any_config

    draft_dir = resolve_draft_dir(opts.draft)
    config = read_any_config(draft_dir)
    checks = run_doctor(
        DoctorInputs(
            target=opts.target,
            draft=draft_dir,
            num_speculative_tokens=max(opts.num_speculative_tokens) if opts.num_speculative_tokens else None,
            method=opts.method,
            temperature=opts.temperature,
            target_cache_dir=opts.target_cache_dir,
            train_data_paths=opts.train_data_paths,
        )
    )
    print(doctor_report(checks))
    if opts.doctor_only:
        return {"doctor": checks_json(checks)}
    from deepspec.export.vllm_layout import vllm_serving_plan

    fmt, planned = vllm_serving_plan(config)
    if opts.method not in (None, planned):
        raise EngineCheckError(
            f"--method {opts.method}: the engine check serves this draft with method {planned} (export_draft.py "
            f"--format {fmt}), the one that decodes it as trained; pass --doctor-only to check --method alone"
        )
    ks = ks_to_check(opts, config)
    check_output_dir(opts)
    opts.output_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompts = prompt_list(opts.tasks)
    print(f"[engine_check] the target's own decode of {len(prompts)} prompts (tokenization, stop ids, greedy output)")
    ref = reference_side(opts, prompts, device=device)
    folder, method = export_for_vllm(opts, config)
    vllm = run_vllm(opts, vllm_job(opts, prompts, ref, folder=folder, method=method, ks=ks))
    runs = []
    for k in ks:
        print(f"[engine_check] eval.py at K={k}")
        ours, seconds = run_ours(opts, k, device=device)
        theirs = vllm["runs"][f"k{k}"]
        comparison = compare_run(
            ours=ours,
            theirs=theirs["requests"],
            gamma=k,
            greedy=ref["greedy"],
            prompt_ids=ref["encoded"],
            seconds={"ours": seconds, "vllm": theirs["seconds"]},
            tolerance=opts.tolerance,
        )
        print(
            format_comparison(
                comparison, method=method, dtype=opts.dtype, temperature=opts.temperature, batch_size=opts.batch_size
            )
        )
        runs.append(comparison)
    report = {
        "target": opts.target,
        "draft": str(opts.draft),
        "engine": {"name": "vllm", "version": vllm["vllm_version"], "method": method, "export": str(folder)},
        "dtype": opts.dtype,
        "temperature": opts.temperature,
        "max_new_tokens": opts.max_new_tokens,
        "batch_size": opts.batch_size,
        "device": device,
        "tasks": {t.name: t.count for t in opts.tasks},
        "doctor": checks_json(checks),
        "runs": runs,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from deepspec.fsio import atomic_write

    atomic_write(opts.output_dir / REPORT_NAME, json.dumps(report, indent=1) + "\n")
    print(f"[engine_check] wrote {opts.output_dir / REPORT_NAME}", file=sys.stderr)
    return report
