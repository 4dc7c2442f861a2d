"""τ error bars: the bootstrap over prompts against exact enumeration, paired differences, seeds, compare.py."""

import itertools
import json
from fractions import Fraction

import numpy as np
import pytest

from badinput import refused, run_entry
from deepspec.eval.comparison import Run, mean_tasks, paired, pairing_line, summarize
from deepspec.eval.intervals import (
    PromptMismatchError,
    align,
    interval,
    prompt_counts,
    resample,
    run_draws,
    tau_intervals,
)
from deepspec.eval.metrics import task_metrics


def pp(*counts, ids=None):
    """A per_prompt list from (rounds, accepted) pairs, prompt indices 0, 1, ..."""
    return [
        {"prompt_index": i, "prompt_id": (ids or {}).get(i, f"p{i}"), "prompt_tokens": 9, "rounds": r, "accepted": a}
        for i, (r, a) in enumerate(counts)
    ]


def exact_bootstrap(tasks: list[list[tuple[int, int]]]) -> dict[Fraction, Fraction]:
    """The exact distribution of the macro τ under the bootstrap: every ordered resample of every task's
    prompts (n^n per task, equally likely), τ = Σ(rounds + accepted) / Σ rounds, averaged over the tasks."""
    per_task = []
    for prompts in tasks:
        n, dist = len(prompts), {}
        for pick in itertools.product(range(n), repeat=n):
            r = sum(prompts[i][0] for i in pick)
            tau = Fraction(sum(prompts[i][0] + prompts[i][1] for i in pick), r)
            dist[tau] = dist.get(tau, 0) + Fraction(1, n**n)
        per_task.append(dist)
    out = {}
    for combo in itertools.product(*(d.items() for d in per_task)):
        mean = sum(v for v, _ in combo) / len(combo)
        p = np.prod([q for _, q in combo])
        out[mean] = out.get(mean, 0) + p
    return out


def exact_quantile(dist, q: float, *, margin: float):
    """The value where the exact CDF crosses q; asserts the CDF jumps there with ``margin`` on both sides, so a
    Monte-Carlo percentile with many draws lands on that very value."""
    cdf = 0.0
    for v, p in sorted(dist.items()):
        before, cdf = cdf, cdf + float(p)
        if cdf >= q:
            assert before < q - margin and cdf > q + margin, (v, before, cdf)
            return float(v)
    raise AssertionError("unreachable")


def test_one_task_interval_is_the_exact_bootstrap_quantiles():
    prompts = [(10, 5), (8, 16), (12, 30), (5, 1)]  # (rounds, accepted): τ 1.5, 3, 3.5, 1.2; τ = 87 / 35
    dist = exact_bootstrap([prompts])
    lo, hi = exact_quantile(dist, 0.025, margin=0.005), exact_quantile(dist, 0.975, margin=0.005)
    assert (lo, hi) == (1.4, 3.3)  # 7/5 and 33/10, by the enumeration
    tasks, macro = tau_intervals({"gsm8k": pp(*prompts)}, draws=40_000, seed=3)
    assert tasks["gsm8k"] == pytest.approx([lo, hi]) and macro["all"] == pytest.approx([lo, hi])
    assert macro["math"] == macro["all"]
    # Resampling whole prompts: the mean of the draws is the exact bootstrap mean, not τ of the rounds pooled.
    keys = {"gsm8k": [0, 1, 2, 3]}
    draws = run_draws([{"gsm8k": pp(*prompts)}], keys=keys, index=resample({"gsm8k": 4}, draws=40_000, seed=3))
    exact_mean = float(sum(v * p for v, p in dist.items()))
    assert draws.task_draws["gsm8k"].mean() == pytest.approx(exact_mean, abs=0.01)
    assert draws.tau["gsm8k"] == pytest.approx(87 / 35)


def test_macro_interval_resamples_each_task_on_its_own():
    gsm, code = [(6, 2), (10, 20), (3, 2)], [(5, 20), (4, 16), (8, 0)]
    dist = exact_bootstrap([gsm, code])
    lo, hi = exact_quantile(dist, 0.025, margin=0.004), exact_quantile(dist, 0.975, margin=0.004)
    tasks, macro = tau_intervals({"gsm8k": pp(*gsm), "humaneval": pp(*code)}, draws=40_000, seed=0)
    assert macro["all"] == pytest.approx([lo, hi])
    assert set(macro) == {"all", "math", "code"} and macro["math"] == tasks["gsm8k"]
    # Seeded: the same seed gives the same draws, another seed others.
    again = resample({"gsm8k": 3, "humaneval": 3}, draws=1000, seed=5)
    assert all((again[t] == resample({"gsm8k": 3, "humaneval": 3}, draws=1000, seed=5)[t]).all() for t in again)
    assert (again["gsm8k"] != resample({"gsm8k": 3, "humaneval": 3}, draws=1000, seed=6)["gsm8k"]).any()


