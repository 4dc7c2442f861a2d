"""Tests for the proposal-length policies (DSpark Algorithm 1), the profiler and the serving simulator."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from deepspec.decoding.scheduler import (
    CostTable,
    CumulativeThreshold,
    FixedLength,
    PerSlotThreshold,
    PrefixScheduler,
    SchedulerError,
    build_policy,
)
from deepspec.decoding.confidence import proposal_lengths
from deepspec.decoding.verify import verify_block

REPO = pathlib.Path(__file__).resolve().parents[1]
A, B = 0, 1  # the two tokens of the Appendix A example


def _table(sps: dict[int, float]) -> CostTable:
    keys = sorted(sps)
    return CostTable(batch_tokens=keys, steps_per_second=[sps[k] for k in keys])


# ----------------------------------------------------------------------------- references written here


def _ranked(conf: np.ndarray) -> list[tuple[float, int, int]]:
    """(a, r, j) for a > 0 in the documented order: a desc, slot asc, prefix desc, row asc."""
    cands = []
    for r, row in enumerate(conf):
        a = 1.0
        for j, c in enumerate(row, start=1):
            a *= float(c)
            if a > 0:
                cands.append(((-a, j, tuple(-float(x) for x in row[:j]), r), a, r, j))
    return [(a, r, j) for _, a, r, j in sorted(cands)]


def reference_algorithm1(conf: np.ndarray, table: CostTable, *, early_stop: bool = True) -> list[int]:
    """Algorithm 1 as a plain loop; ``early_stop=False`` = best prefix of the whole ranked list."""
    R = len(conf)
    ell = [0] * R
    tau, batch = float(R), R
    best, best_ell = R * table.sps(R), list(ell)
    for a, r, j in _ranked(conf):
        assert ell[r] == j - 1, f"slot {j} of request {r} ranked before slot {j - 1}"
        ell[r], tau, batch = j, tau + a, batch + 1
        theta = tau * table.sps(batch)
        if theta > best:
            best, best_ell = theta, list(ell)
        elif early_stop:
            break
    return best_ell


# ----------------------------------------------------------------------------- paper Appendix A

APPENDIX_TABLE = {1: 1.0, 2: 0.5, 3: 0.45}
P_TARGET = torch.tensor([0.7, 0.3], dtype=torch.float64)
Q_DRAFT = torch.tensor([0.5, 0.5], dtype=torch.float64)


def _appendix_conf(x1: int) -> torch.Tensor:
    # c_1 = 0.8 before any draft token; c_2 is predicted after x_1: 0.9 after A, 0 after B.
    return torch.tensor([[0.8, 0.9 if x1 == A else 0.0]], dtype=torch.float64)


class NoEarlyStop:
    """The flawed variant of Appendix A: the best Θ over every prefix of the ranked list."""

    name = "no-early-stop"

    def __init__(self, table):
        self.table = table

    def plan(self, confidences, *, gamma):
        return torch.tensor(reference_algorithm1(confidences.numpy(), self.table, early_stop=False))


def _lengths_by_first_draft(policy) -> dict[int, int]:
    return {x1: int(policy.plan(_appendix_conf(x1), gamma=2)[0]) for x1 in (A, B)}


def _exact_prob_first_a(lengths: dict[int, int]) -> float:
    """P(first committed token = A), enumerating x_1 and the accept/resample outcome."""
    p, q = P_TARGET.tolist(), Q_DRAFT.tolist()
    residual = [max(pi - qi, 0.0) for pi, qi in zip(p, q)]
    res_a = residual[A] / sum(residual)
    total = 0.0
    for x1 in (A, B):
        if lengths[x1] == 0:
            first_a = p[A]  # nothing verified: the target samples the token itself
        else:
            accept = min(1.0, p[x1] / q[x1])
            first_a = accept * (x1 == A) + (1 - accept) * res_a
        total += q[x1] * first_a
    return total


def test_appendix_a_theta_values():
    table = _table(APPENDIX_TABLE)
    # Θ(ℓ=0) = 1·1.0, Θ(ℓ=1) = 1.8·0.5, Θ(ℓ=2 | x1=A) = (1 + 0.8 + 0.72)·0.45
    assert [round(v, 6) for v in (1 * table.sps(1), 1.8 * table.sps(2), 2.52 * table.sps(3))] == [1.0, 0.9, 1.134]
    assert _lengths_by_first_draft(PrefixScheduler(table)) == {A: 0, B: 0}  # stops at Θ 0.9 < 1.0
    assert _lengths_by_first_draft(NoEarlyStop(table)) == {A: 2, B: 0}  # 1.134 beats 1.0 only after A


def test_appendix_a_exact():
    table = _table(APPENDIX_TABLE)
    assert _exact_prob_first_a(_lengths_by_first_draft(PrefixScheduler(table))) == pytest.approx(0.7)
    assert _exact_prob_first_a(_lengths_by_first_draft(NoEarlyStop(table))) == pytest.approx(0.85)
    assert _exact_prob_first_a({A: 1, B: 1}) == pytest.approx(0.7)  # any draft-independent ℓ is lossless


@pytest.mark.parametrize("policy_kind, expected", [("algorithm1", 0.7), ("no-early-stop", 0.85)])
def test_appendix_a_sampled_through_verify_block(policy_kind, expected):
    table = _table(APPENDIX_TABLE)
    policy = PrefixScheduler(table) if policy_kind == "algorithm1" else NoEarlyStop(table)
    n = 20_000
    gen = torch.Generator().manual_seed(1234)
    drafts = torch.multinomial(Q_DRAFT.float().expand(n, 2), 2, replacement=True, generator=gen)  # x1, x2 ~ q
    lengths = _lengths_by_first_draft(policy)  # the policy is deterministic given c(x1): plan once per x1
    proposal_len = torch.where(drafts[:, 0] == A, lengths[A], lengths[B])
    verdict = verify_block(
        draft_tokens=drafts,
        draft_probs=Q_DRAFT.float().expand(n, 2, 2),
        target_probs=P_TARGET.float().expand(n, 3, 2),
        proposal_len=proposal_len,
        generator=gen,
    )
    first = torch.where(verdict.num_accepted >= 1, drafts[:, 0], verdict.next_token)
    freq = (first == A).double().mean().item()
    # 5 binomial standard deviations (≈0.016 at p=0.7): a false failure is ~1e-6 likely, and the
    # two hypotheses (0.7 vs 0.85) are ~45 sigma apart.
    bound = 5 * math.sqrt(expected * (1 - expected) / n)
    assert abs(freq - expected) < bound, f"first-token frequency {freq:.4f}, expected {expected} ± {bound:.4f}"


# ----------------------------------------------------------------------------- Algorithm 1 properties


def _random_conf(rng, *, R, G, ties: bool) -> torch.Tensor:
    conf = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=(R, G)) if ties else rng.random((R, G))
    return torch.tensor(conf, dtype=torch.float64)


def _random_table(rng) -> CostTable:
    points = sorted(rng.choice(np.arange(1, 80), size=5, replace=False))
    times = np.cumsum(rng.random(5) * 0.01) + 0.005  # increasing step time (SPS falling)
    return CostTable(batch_tokens=[int(b) for b in points], steps_per_second=list(1 / times))


@pytest.mark.parametrize("ties", [False, True])
def test_matches_reference_and_is_prefix_closed(ties):
    rng = np.random.default_rng(7)
    for _ in range(150):
        table = _random_table(rng)
        conf = _random_conf(rng, R=int(rng.integers(1, 12)), G=int(rng.integers(1, 8)), ties=ties)
        ell = PrefixScheduler(table).plan(conf, gamma=conf.shape[1])
        assert ell.tolist() == reference_algorithm1(conf.numpy(), table)  # the reference asserts j−1 before j
        a = conf.cumprod(dim=1)
        for r, length in enumerate(ell.tolist()):
            assert (a[r, :length] > 0).all(), "admitted a slot with zero survival"


def test_constant_sps_admits_every_positive_candidate():
    conf = torch.tensor([[0.9, 0.5, 0.0, 0.7], [0.1, 0.1, 0.1, 0.1], [0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    ell = PrefixScheduler(_table({1: 5.0})).plan(conf, gamma=4)
    assert ell.tolist() == [2, 4, 0]


def test_steep_sps_admits_nothing():
    table = CostTable(batch_tokens=list(range(1, 40)), steps_per_second=[1.0 / b**2 for b in range(1, 40)])
    conf = torch.ones(5, 7, dtype=torch.float64)
    assert PrefixScheduler(table).plan(conf, gamma=7).tolist() == [0] * 5


def test_invariant_to_request_order():
    rng = np.random.default_rng(3)
    table = _table({1: 100.0, 8: 95.0, 16: 80.0, 32: 50.0, 64: 25.0})
    for ties in (False, True):
        for _ in range(30):
            conf = _random_conf(rng, R=8, G=7, ties=ties)
            if ties:  # distinct c_1 per row (k/8, exact in binary): many equal a, never equal prefixes
                conf[:, 0] = torch.as_tensor(rng.permutation(np.arange(1, 9) / 8))
            perm = torch.as_tensor(rng.permutation(8))
            ell = PrefixScheduler(table).plan(conf, gamma=7)
            assert PrefixScheduler(table).plan(conf[perm], gamma=7).tolist() == ell[perm].tolist()
    # equal survival a_2 = 0.4 from different prefixes: the content, not the row index, breaks the tie
    conf = torch.tensor([[0.5, 0.8], [0.8, 0.5]], dtype=torch.float64)
    table = _table({1: 1.0, 2: 1.0, 5: 1.0, 6: 0.5})  # room for exactly 3 admissions
    assert PrefixScheduler(table).plan(conf, gamma=2).tolist() == [1, 2]
    assert PrefixScheduler(table).plan(conf.flip(0), gamma=2).tolist() == [2, 1]


def test_fixed_and_threshold_policies():
    conf = torch.tensor([[0.9, 0.9, 0.5], [0.4, 1.0, 1.0]], dtype=torch.float64)  # a = [.9 .81 .405], [.4 .4 .4]
    assert FixedLength(2).plan(conf, gamma=3).tolist() == [2, 2]
    assert FixedLength(9).plan(None, gamma=3, num_requests=2).tolist() == [3, 3]
    assert CumulativeThreshold(0.5).plan(conf, gamma=3).tolist() == [2, 0]
    assert PerSlotThreshold(0.5).plan(conf, gamma=3).tolist() == [3, 0]
    for policy in (PerSlotThreshold, CumulativeThreshold):
        assert policy(0.4).plan(conf, gamma=3).tolist() == [3, 3]
        assert policy(0.0).plan(conf, gamma=3).tolist() == [3, 3]
        assert policy(0.5).plan(None, gamma=3, num_requests=1).tolist() == [3]
        with pytest.raises(SchedulerError):
            policy(1.5)
        with pytest.raises(AssertionError, match="gamma=4"):
            policy(0.5).plan(conf, gamma=4)
        with pytest.raises(AssertionError, match="sigmoid"):
            policy(0.5).plan(conf * 2, gamma=3)
    with pytest.raises(SchedulerError):
        FixedLength(-1)
    assert (PerSlotThreshold(0.5).name, CumulativeThreshold(0.5).name) == ("threshold-0.5", "cumulative-threshold-0.5")


def test_the_two_threshold_rules_differ():
    # σ = [0.9, 0.6, 0.9] at t = 0.5: per-slot ℓ = 3; prefix survival 0.9, 0.54, 0.486: cumulative ℓ = 2.
    # σ = [0.9, 0.4, 0.9]: slot 2 stops both, ℓ = 1.
    conf = torch.tensor([[0.9, 0.6, 0.9], [0.9, 0.4, 0.9]], dtype=torch.float64)
    assert PerSlotThreshold(0.5).plan(conf, gamma=3).tolist() == [3, 1]
    assert CumulativeThreshold(0.5).plan(conf, gamma=3).tolist() == [2, 1]


@pytest.mark.parametrize("policy,rule", [(PerSlotThreshold, "per-slot"), (CumulativeThreshold, "cumulative")])
def test_threshold_policies_apply_the_replayed_rule(policy, rule):
    conf = torch.rand(200, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 0.3
    for t in (0.0, 0.3, 0.6, 0.9):
        want = proposal_lengths(conf.numpy(), threshold=t, rule=rule)  # what threshold_sweep.py replays
        assert policy(t).plan(conf, gamma=6).tolist() == want.tolist()


def test_prefix_without_confidences_falls_back_once():
    policy = PrefixScheduler(_table({1: 1.0}))
    with pytest.warns(UserWarning, match="no confidence head"):
        assert policy.plan(None, gamma=7, num_requests=3).tolist() == [7, 7, 7]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert policy.plan(None, gamma=5, num_requests=1).tolist() == [5]
    assert policy.plan(torch.zeros(0, 5, dtype=torch.float64), gamma=5).tolist() == []


def test_async_takes_budget_from_two_steps_earlier():
    policy = PrefixScheduler(_table(APPENDIX_TABLE), asynchronous=True)
    hi, lo = _appendix_conf(A), _appendix_conf(B)  # unconstrained best K: 2 and 0
    assert policy.plan(hi, gamma=2).tolist() == [0]  # < 2 steps of history: synchronous rule
    assert policy.plan(lo, gamma=2).tolist() == [0]
    assert policy.plan(hi, gamma=2).tolist() == [2]  # K = 2 from step 1 (the sync rule would say 0)
    assert policy.plan(hi, gamma=2).tolist() == [0]  # K = 0 from step 2
    # K = 2 from step 3 goes to the current step's top-2 survivals, across requests
    two = torch.tensor([[0.3, 0.2], [0.9, 0.9]], dtype=torch.float64)
    assert policy.plan(two, gamma=2).tolist() == [0, 2]
    policy.reset()
    assert policy.plan(hi, gamma=2).tolist() == [0]


# ----------------------------------------------------------------------------- cost table and factory


def test_cost_table_interpolation_and_extrapolation():
    table = _table({1: 10.0, 3: 5.0, 5: 2.0})  # step times 0.1, 0.2, 0.5 s
    assert table.sps(1) == pytest.approx(10.0)
    assert table.sps(2) == pytest.approx(1 / 0.15)  # linear in time, not in SPS
    assert table.sps(0) == pytest.approx(10.0)  # clamped below
    assert table.sps(7) == pytest.approx(1 / 0.8)  # 0.5 + 2·0.15 beyond the last point
    assert np.allclose(table.sps(np.array([1, 2])), [10.0, 1 / 0.15])
    assert _table({4: 2.0}).sps(100) == pytest.approx(2.0)  # one point: constant
    assert _table({1: 1.0, 2: 2.0}).sps(10) == pytest.approx(2.0)  # noisy falling time: slope floored at 0


@pytest.mark.parametrize(
    "b, s, match",
    [
        ([], [], "no measured points"),
        ([1, 2], [1.0], "pair up"),
        ([2, 1], [1.0, 1.0], "ascending"),
        ([1, 2], [1.0, 0.0], "positive"),
        ([0, 2], [1.0, 1.0], "positive integers"),
    ],
)
def test_cost_table_validation(b, s, match):
    with pytest.raises(SchedulerError, match=match):
        CostTable(batch_tokens=b, steps_per_second=s)


def test_cost_table_json_round_trip_and_errors(tmp_path):
    table = CostTable(
        batch_tokens=[1, 8],
        steps_per_second=[50.0, 40.0],
        device="cpu",
        context_len=32,
        dtype="float32",
        target="tiny",
        extra={"row_tokens": 8},
    )
    table.to_json(tmp_path / "t.json")
    again = CostTable.from_json(tmp_path / "t.json")
    assert again.to_dict() == table.to_dict() and again.extra == {"row_tokens": 8}
    with pytest.raises(SchedulerError, match="profile_engine.py"):
        CostTable.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"batch_tokens": [1]}))
    with pytest.raises(SchedulerError, match="steps_per_second"):
        CostTable.from_json(tmp_path / "bad.json")


def test_build_policy(tmp_path):
    assert build_policy("fixed", gamma=7).name == "fixed-7"
    assert build_policy("threshold", gamma=7, threshold=0.5).name == "threshold-0.5"
    assert isinstance(build_policy("threshold", gamma=7, threshold=0.5), PerSlotThreshold)
    assert isinstance(build_policy("cumulative-threshold", gamma=7, threshold=0.5), CumulativeThreshold)
    _table({1: 1.0}).to_json(tmp_path / "t.json")
    assert build_policy("prefix", gamma=7, cost_table=tmp_path / "t.json", asynchronous=True).name == "prefix-async"
    with pytest.raises(SchedulerError, match="profile_engine.py"):
        build_policy("prefix", gamma=7)
    with pytest.raises(SchedulerError, match="needs a threshold"):
        build_policy("threshold", gamma=7)
    with pytest.raises(SchedulerError, match="cumulative-threshold policy needs a threshold"):
        build_policy("cumulative-threshold", gamma=7)
    with pytest.raises(SchedulerError, match="fixed, threshold, cumulative-threshold, prefix"):
        build_policy("greedy", gamma=7)


# ----------------------------------------------------------------------------- scripts end to end


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["profile_engine", "simulate_serving"])
def test_script_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        _script(name).parse_args(["--help"])
    assert exc.value.code == 0 and "cost table" in capsys.readouterr().out


def test_serving_plots_show_each_policys_curve():
    sim = _script("simulate_serving")
    row = ("policy", "concurrency", "per_user_speed", "throughput", "mean_verify_tokens")
    results = [
        dict(zip(row, values))
        for values in [
            ("prefix", 4, 10.0, 40.0, 3.0),
            ("prefix", 1, 20.0, 20.0, 5.0),
            ("fixed-7", 1, 15.0, 15.0, 8.0),
            ("fixed-7", 4, 5.0, 20.0, 8.0),
        ]
    ]
    figs = sim.figures(results)
    assert list(figs) == ["throughput_vs_speed.png", "budget_vs_concurrency.png"]
    [speed] = figs["throughput_vs_speed.png"].axes
    assert (speed.get_xlabel(), speed.get_ylabel()) == ("per-user speed (tokens/s/user)", "throughput (tokens/s)")
    assert (speed.get_xscale(), speed.get_yscale()) == ("log", "log")
    assert [line.get_label() for line in speed.lines] == ["prefix", "fixed-7"]
    prefix, fixed = speed.lines  # points in concurrency order
    assert (list(prefix.get_xdata()), list(prefix.get_ydata())) == ([20.0, 10.0], [20.0, 40.0])
    assert (list(fixed.get_xdata()), list(fixed.get_ydata())) == ([15.0, 5.0], [15.0, 20.0])
    assert [text.get_text() for text in speed.texts] == ["R=1", "R=4"]  # the prefix points name their R
    [budget] = figs["budget_vs_concurrency.png"].axes
    assert (budget.get_xlabel(), budget.get_xscale()) == ("concurrency R", "log")
    assert budget.get_ylabel() == "mean verification tokens per request (ℓ+1)"
    prefix, fixed = budget.lines
    assert (list(prefix.get_xdata()), list(prefix.get_ydata())) == ([1, 4], [5.0, 3.0])
    assert (list(fixed.get_xdata()), list(fixed.get_ydata())) == ([1, 4], [8.0, 8.0])


def _synthetic_rounds(path: pathlib.Path, *, gamma: int = 7) -> None:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for prompt in range(6):
            for rnd in range(8):
                logits = rng.normal(1.0, 1.5, size=gamma)
                conf = 1 / (1 + np.exp(-logits))
                accepted = int(np.argmin(np.append(rng.random(gamma) < conf, False)))  # first rejection
                ell = gamma if rnd != 7 else 3  # one truncated round per prompt: must be skipped
                f.write(
                    json.dumps(
                        {
                            "task": "code",
                            "prompt_index": prompt,
                            "round": rnd,
                            "gamma": gamma,
                            "proposal_len": ell,
                            "accepted": min(accepted, ell),
                            "conf_logits": logits.tolist(),
                        }
                    )
                    + "\n"
                )


def test_profile_then_simulate(tmp_path):
    from deepspec.tiny_target import build_random_tiny_target

    target = build_random_tiny_target(output_dir=tmp_path / "target", num_hidden_layers=1)
    table_path = tmp_path / "cost_table.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/eval/profile_engine.py"),
            "--target_name_or_path",
            str(target),
            "--batch-tokens",
            "1,2,9,16",
            "--context-len",
            "32",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--output",
            str(table_path),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = CostTable.from_json(table_path)
    assert table.batch_tokens == [1, 2, 9, 16] and table.context_len == 32 and table.dtype == "float32"
    assert all(s > 0 for s in table.steps_per_second) and table.extra["computed_tokens"] == [1, 2, 10, 16]

    rounds = tmp_path / "eval" / "rounds.jsonl"
    rounds.parent.mkdir()
    _synthetic_rounds(rounds)
    (tmp_path / "calibration.json").write_text(json.dumps({"temperatures": [1.0, 1.2, 1.1, 1.0, 0.9, 1.0, 1.0]}))
    out = tmp_path / "sim"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/eval/simulate_serving.py"),
            str(rounds.parent),
            "--cost-table",
            str(table_path),
            "--calibration",
            str(tmp_path / "calibration.json"),
            "--concurrency",
            "1,4,16",
            "--steps",
            "10",
            "--min-request-rounds",
            "40",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "simulation.json").read_text())
    assert (summary["num_traces"], summary["num_rounds"], summary["skipped_rounds"]) == (6, 42, 6)
    policies = {r["policy"] for r in summary["results"]}
    assert {"prefix", "prefix-async", "fixed-7", "fixed-3", "fixed-1", "threshold-0.5"} <= policies
    for r in summary["results"]:
        assert r["throughput"] > 0 and r["per_user_speed"] > 0 and 1 <= r["mean_tau"] <= 8
        assert 0 <= r["mean_proposal_len"] <= 7
    assert set(summary["gains"]) == {"fixed-7", "fixed-1"}
    assert "prefix vs fixed-7" in proc.stdout
    for png in ("throughput_vs_speed.png", "budget_vs_concurrency.png"):
        assert (out / png).stat().st_size > 1000
