"""Turn decoded records into the eval outputs: rounds.jsonl, results.json, table.md, plots.

Confidence diagnostics (drafts with a confidence head, full blocks verified): per position k the
predicted prefix survival a_k = Π c_i against whether slots 1..k were all accepted — ECE, AUROC and
Brier, uncalibrated and (when the draft folder holds ``calibration.json``) after STS, plus a
reliability diagram per task.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from deepspec.decoding.rounds import ROUNDS_FILE, file_round, write_rounds
from deepspec.eval.metrics import engine_counters, macro_average, request_steps, task_metrics
from deepspec.eval.report import (
    coverage_line,
    draft_cost_line,
    interval_line,
    format_table,
    markdown_table,
    short_name,
    to_jsonable,
    write_results,
)
from deepspec.fsio import atomic_write


def confidence_diagnostics(rounds: list[dict], *, temperatures, plot_path: Path | None, title: str) -> dict | None:
    """Before/after-calibration reports for one task, or None when no round qualifies."""
    from deepspec.decoding.confidence import CalibrationError, apply_temperatures, prefix_survival
    from deepspec.decoding.rounds import check_round
    from deepspec.eval.calibration import calibration_arrays, confidence_report, survival_labels
    from deepspec.eval.plots import plot_reliability, plot_reliability_before_after

    try:  # the same record check calibrate.py applies: NaN/inf logits would give meaningless numbers
        for i, r in enumerate(rounds):
            check_round(r, where=f"{title}, round record {i}")
    except CalibrationError as exc:
        print(f"warning: confidence diagnostics skipped: {exc}", file=sys.stderr)
        return None
    try:
        logits, accepted, _ = calibration_arrays(rounds)
    except CalibrationError:  # no confidence head, or no full block: nothing to diagnose
        return None
    before = confidence_report(logits, accepted)
    after = confidence_report(logits, accepted, temperatures=temperatures) if temperatures else None
    if plot_path is not None:
        labels = survival_labels(accepted, logits.shape[1])
        raw = prefix_survival(apply_temperatures(logits, [1.0] * logits.shape[1]))
        if temperatures:
            plot_reliability_before_after(
                raw, prefix_survival(apply_temperatures(logits, temperatures)), labels, path=plot_path, title=title
            )
        else:
            plot_reliability(raw, labels, path=plot_path, title=f"{title} (uncalibrated)")
    return {"uncalibrated": before, "calibrated": after}


def task_report(name: str, part: dict, *, gamma: int, temps, out_dir: Path) -> tuple[dict, list[dict]]:
    """One task's metrics (τ, per-prompt counts, draft cost, confidence diagnostics) and its rounds.jsonl lines."""
    from deepspec.eval.draft_cost import per_round
    from deepspec.eval.intervals import prompt_counts

    records = part["records"]
    rounds = [file_round(r, task=name, prompt_index=rec["prompt_index"]) for rec in records for r in rec["rounds"]]
    generated = sum(len(rec["tokens"]) for rec in records)
    metrics = task_metrics(
        rounds, gamma=gamma, num_samples=len(records), generated_tokens=generated, wall_seconds=part["seconds"]
    )
    metrics["truncated_prompts"] = part["truncated_prompts"]
    metrics["spec_decode"] = engine_counters(rounds, gamma=gamma)
    metrics["per_prompt"] = prompt_counts(records)
    metrics["draft_cost"] = per_round(part["draft_cost"])
    conf = confidence_diagnostics(rounds, temperatures=temps, plot_path=out_dir / f"reliability_{name}.png", title=name)
    if conf is not None:
        metrics["confidence"] = to_jsonable(conf)
    return metrics, rounds


def output_lines(decoded: dict) -> list[str]:
    """outputs.jsonl: per prompt its task, index, generated token ids and text, and whether it stopped."""
    keys = ("token_ids", "tokens"), ("text", "text"), ("stopped", "stopped")
    return [
        json.dumps({"task": name, "prompt_index": rec["prompt_index"], **{k: rec[src] for k, src in keys}})
        for name, part in decoded["tasks"].items()
        for rec in part["records"]
    ]


def add_intervals(results: dict, *, domains: dict[str, str], draws: int, seed: int) -> tuple[dict, dict, list[str]]:
    """Give each task its ``acceptance_length_ci``; return the macro intervals, the bootstrap's ``meta`` entry and
    the tasks left without an interval."""
    from deepspec.eval.intervals import LEVEL, METHOD, tau_intervals

    task_ci, macro_ci = tau_intervals(
        {n: m["per_prompt"] for n, m in results.items()}, domains=domains, draws=draws, seed=seed
    )
    for name, ci in task_ci.items():
        results[name]["acceptance_length_ci"] = ci
    bootstrap = {"draws": draws, "seed": seed, "level": LEVEL, "method": METHOD}
    return macro_ci, bootstrap, [n for n, ci in task_ci.items() if ci is None]