def test_interval_edges():
    assert interval(np.array([np.nan, np.nan])) is None
    assert interval(np.array([2.0] * 10)) == [2.0, 2.0]
    # A prompt without rounds (its first token was a stop token) adds nothing; a task of such prompts has no τ.
    tasks, macro = tau_intervals({"gsm8k": pp((0, 0), (4, 4)), "mbpp": pp((0, 0))}, draws=200, seed=0)
    assert tasks["mbpp"] is None and "code" not in macro
    assert tasks["gsm8k"][1] == 2.0 and macro["all"][1] == 2.0
    # One prompt resamples to itself: no interval (not a zero-width one), for it and the averages over it.
    tasks, macro = tau_intervals({"gsm8k": pp((4, 4), (4, 8)), "mbpp": pp((3, 6))}, draws=200, seed=0)
    assert tasks["mbpp"] is None and macro["code"] is None and macro["all"] is None and macro["math"] is not None
    one = _run("one", {"gsm8k": pp((4, 4))})
    p = _pair(one, _run("other", {"gsm8k": pp((4, 0))}))
    assert p.differences["all"].relative == 1.0 and p.differences["all"].resolved is None
    assert (
        pairing_line(p)
        == "one vs other (paired: 1 prompts in 1 task): all +100.0% [no interval], math +100.0% [no interval]"
    )
    assert p.notes == [
        "no interval for gsm8k (1) or the averages over them: one prompt resamples to itself; evaluate more "
        "prompts per task"
    ]


def test_per_prompt_counts_give_the_task_tau():
    records = [
        {"prompt_index": 0, "prompt_id": "a", "prompt_tokens": 5, "rounds": [{"accepted": 3}, {"accepted": 0}]},
        {"prompt_index": 1, "prompt_id": "b", "prompt_tokens": 7, "rounds": [{"accepted": 2}]},
    ]
    counts = prompt_counts(records)
    assert counts == [
        {"prompt_index": 0, "prompt_id": "a", "prompt_tokens": 5, "rounds": 2, "accepted": 3},
        {"prompt_index": 1, "prompt_id": "b", "prompt_tokens": 7, "rounds": 1, "accepted": 2},
    ]
    rounds = [dict(r, gamma=3, proposal_len=3) for rec in records for r in rec["rounds"]]
    tau = task_metrics(rounds, gamma=3, num_samples=2)["acceptance_length"]
    assert tau == sum(c["rounds"] + c["accepted"] for c in counts) / sum(c["rounds"] for c in counts) == 8 / 3


def _run(name, *seeds):
    results = [
        {"tasks": {t: {"acceptance_length": None, "per_prompt": per} for t, per in seed.items()}, "meta": {}}
        for seed in seeds
    ]
    for r in results:
        for m in r["tasks"].values():
            rounds = sum(p["rounds"] for p in m["per_prompt"])
            m["acceptance_length"] = (rounds + sum(p["accepted"] for p in m["per_prompt"])) / rounds
    return Run(name=name, folders=[f"runs/{name}/{i}" for i in range(len(seeds))], results=results)


def _pair(a, b, draws=2000):
    return paired(a, b, domains=None, macro={}, draws=draws, seed=0)


