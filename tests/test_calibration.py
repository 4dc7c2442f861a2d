"""Confidence-head metrics, STS calibration, threshold replay and the two eval scripts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepspec.decoding.confidence import (
    CalibrationError,
    apply_temperatures,
    cumulative_lengths,
    load_calibration,
    per_slot_lengths,
    prefix_survival,
    proposal_lengths,
)
from deepspec.decoding.rounds import read_rounds
from deepspec.eval.calibration import (
    auroc,
    brier_score,
    calibration_arrays,
    confidence_report,
    expected_calibration_error,
    fit_sts,
    save_calibration,
    split_rounds,
    survival_labels,
)
from deepspec.eval.plots import (
    plot_reliability,
    plot_threshold_sweep,
    reliability_before_after_figure,
    reliability_figure,
    threshold_sweep_figure,
)
from deepspec.eval.threshold import replay_threshold, sweep_thresholds

ROOT = Path(__file__).resolve().parents[1]
CALIBRATE = ROOT / "scripts" / "eval" / "calibrate.py"
SWEEP = ROOT / "scripts" / "eval" / "threshold_sweep.py"
T_TRUE = [2.5, 0.4, 2.0, 0.6]


def synth(n, temps, seed):
    """Logits z and accepted counts drawn slot by slot: slot k accepted w.p. σ(z_k/T_k) given 1..k-1 were."""
    rng = np.random.default_rng(seed)
    z = rng.normal(1.5, 2.0, size=(n, len(temps)))
    ok = rng.random(z.shape) < 1 / (1 + np.exp(-z / np.asarray(temps)))
    return z, np.cumprod(ok, axis=1).sum(axis=1)  # accepted = index of the first failure


def logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p / (1 - p))


# ----------------------------------------------------------------------------- metrics


def test_prefix_survival_and_labels():
    np.testing.assert_allclose(prefix_survival([[0.5, 0.5, 0.8]]), [[0.5, 0.25, 0.2]])
    assert survival_labels([0, 2, 3], 3).tolist() == [[False] * 3, [True, True, False], [True] * 3]


def test_ece_hand_example():
    pred, label = [0.12, 0.18, 0.85, 0.95], [0, 1, 1, 0]
    # 10 bins: bin 1 {0.12, 0.18}: |0.15-0.5|·2/4; bin 8: |0.85-1|/4; bin 9: |0.95-0|/4
    assert expected_calibration_error(pred, label) == pytest.approx(0.175 + 0.0375 + 0.2375)
    # 2 bins: |0.15-0.5|/2 + |0.9-0.5|/2
    assert expected_calibration_error(pred, label, num_bins=2) == pytest.approx(0.375)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0  # p == 1 lands in the last bin
    with pytest.raises(CalibrationError, match="sigmoid"):
        expected_calibration_error([1.5], [1])


def test_auroc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    pred = np.round(rng.random(300), 1)  # rounding makes many ties
    label = rng.random(300) < pred
    pos, neg = pred[label], pred[~label]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert auroc(pred, label) == pytest.approx(brute)
    assert auroc([0.1, 0.9], [0, 1]) == 1.0
    assert np.isnan(auroc([0.1, 0.9], [1, 1]))


def test_brier_hand_example():
    assert brier_score([0.12, 0.18, 0.85, 0.95], [0, 1, 1, 0]) == pytest.approx((0.0144 + 0.6724 + 0.0225 + 0.9025) / 4)


# ----------------------------------------------------------------------------- STS


def test_sts_recovers_known_temperatures_and_fixes_held_out_ece():
    fit_z, fit_acc = synth(20000, T_TRUE, seed=1)
    held_z, held_acc = synth(20000, T_TRUE, seed=2)
    temps = fit_sts(fit_z, fit_acc)
    np.testing.assert_allclose(temps, T_TRUE, rtol=0.25)
    before = confidence_report(held_z, held_acc)
    after = confidence_report(held_z, held_acc, temperatures=temps)
    assert np.mean(before["ece"]) > 0.05 and np.mean(after["ece"]) < 0.02, (before["ece"], after["ece"])
    assert max(after["ece"]) < 0.02
    np.testing.assert_allclose(after["mean_predicted"], after["empirical_survival"], atol=0.02)
    assert after["num_rounds"] == 20000 and len(after["auroc"]) == len(T_TRUE)


def test_sts_is_order_preserving_and_prefers_one_on_ties():
    z, acc = synth(3000, T_TRUE, seed=3)
    temps = fit_sts(z, acc)
    probs = apply_temperatures(z, temps)
    for k in range(z.shape[1]):  # each slot ranks rounds exactly as its raw logits do
        order = np.argsort(z[:, k])
        assert np.all(np.diff(probs[order, k]) >= 0)
        assert auroc(probs[:, k], acc >= k + 1) == pytest.approx(auroc(z[:, k], acc >= k + 1))
    # zero logits give σ = 0.5 at every temperature: all ECEs tie, and 1.0 must win
    assert fit_sts(np.zeros((10, 2)), np.array([0, 1] * 5), grid=[0.5, 1.0, 2.0], min_events=0) == [1.0, 1.0]


def test_sts_keeps_slots_with_too_few_events_at_one():
    z, acc = synth(3000, T_TRUE, seed=4)
    rare = np.minimum(acc, 2)  # nobody survives slots 3 and 4: nothing to calibrate there
    temps = fit_sts(z, rare, min_events=20)
    assert temps[2:] == [1.0, 1.0]
    assert temps[0] != 1.0  # slots with events are still fitted
    with pytest.raises(CalibrationError, match="positive"):
        apply_temperatures(z, [1.0, -1.0, 1.0, 1.0])
    with pytest.raises(CalibrationError, match="gamma"):
        apply_temperatures(z, [1.0, 1.0])


def test_torch_inputs_stay_torch():
    torch = pytest.importorskip("torch")
    z = torch.tensor([[0.0, 2.0]])
    out = prefix_survival(apply_temperatures(z, [1.0, 2.0]))
    assert torch.is_tensor(out)
    np.testing.assert_allclose(out.numpy(), [[0.5, 0.5 / (1 + np.exp(-1.0))]], rtol=1e-6)


# ----------------------------------------------------------------------------- files


def test_calibration_json_round_trip(tmp_path):
    assert load_calibration(tmp_path) is None
    rep = confidence_report(*synth(200, [1, 1, 1], seed=0))
    path = save_calibration(
        tmp_path, temperatures=[0.5, 1.0, 2.0], report_before=rep, report_after=rep, extra={"seed": 7}
    )
    data = json.loads(path.read_text())
    assert data["method"] == "sts" and data["gamma"] == 3 and data["seed"] == 7
    assert data["ece_before"] == pytest.approx(rep["ece"])
    assert load_calibration(tmp_path) == [0.5, 1.0, 2.0]
    assert load_calibration(tmp_path, gamma=3) == [0.5, 1.0, 2.0]
    with pytest.raises(CalibrationError, match="gamma=3 but this run uses gamma=5"):
        load_calibration(tmp_path, gamma=5)
    with pytest.raises(CalibrationError, match="does not exist"):
        save_calibration(tmp_path / "nope", temperatures=[1.0], report_before=rep, report_after=rep)


def _round(task, i, r, acc, logits, gamma=3, proposal_len=None):
    return {
        "task": task,
        "prompt_index": i,
        "round": r,
        "gamma": gamma,
        "proposal_len": gamma if proposal_len is None else proposal_len,
        "accepted": acc,
        "conf_logits": logits,
    }


def test_read_rounds_errors_name_the_line(tmp_path):
    p = tmp_path / "rounds.jsonl"
    p.write_text(json.dumps(_round("t", 0, 0, 1, [0.0, 0.0, 0.0])) + "\n\n{broken\n")
    with pytest.raises(CalibrationError, match=r"rounds.jsonl:3: malformed JSON"):
        read_rounds(p)
    p.write_text(json.dumps(_round("t", 0, 0, 1, [0.0, 0.0])) + "\n")
    with pytest.raises(CalibrationError, match=r":1: conf_logits must be null or a list of gamma=3"):
        read_rounds(p)
    p.write_text(json.dumps(_round("t", 0, 0, 4, None)) + "\n")
    with pytest.raises(CalibrationError, match="accepted <= proposal_len"):
        read_rounds(p)


def test_engine_records_pass_the_one_validator_and_metrics_use_it(tmp_path):
    from deepspec.decoding.rounds import ROUND_KEYS, engine_round, file_round, write_rounds
    from deepspec.eval.metrics import MetricsError, task_metrics

    rec = engine_round(index=0, gamma=3, proposal_len=3, accepted=2, conf_logits=[0.1234567, -1.0, 2.0])
    line = file_round(rec, task="t", prompt_index=4)
    assert tuple(line) == ROUND_KEYS and line["conf_logits"] == [0.12346, -1.0, 2.0]
    write_rounds(tmp_path / "rounds.jsonl", [line, line])
    assert read_rounds(tmp_path / "rounds.jsonl") == [line, line]
    # the file check and the metrics check are one: the same bound fails with the same words
    bad = {**line, "accepted": 4}
    write_rounds(tmp_path / "bad.jsonl", [bad])
    with pytest.raises(CalibrationError, match="accepted <= proposal_len") as from_file:
        read_rounds(tmp_path / "bad.jsonl")
    with pytest.raises(MetricsError, match="accepted <= proposal_len") as from_metrics:
        task_metrics([bad], gamma=3, num_samples=1)
    assert str(from_file.value).split(": ", 1)[1] == str(from_metrics.value).split(": ", 1)[1]


def test_decoding_imports_no_analysis():
    # decoding/ runs inside a decode: it must not pull in deepspec.eval or matplotlib
    code = (
        "import sys; import deepspec.decoding.engine, deepspec.decoding.scheduler, deepspec.decoding.rounds; "
        "bad = [m for m in sys.modules if m.startswith(('deepspec.eval', 'matplotlib'))]; "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_usable_rounds_errors():
    with pytest.raises(CalibrationError, match="no confidence head"):
        calibration_arrays([_round("t", 0, 0, 1, None)])
    with pytest.raises(CalibrationError, match="threshold 0"):
        calibration_arrays([_round("t", 0, 0, 1, [0.0] * 3, proposal_len=2)])
    with pytest.raises(CalibrationError, match="mix gamma"):
        calibration_arrays([_round("t", 0, 0, 1, [0.0] * 3), _round("t", 1, 0, 1, [0.0] * 4, gamma=4)])


def test_split_keeps_prompts_together_and_is_deterministic():
    rounds = [_round(task, i, r, 0, None) for task in ("a", "b") for i in range(100) for r in range(3)]
    fit, held = split_rounds(rounds, held_out_fraction=0.3, seed=1)
    assert split_rounds(rounds, held_out_fraction=0.3, seed=1) == (fit, held)
    keys_fit = {(r["task"], r["prompt_index"]) for r in fit}
    keys_held = {(r["task"], r["prompt_index"]) for r in held}
    assert not keys_fit & keys_held and len(fit) + len(held) == len(rounds)
    assert 0.15 < len(keys_held) / 200 < 0.45
    assert split_rounds(rounds, held_out_fraction=0.3, seed=2) != (fit, held)


def test_plot_reliability_writes_png(tmp_path):
    z, acc = synth(500, [1.0, 1.0], seed=0)
    plot_reliability(
        prefix_survival(apply_temperatures(z, [1.0, 1.0])), survival_labels(acc, 2), path=tmp_path / "r.png", title="t"
    )
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_reliability_diagram_shows_each_positions_bins_and_ece():
    # Bins of width 0.1. k=1: bin 0 holds 0.05 (not survived), bin 1 0.15 and 0.15 (one survived), bin 9 0.95
    # (survived): ECE = 1/4 * 0.05 + 2/4 * 0.35 + 1/4 * 0.05 = 0.2. k=2: bin 0 holds 0.02, bin 1 0.12 and 0.12,
    # bin 5 0.58 (the only survivor): ECE = 1/4 * 0.02 + 2/4 * 0.12 + 1/4 * 0.42 = 0.17.
    pred = np.array([[0.05, 0.02], [0.15, 0.12], [0.15, 0.12], [0.95, 0.58]])
    label = np.array([[0, 0], [1, 0], [0, 0], [1, 1]], dtype=bool)
    [ax] = reliability_figure(pred, label, title="t").axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "predicted prefix survival a_k",
        "empirical survival",
        "t",
    )
    assert ax.get_xlim() == ax.get_ylim() == (0.0, 1.0)
    diagonal, k1, k2 = ax.lines
    assert diagonal.get_label() == "perfect" and list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == [0, 1]
    assert (k1.get_label(), k2.get_label()) == ("k=1 ECE 20.0%", "k=2 ECE 17.0%")
    np.testing.assert_allclose(k1.get_xdata(), [0.05, 0.15, 0.95])
    np.testing.assert_allclose(k1.get_ydata(), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(k2.get_xdata(), [0.02, 0.12, 0.58])
    np.testing.assert_allclose(k2.get_ydata(), [0.0, 0.0, 1.0])
    # Before / after: the same labels against each prediction; everything at 0.5 after is one bin per position.
    before, after = reliability_before_after_figure(pred, np.full_like(pred, 0.5), label, title="t").axes
    assert (before.get_title(), after.get_title()) == ("t: before", "t: after STS")
    assert [line.get_label() for line in before.lines] == [line.get_label() for line in ax.lines]
    assert [line.get_label() for line in after.lines] == ["perfect", "k=1 ECE 0.0%", "k=2 ECE 25.0%"]
    assert [list(line.get_ydata()) for line in after.lines[1:]] == [[0.5], [0.25]]


def test_threshold_sweep_plot_shows_accepted_and_rejected_per_threshold(tmp_path):
    results = [
        {"threshold": 0.0, "avg_accepted": 2.5, "avg_rejected": 1.5, "rule": "per-slot"},
        {"threshold": 0.25, "avg_accepted": 2.0, "avg_rejected": 0.75, "rule": "per-slot"},
        {"threshold": 0.5, "avg_accepted": 1.25, "avg_rejected": 0.25, "rule": "per-slot"},
    ]
    [ax] = threshold_sweep_figure(results, title="sweep").axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "confidence threshold on per-slot confidence c_k",
        "draft tokens per step",
        "sweep",
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.25", "0.5"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["accepted / step", "rejected / step"]
    accepted, rejected = ax.containers
    assert [b.get_height() for b in accepted] == [2.5, 2.0, 1.25]
    assert [b.get_height() for b in rejected] == [1.5, 0.75, 0.25]
    assert [b.get_x() + b.get_width() / 2 for b in accepted] == pytest.approx([-0.2, 0.8, 1.8])
    assert [b.get_x() + b.get_width() / 2 for b in rejected] == pytest.approx([0.2, 1.2, 2.2])
    cumulative = [dict(r, rule="cumulative") for r in results]
    assert threshold_sweep_figure(cumulative, title="s").axes[0].get_xlabel() == (
        "confidence threshold on prefix survival a_k"
    )
    plot_threshold_sweep(results, path=tmp_path / "sweep.png", title="sweep")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- threshold replay


def test_the_two_threshold_rules_differ():
    # σ = [0.9, 0.6, 0.9] at t = 0.5: every slot passes on its own (ℓ = 3), the prefix survival
    # 0.9, 0.54, 0.486 drops below at slot 3 (ℓ = 2); σ = [0.9, 0.4, 0.9]: slot 2 stops both (ℓ = 1)
    conf = np.array([[0.9, 0.6, 0.9], [0.9, 0.4, 0.9]])
    assert per_slot_lengths(conf, threshold=0.5).tolist() == [3, 1]
    assert cumulative_lengths(conf, threshold=0.5).tolist() == [2, 1]
    assert proposal_lengths(conf, threshold=0.5, rule="per-slot").tolist() == [3, 1]
    assert proposal_lengths(conf, threshold=0.5, rule="cumulative").tolist() == [2, 1]
    # threshold 0 is off for both rules; a slot below the threshold stops the per-slot proposal for good
    assert per_slot_lengths(conf, threshold=0.0).tolist() == cumulative_lengths(conf, threshold=0.0).tolist() == [3, 3]
    assert per_slot_lengths([[0.9, 0.4, 0.6]], threshold=0.5).tolist() == [1]
    with pytest.raises(CalibrationError, match="per-slot, cumulative"):
        proposal_lengths(conf, threshold=0.5, rule="product")


def test_threshold_replay_hand_example():
    # c: A [0.9, 0.8, 0.5] (accepted 3), B [0.6, 0.9, 0.9] (1), C [0.3, 0.9, 0.9] (0)
    # survival: A [0.9, 0.72, 0.36], B [0.6, 0.54, 0.486], C [0.3, 0.27, 0.243]
    z = logit([[0.9, 0.8, 0.5], [0.6, 0.9, 0.9], [0.3, 0.9, 0.9]])
    acc = np.array([3, 1, 0])
    r0, r5, r7 = sweep_thresholds(z, acc, thresholds=[0.0, 0.5, 0.7], rule="cumulative")
    assert [r.pop("rule") for r in (r0, r5, r7)] == ["cumulative"] * 3
    assert r0 == pytest.approx(
        {
            "threshold": 0.0,
            "num_rounds": 3,
            "avg_accepted": 4 / 3,
            "avg_rejected": 5 / 3,
            "acceptance_rate": 4 / 9,
            "avg_committed": 7 / 3,
            "avg_proposal_len": 3.0,
        }
    )
    # ℓ = 2, 2, 0 (B's 0.486 < 0.5); accepted' = 2, 1, 0; rejected = 0, 1, 0
    assert r5 == pytest.approx(
        {
            "threshold": 0.5,
            "num_rounds": 3,
            "avg_accepted": 1.0,
            "avg_rejected": 1 / 3,
            "acceptance_rate": 3 / 4,
            "avg_committed": 2.0,
            "avg_proposal_len": 4 / 3,
        }
    )
    assert r7["avg_proposal_len"] == pytest.approx(2 / 3) and r7["acceptance_rate"] == 1.0
    # per-slot (the default, DeepSpec's rule) at 0.5: ℓ = 3, 3, 0 (B's slots pass one by one);
    # accepted' = 3, 1, 0; rejected = 0, 2, 0
    r5 = replay_threshold(z, acc, threshold=0.5)
    assert r5.pop("rule") == "per-slot"
    assert r5 == pytest.approx(
        {
            "threshold": 0.5,
            "num_rounds": 3,
            "avg_accepted": 4 / 3,
            "avg_rejected": 2 / 3,
            "acceptance_rate": 4 / 6,
            "avg_committed": 7 / 3,
            "avg_proposal_len": 2.0,
        }
    )
    # a recorded short block caps ℓ
    for rule in ("per-slot", "cumulative"):
        capped = replay_threshold(z, np.array([1, 1, 0]), threshold=0.0, rule=rule, proposal_len=[1, 3, 3])
        assert capped["avg_proposal_len"] == pytest.approx(7 / 3)
    # temperatures enter through the logits, before either rule
    t = [2.0, 0.5, 1.0]
    for rule in ("per-slot", "cumulative"):
        assert replay_threshold(z, acc, threshold=0.5, rule=rule, temperatures=t) == replay_threshold(
            z / t, acc, threshold=0.5, rule=rule
        )
    one = logit([[0.9, 0.65, 0.9]])  # σ(logit(0.65) / 2) = 0.577: STS moves slot 2 below 0.6
    assert replay_threshold(one, [0], threshold=0.6)["avg_proposal_len"] == 3
    assert replay_threshold(one, [0], threshold=0.6, temperatures=[1.0, 2.0, 1.0])["avg_proposal_len"] == 1


# ----------------------------------------------------------------------------- scripts end to end


def _write_rounds(path, *, prompts=40, per_prompt=100, gamma=4):
    rng = np.random.default_rng(5)
    lines = []
    for task in ("gsm8k", "mt-bench"):
        z, acc = synth(prompts * per_prompt, T_TRUE[:gamma], seed=len(lines) + 11)
        for j in range(z.shape[0]):
            lines.append(_round(task, j // per_prompt, j % per_prompt, int(acc[j]), z[j].tolist(), gamma=gamma))
    lines.append(_round("gsm8k", 0, 999, 0, None, gamma=gamma))  # a round without confidence logits
    lines.append(_round("gsm8k", 0, 1000, 1, rng.normal(size=gamma).tolist(), gamma=gamma, proposal_len=2))
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_scripts_end_to_end(tmp_path):
    rounds = tmp_path / "run" / "rounds.jsonl"
    rounds.parent.mkdir()
    _write_rounds(rounds)
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "config.json").write_text(json.dumps({"architectures": ["Qwen3DSparkModel"]}))
    proc = _run(CALIBRATE, "--rounds", rounds, "--draft_name_or_path", draft)
    assert proc.returncode == 0, proc.stderr
    assert "mean ECE" in proc.stdout
    cal = json.loads((draft / "calibration.json").read_text())
    assert cal["gamma"] == 4 and cal["evaluated_on"] == "held-out"
    assert np.mean(cal["ece_after"]) < 0.03 < np.mean(cal["ece_before"])
    np.testing.assert_allclose(cal["temperatures"], T_TRUE, rtol=0.35)
    for name in (
        "calibration_report.json",
        "reliability_overall.png",
        "reliability_gsm8k.png",
        "reliability_mt-bench.png",
    ):
        assert (rounds.parent / name).is_file(), name

    out = tmp_path / "sweep"
    proc = _run(SWEEP, "--rounds", rounds, "--draft_name_or_path", draft, "--output-dir", out)
    assert proc.returncode == 0, proc.stderr
    sweep = json.loads((out / "threshold_sweep.json").read_text())
    assert sweep["rule"] == "per-slot" and {r["rule"] for r in sweep["results"]} == {"per-slot"}
    assert sweep["temperatures"] == cal["temperatures"] and len(sweep["results"]) == 10
    lens = [r["avg_proposal_len"] for r in sweep["results"]]
    assert lens[0] == pytest.approx((8000 * 4 + 2) / 8001) and all(a >= b for a, b in zip(lens, lens[1:]))
    rates = [r["acceptance_rate"] for r in sweep["results"]]
    assert rates[-1] > rates[0]  # confident proposals are accepted more often
    assert set(sweep["per_task"]) == {"gsm8k", "mt-bench"}
    assert (out / "threshold_sweep.png").is_file()
    proc = _run(
        SWEEP, "--rounds", rounds, "--draft_name_or_path", draft, "--output-dir", out / "cum", "--rule", "cumulative"
    )
    assert proc.returncode == 0, proc.stderr
    cum = json.loads((out / "cum" / "threshold_sweep.json").read_text())
    assert cum["rule"] == "cumulative" and cum["temperatures"] == cal["temperatures"]
    cum_lens = [r["avg_proposal_len"] for r in cum["results"]]
    # a_k <= c_k: the cumulative rule never proposes more, and proposes fewer once t > 0
    assert cum_lens[0] == lens[0] and all(c < p for c, p in zip(cum_lens[1:], lens[1:]))


def test_scripts_report_unusable_rounds(tmp_path):
    rounds = tmp_path / "rounds.jsonl"
    rounds.write_text(json.dumps(_round("t", 0, 0, 1, None)) + "\n")
    proc = _run(CALIBRATE, "--rounds", rounds, "--dry-run")
    assert proc.returncode == 2 and "no confidence head" in proc.stderr
    proc = _run(CALIBRATE, "--rounds", rounds)
    assert proc.returncode == 2 and "--draft is required" in proc.stderr


def test_calibration_goes_where_eval_reads_it_and_never_into_a_target(tmp_path):
    from deepspec.training.checkpoint import LATEST_NAME, STATE_NAME

    rounds = tmp_path / "run" / "rounds.jsonl"
    rounds.parent.mkdir()
    _write_rounds(rounds, prompts=10)
    root = tmp_path / "ckpt"
    (root / "step_3").mkdir(parents=True)
    (root / "step_3" / "config.json").write_text(json.dumps({"architectures": ["Qwen3DSparkModel"]}))
    (root / "step_3" / STATE_NAME).write_bytes(b"")
    os.symlink("step_3", root / LATEST_NAME)
    proc = _run(CALIBRATE, "--rounds", rounds, "--draft_name_or_path", root)  # the checkpoint root
    assert proc.returncode == 0, proc.stderr
    assert f"draft: {root} -> {root / 'step_3'}" in proc.stdout
    assert (root / "step_3" / "calibration.json").is_file() and not (root / "calibration.json").exists()
    target = tmp_path / "target"
    target.mkdir()
    (target / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}))
    proc = _run(CALIBRATE, "--rounds", rounds, "--draft_name_or_path", target)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{target} is not a draft folder (its config.json names no draft architecture; a target?)" in proc.stderr
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