def write_reports(opts, decoded: dict, *, domains: dict[str, str], scheduler: str) -> dict:
    """``scheduler``: the verification policy the decode used (the runner resolves it from ``opts``)."""
    from deepspec.eval.draft_cost import per_round
    from deepspec.eval.plots import plot_conditional_acceptance

    out_dir = Path(opts.output_dir)
    gamma, temps = decoded["gamma"], decoded["calibration"]
    results, all_rounds = {}, []
    for name, part in decoded["tasks"].items():
        results[name], rounds = task_report(name, part, gamma=gamma, temps=temps, out_dir=out_dir)
        all_rounds += rounds

    write_rounds(out_dir / ROUNDS_FILE, all_rounds)
    if opts.save_outputs:
        atomic_write(out_dir / "outputs.jsonl", "".join(line + "\n" for line in output_lines(decoded)))
    target_name = short_name(opts.target)
    draft_name = f"self (gamma {gamma})" if opts.self_draft_gamma else short_name(opts.draft)
    meta = {
        "target": str(opts.target),
        "draft": draft_name if opts.self_draft_gamma else str(opts.draft),
        "gamma": gamma,
        "num_speculative_tokens": getattr(opts, "num_speculative_tokens", None),  # None: the draft's trained count
        "temperature": opts.temperature,
        "confidence_threshold": opts.confidence_threshold,
        "survival_threshold": opts.survival_threshold,
        "scheduler": scheduler,
        "max_new_tokens": opts.max_new_tokens,
        "batch_size": opts.batch_size,
        "seed": opts.seed,
        "device": opts.device,
        **decoded.get("setup", {}),  # dtype and threads, each with the reason it was chosen
        "calibration_temperatures": temps,
        "absent_tasks": list(opts.absent_tasks),
    }
    pooled = confidence_diagnostics(
        all_rounds, temperatures=temps, plot_path=out_dir / "reliability_all.png", title="all tasks"
    )
    if pooled is not None:
        meta["confidence_all_tasks"] = to_jsonable(pooled)
    requests = [
        {"task": name, "prompt_index": rec["prompt_index"], **request_steps(rec["rounds"])}
        for name, part in decoded["tasks"].items()
        for rec in part["records"]
    ]
    spec_decode = {**engine_counters(all_rounds, gamma=gamma), "requests": requests}
    macro_ci, meta["bootstrap"], without = add_intervals(
        results, domains=domains, draws=opts.bootstrap_draws, seed=opts.bootstrap_seed
    )
    draft_cost = per_round([c for part in decoded["tasks"].values() for c in part["draft_cost"]])
    extra = {"macro_ci": macro_ci, "draft_cost": draft_cost, "spec_decode": spec_decode}
    write_results(out_dir / "results.json", results=results, meta=meta, domains=domains, extra=extra)
    tau = macro_average(results, domains=domains).get("all")
    notes = [coverage_line(results, opts.absent_tasks), interval_line(meta["bootstrap"], without=without)]
    notes = "\n".join(notes + [draft_cost_line(draft_cost, tau=tau)])
    kw = dict(target=target_name, draft=draft_name, gamma=gamma, domains=domains, macro_ci=macro_ci)
    table = format_table(results, **kw) + "\n" + notes
    atomic_write(out_dir / "table.md", markdown_table(results, **kw) + f"\n\n{notes}\n")
    plotted = plot_conditional_acceptance(
        results,
        domains=domains,
        path=out_dir / "conditional_acceptance.png",
        title=f"{draft_name}: conditional acceptance by position",
    )
    print(table)
    if not plotted:
        print(
            "note: no draft position was ever verified (every proposal cut to 0 slots: is the confidence "
            "threshold above every confidence?), so conditional_acceptance.png is not written"
        )
    if pooled is not None:
        print(confidence_table(results, pooled))
    return {"results": results, "meta": meta, "table": table}


def confidence_table(results: dict, pooled: dict) -> str:
    """Per position over all tasks: ECE / AUROC / Brier of the prefix survival (before -> after STS),
    then one mean-ECE line per task (the per-task, per-position numbers are in results.json)."""
    before, after = pooled["uncalibrated"], pooled.get("calibrated")
    fmt = lambda v: "  n/a" if v is None or v != v else f"{v:5.3f}"  # noqa: E731  (None or NaN: one class only)
    lines = ["confidence head, all tasks (prefix survival a_k vs. slots 1..k accepted; full-block rounds):"]
    for k in range(len(before["ece"])):
        lines.append(
            f"  a_{k + 1}  ECE {100 * before['ece'][k]:5.1f}%"
            + (f" -> {100 * after['ece'][k]:4.1f}%" if after else "")
            + f"  AUROC {fmt(before['auroc'][k])}  Brier {fmt(before['brier'][k])}"
            + (f" -> {fmt(after['brier'][k])}" if after else "")
        )
    for name, m in results.items():
        conf = m.get("confidence")
        if conf:
            b = conf["uncalibrated"]["ece"]
            a = (conf.get("calibrated") or {}).get("ece")
            lines.append(
                f"  {name:14s} mean ECE {100 * sum(b) / len(b):4.1f}%"
                + (f" -> {100 * sum(a) / len(a):4.1f}%" if a else "")
            )
    return "\n".join(lines)