def test_paired_difference_sign_and_resolution():
    base = [(10, 10), (10, 30), (10, 5), (10, 50), (10, 15), (10, 25)]  # τ 2, 4, 1.5, 6, 2.5, 3.5
    better = [(r, a + 4) for r, a in base]  # +0.4 on every prompt
    b = _run("b", {"gsm8k": pp(*base)})
    a = _run("a", {"gsm8k": pp(*better)})
    d = _pair(a, b).differences["all"]
    assert d.relative == pytest.approx(3.65 / 3.25 - 1)  # τ (60 + 135 + 24) / 60 over (60 + 135) / 60
    assert d.resolved is True and 0 < d.interval[0] <= d.relative <= d.interval[1]
    # The other way round: the same difference, negative, also resolved.
    d = _pair(b, a).differences["all"]
    assert d.relative == pytest.approx(3.25 / 3.65 - 1) and d.interval[1] < 0 and d.resolved is True
    # Paired, not two separate intervals: each run's own interval is wide and they overlap a lot ...
    ta, _ = tau_intervals({"gsm8k": pp(*better)}, draws=2000, seed=0)
    tb, _ = tau_intervals({"gsm8k": pp(*base)}, draws=2000, seed=0)
    assert ta["gsm8k"][0] < tb["gsm8k"][1] - 1.0
    # ... and a difference that flips sign from prompt to prompt is not resolved.
    mixed = [(r, a + (12 if i % 2 else -4)) for i, (r, a) in enumerate(base)]
    p = _pair(_run("c", {"gsm8k": pp(*mixed)}), b)
    assert (
        p.differences["all"].resolved is False
        and p.differences["all"].interval[0] < 0 < p.differences["all"].interval[1]
    )
    line = pairing_line(p)
    assert (
        line.startswith("c vs b (paired: 6 prompts in 1 task): all ") and line.count("not resolved") == 2
    )  # all, math
    assert "not resolved" not in pairing_line(_pair(a, b))


def test_pairing_uses_the_shared_prompts_and_refuses_different_ones():
    a = _run("a", {"gsm8k": pp((4, 4), (4, 8), (4, 0)), "mbpp": pp((2, 2))})
    b = _run("b", {"gsm8k": pp((4, 4), (4, 8))})
    p = _pair(a, b)
    assert p.prompts == 2 and p.tasks == 1
    assert p.notes == [
        "gsm8k paired over the 2 prompts all runs share (a 3, b 2)",
        "mbpp left out of the pairing: b did not evaluate it",
    ]
    assert p.differences["all"].relative == pytest.approx(0.0)  # the same counts on the shared prompts
    other = _run("c", {"gsm8k": pp((4, 4), (4, 8), ids={1: "another prompt"})})
    with pytest.raises(PromptMismatchError, match=r"^a vs c: gsm8k prompt 1 is not the same prompt in a and c "):
        _pair(a, other)
    with pytest.raises(PromptMismatchError, match="evaluate both on the same --eval-data-dir"):
        align({"x": {"gsm8k": pp((1, 1), ids={0: "u"})}, "y": {"gsm8k": pp((1, 1), ids={0: "v"})}})


def test_seeds_mean_spread_and_interval():
    # Seed 1: τ 2 on gsm8k, 3 on humaneval (macro 2.5); seed 2: 3 and 4 (macro 3.5). Every prompt of a task
    # has the same τ within a seed, so every bootstrap draw equals the point: the interval is the mean itself.
    s1 = {"gsm8k": pp((5, 5), (3, 3)), "humaneval": pp((2, 4), (4, 8))}
    s2 = {"gsm8k": pp((5, 10), (3, 6)), "humaneval": pp((2, 6), (4, 12))}
    run = _run("dspark", s1, s2)
    s = summarize(run, domains=None, draws=500, seed=0)
    assert s.seeds == 2 and [m["all"] for m in s.seed_macro] == [2.5, 3.5]
    assert s.macro["all"] == 3.0 and s.spread["all"] == pytest.approx(np.std([2.5, 3.5], ddof=1))
    assert s.macro_ci["all"] == pytest.approx([3.0, 3.0]) and s.task_ci["gsm8k"] == pytest.approx([2.5, 2.5])
    assert mean_tasks(run.results)["gsm8k"]["acceptance_length"] == 2.5
    one = summarize(_run("x", s1), domains=None, draws=500, seed=0)
    assert one.spread["all"] is None and one.macro["all"] == 2.5
    # Seeds share the draws: a seed pair whose prompts move together gives a narrower interval than one seed.
    wide = {"gsm8k": pp((4, 0), (4, 12))}
    s = summarize(_run("y", wide, {"gsm8k": pp((4, 12), (4, 0))}), domains=None, draws=500, seed=0)
    assert s.macro_ci["all"] == pytest.approx([2.5, 2.5])  # the seeds' draws cancel: 1 + 4 on either prompt
    old = Run(name="old", folders=["runs/old"], results=[{"tasks": {"gsm8k": {"acceptance_length": 2.0}}}])
    p = paired(old, run, domains=None, macro={"old": {"all": 2.0}, "dspark": {"all": 2.5}}, draws=500, seed=0)
    assert pairing_line(p) == "old vs dspark: all -20.0% (no interval: a run has no per-prompt counts; rerun eval.py)"
    assert summarize(old, domains=None, draws=500, seed=0).notes == [
        "no interval, runs/old has no per-prompt counts (written before eval.py recorded them); rerun eval.py there"
    ]


def _write_run(folder, tasks, **extra):
    folder.mkdir(parents=True)
    results = {"tasks": {}, "meta": {"gamma": 3}, **extra}
    for name, per in tasks.items():
        rounds = sum(p["rounds"] for p in per)
        tau = (rounds + sum(p["accepted"] for p in per)) / rounds
        results["tasks"][name] = {"acceptance_length": tau, "per_prompt": per}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_compare_prints_intervals_seeds_cost_and_not_resolved(tmp_path):
    base = [(10, 10), (10, 30), (10, 5), (10, 50)]  # τ (40 + 95) / 40 = 3.375
    cost = {"draft_cost": {"flops_per_round": 2.0e6, "seconds_per_round": 0.004}}
    # Two seeds of a: one and four more accepted tokens per prompt, τ 3.475 and 3.775 (mean 3.625).
    a1 = _write_run(tmp_path / "a1", {"gsm8k": pp(*[(r, x + 1) for r, x in base])}, **cost)
    a2 = _write_run(tmp_path / "a2", {"gsm8k": pp(*[(r, x + 4) for r, x in base])}, **cost)
    b = _write_run(
        tmp_path / "b", {"gsm8k": pp(*base)}, draft_cost={"flops_per_round": 1.0e6, "seconds_per_round": 0.002}
    )
    c = _write_run(tmp_path / "c", {"gsm8k": pp(*[(r, x + (9 if i % 2 else -5)) for i, (r, x) in enumerate(base)])})
    out = tmp_path / "cmp"
    res = run_entry(
        "scripts/eval/compare.py", ["--runs", f"a={a1},{a2}", f"b={b}", f"c={c}", "--output-dir", out], timeout=120
    )
    assert res.rc == 0, res.stderr
    table = (out / "table.md").read_text()
    assert table in res.stdout
    lines = table.splitlines()
    assert lines[0].split(" | ") == [
        "| algorithm",
        "τ all",
        "τ math",
        "gsm8k",
        "draft FLOP/round",
        "draft ms/round",
        "τ per draft GFLOP",
        "τ per draft ms |",
    ]
    sd = np.std([3.475, 3.775], ddof=1)
    assert lines[2].startswith(f"| a | {3.625:.2f} ±{sd:.2f} [")
    assert lines[2].endswith(f"| 2 M | 4 | {3.625 / 2e-3:.0f} | {3.625 / 4:.3g} |")  # 2 MFLOP = 0.002 GFLOP; 4 ms
    assert lines[3].startswith("| b | 3.38 [") and lines[3].endswith("| 1 M | 2 | 3375 | 1.69 |")
    assert lines[4].endswith("| - | - | - | - |")  # c has no draft cost recorded
    diff = {line.split(" (")[0]: line for line in lines if " vs " in line}
    assert diff["a vs b"].startswith(f"a vs b (paired: 4 prompts in 1 task): all {100 * (3.625 / 3.375 - 1):+.1f}% [")
    assert "not resolved" not in diff["a vs b"] and diff["a vs c"].count("not resolved") == 2
    assert "τ: mean over 2 seeds ± its standard deviation across seeds, then the 95% interval" in lines
    data = json.loads((out / "results.json").read_text())
    assert data["bootstrap"] == {"draws": 1000, "seed": 0}
    assert data["algorithms"]["a"]["folders"] == [str(a1), str(a2)]
    assert data["algorithms"]["a"]["spread_across_seeds"]["all"] == pytest.approx(sd)
    assert data["differences"]["a vs b"]["differences"]["all"]["resolved"] is True
    assert data["differences"]["a vs c"]["differences"]["all"]["resolved"] is False
    # Different prompts under one index: refused, nothing written.
    d = _write_run(tmp_path / "d", {"gsm8k": pp(*base, ids={2: "not the same"})})
    refused(
        run_entry("scripts/eval/compare.py", ["--runs", f"b={b}", f"d={d}", "--output-dir", tmp_path / "cmp2"]),
        "b vs d: gsm8k prompt 2 is not the same prompt in b and d (prompt_id p2 vs not the same)",
    )
    assert not (tmp_path / "cmp2").exists()
