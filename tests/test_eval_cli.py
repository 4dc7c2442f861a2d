"""eval.py end to end on a random tiny target: outputs, losslessness through the CLI, calibration, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as eval_cli
from deepspec.models import build_draft, draft_config_from_target
from deepspec.tiny_target import build_random_tiny_target

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("evalcli")
    target = build_random_tiny_target(output_dir=base / "target", seed=0, num_hidden_layers=3)
    from transformers import AutoConfig

    tcfg = AutoConfig.from_pretrained(target)
    drafts = {}
    for algo in ("dspark", "eagle3"):
        torch.manual_seed(0)
        extra = dict(markov_rank=16, confidence_head_alpha=1.0) if algo == "dspark" else {}
        cfg = draft_config_from_target(
            tcfg,
            dict(
                algorithm=algo,
                num_draft_layers=1,
                target_layer_ids=[0, 1],
                block_size=4,
                ttt_length=4,
                mask_token_id=3,
                **extra,
            ),
        )
        build_draft(cfg).save_pretrained(base / algo)
        drafts[algo] = base / algo
    data = base / "data"
    data.mkdir()
    (data / "gsm8k.jsonl").write_text("".join(json.dumps({"turns": [f"What is {i} + {i}?"]}) + "\n" for i in range(3)))
    (data / "mt-bench.jsonl").write_text(json.dumps({"turns": ["Write a haiku.", "Now another."]}) + "\n")
    return base, target, drafts, data


@pytest.fixture(autouse=True)
def _no_dtype_probe(fp32_target):
    """--dtype auto decodes in fp32 here without a probe (outputs are compared with fp32 references); the
    probe's own tests below set DEEPSPEC_CPU_BF16=1."""


def run(args):
    return eval_cli.main([str(a) for a in args] + ["--no-progress"])


def test_eval_writes_results_and_matches_target_greedy(setup, capsys):
    base, target, drafts, data = setup
    out = base / "out_dspark"
    rc = run(
        [
            "--target_name_or_path",
            target,
            "--draft_name_or_path",
            drafts["dspark"],
            "--eval-data-dir",
            data,
            "--tasks",
            "gsm8k,mt-bench,alpaca",
            "--max-new-tokens",
            12,
            "--temperature",
            0,
            "--batch-size",
            2,
            "--output-dir",
            out,
            "--save-outputs",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr()
    # A known task without a file is named once, with the command that fetches it.
    absent = [line for line in printed.err.splitlines() if "alpaca" in line]
    assert len(absent) == 1 and absent[0].startswith("[eval] not evaluated, no prompt file in ")
    assert absent[0].endswith(f"build_eval_datasets.py --tasks alpaca --output-dir {data}")
    assert "accept_len" in printed.out and "gsm8k" in printed.out
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"gsm8k", "mt-bench"} and results["meta"]["absent_tasks"] == ["alpaca"]
    coverage = "tasks covered (2): gsm8k, mt-bench; not covered, no prompt file: alpaca"
    assert coverage in (out / "table.md").read_text() and coverage in printed.out
    g = results["tasks"]["gsm8k"]
    assert g["num_samples"] == 3 and len(g["accept_rate_by_position"]) == 4
    assert len(g["conditional_accept_rate_by_position"]) == 4 and "confidence" in g
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == g["num_rounds"] + results["tasks"]["mt-bench"]["num_rounds"]
    assert all(len(r["conf_logits"]) == 4 for r in rounds)
    # vLLM's counters in its own schema, per request the ordered steps of rounds.jsonl.
    spec = results["spec_decode"]
    assert spec["num_drafts"] == len(rounds) and spec["num_accepted_tokens"] == sum(r["accepted"] for r in rounds)
    assert spec["num_accepted_tokens_per_pos"] == [sum(r["accepted"] >= k for r in rounds) for k in (1, 2, 3, 4)]
    first = [r for r in rounds if (r["task"], r["prompt_index"]) == ("gsm8k", 0)]
    assert spec["requests"][0] == {
        "task": "gsm8k",
        "prompt_index": 0,
        "per_step_accepted": [r["accepted"] for r in first],
        "per_step_drafted": [4] * len(first),
    }
    assert g["spec_decode"]["num_drafts"] == g["num_rounds"]
    for name in ("table.md", "conditional_acceptance.png", "reliability_gsm8k.png"):
        assert (out / name).stat().st_size > 0
    # Per-prompt counts: rounds.jsonl grouped by prompt, prompts fingerprinted; τ with its interval.
    from deepspec.eval.intervals import METHOD, prompt_id

    counts = g["per_prompt"]
    assert [(c["prompt_index"], c["prompt_id"]) for c in counts] == [
        (i, prompt_id(f"What is {i} + {i}?")) for i in range(3)
    ]
    for c in counts:
        mine = [r for r in rounds if r["task"] == "gsm8k" and r["prompt_index"] == c["prompt_index"]]
        assert (c["rounds"], c["accepted"]) == (len(mine), sum(r["accepted"] for r in mine)) and c["prompt_tokens"] > 5
    assert g["acceptance_length"] == sum(c["rounds"] + c["accepted"] for c in counts) / g["num_rounds"]
    lo, hi = g["acceptance_length_ci"]
    assert 1 <= lo <= hi <= 5 and results["macro_ci"]["math"] == [lo, hi]
    # mt-bench has one prompt: no interval for it or the averages over it (not a zero-width one).
    assert results["tasks"]["mt-bench"]["acceptance_length_ci"] is None and results["macro_ci"]["all"] is None
    assert "none for mt-bench or the averages over them" in printed.out
    assert results["meta"]["bootstrap"] == {"draws": 1000, "seed": 0, "level": 0.95, "method": METHOD}
    # How it decoded, and why: no native bf16 (the fixture's DEEPSPEC_CPU_BF16=0), so fp32 without a probe;
    # the threads by the cores other jobs leave free, every decoding round counted under the count it ran with.
    meta = results["meta"]
    assert meta["dtype"] == "fp32" and meta["dtype_probe"] is None
    assert meta["dtype_reason"] == "auto: fp32, CPU has no native bf16 (DEEPSPEC_CPU_BF16=0); bf16 not probed"
    assert meta["threads"] >= 1 and meta["threads_reason"].startswith(("auto: ", f"{meta['threads']}, OMP_NUM"))
    per_prompt = [c["rounds"] for c in counts] + [results["tasks"]["mt-bench"]["per_prompt"][0]["rounds"]]
    batch_rounds = max(per_prompt[:2]) + per_prompt[2] + per_prompt[3]  # batches of 2: gsm8k 0+1, gsm8k 2, mt-bench 0
    assert sum(meta["threads_used"].values()) == batch_rounds
    cost = results["draft_cost"]
    assert cost["rounds"] == len(rounds) and cost["flops_per_round"] > 0 and cost["seconds_per_round"] > 0
    assert g["draft_cost"]["rounds"] == g["num_rounds"]
    assert "95% CI" in printed.out and f"[{lo:.2f}, {hi:.2f}]" in (out / "table.md").read_text()
    assert "τ intervals: 95% from a cluster bootstrap over prompts" in printed.out

    # Losslessness through the whole CLI: greedy speculative output == transformers' greedy output.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepspec.eval.runner import encode_prompt, stop_token_ids

    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    outputs = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    prompts = {("gsm8k", i): f"What is {i} + {i}?" for i in range(3)} | {("mt-bench", 0): "Write a haiku."}
    assert len(outputs) == 4
    for o in outputs:
        ids = encode_prompt(tok, prompts[(o["task"], o["prompt_index"])])
        ref = model.generate(
            torch.tensor([ids]),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=stop_token_ids(tok, model),
            pad_token_id=0,
        )[0, len(ids) :].tolist()
        assert o["token_ids"] == ref


def test_calibration_round_trip_through_eval(setup):
    base, target, drafts, data = setup
    out = base / "out_cal"
    assert (
        run(
            [
                "--target_name_or_path",
                target,
                "--draft_name_or_path",
                drafts["dspark"],
                "--eval-data-dir",
                data,
                "--tasks",
                "gsm8k",
                "--max-new-tokens",
                24,
                "--output-dir",
                out,
            ]
        )
        == 0
    )
    cal = subprocess.run(
        [
            sys.executable,
            ROOT / "scripts/eval/calibrate.py",
            "--rounds",
            out / "rounds.jsonl",
            "--draft_name_or_path",
            drafts["dspark"],
            "--held-out-fraction",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert cal.returncode == 0, cal.stderr
    temps = json.loads((drafts["dspark"] / "calibration.json").read_text())["temperatures"]
    assert len(temps) == 4
    out2 = base / "out_cal2"
    assert (
        run(
            [
                "--target_name_or_path",
                target,
                "--draft_name_or_path",
                drafts["dspark"],
                "--eval-data-dir",
                data,
                "--tasks",
                "gsm8k",
                "--max-new-tokens",
                8,
                "--output-dir",
                out2,
            ]
        )
        == 0
    )
    meta = json.loads((out2 / "results.json").read_text())["meta"]
    assert meta["calibration_temperatures"] == pytest.approx(temps)
    (drafts["dspark"] / "calibration.json").unlink()


def test_self_draft_ceiling_and_eagle3(setup):
    base, target, drafts, data = setup
    out = base / "self"
    assert (
        run(
            [
                "--target_name_or_path",
                target,
                "--self-draft",
                3,
                "--eval-data-dir",
                data,
                "--tasks",
                "gsm8k:2",
                "--max-new-tokens",
                16,
                "--output-dir",
                out,
            ]
        )
        == 0
    )
    tau = json.loads((out / "results.json").read_text())["tasks"]["gsm8k"]["acceptance_length"]
    assert tau == pytest.approx(4.0)  # γ + 1: the target always accepts its own proposals
    assert (
        run(
            [
                "--target_name_or_path",
                target,
                "--draft_name_or_path",
                drafts["eagle3"],
                "--eval-data-dir",
                data,
                "--tasks",
                "gsm8k:1",
                "--max-new-tokens",
                8,
                "--output-dir",
                base / "e3",
            ]
        )
        == 0
    )


def test_clear_errors(setup, tmp_path, capsys):
    base, target, drafts, data = setup
    assert (
        run(
            [
                "--target_name_or_path",
                target,
                "--draft_name_or_path",
                drafts["dspark"],
                "--eval-data-dir",
                data,
                "--tasks",
                "gsm9k",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown task 'gsm9k'" in err and "gsm8k" in err and "math500" in err
    # a draft for a different target geometry
    other = build_random_tiny_target(
        output_dir=tmp_path / "other", seed=0, num_hidden_layers=3, hidden_size=96, head_dim=32, num_attention_heads=3
    )
    assert (
        run(
            [
                "--target_name_or_path",
                other,
                "--draft_name_or_path",
                drafts["dspark"],
                "--eval-data-dir",
                data,
                "--tasks",
                "gsm8k:1",
                "--output-dir",
                tmp_path / "o",
            ]
        )
        == 2
    )
    assert "draft does not fit the target" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cli.parse_args(["--tasks", "gsm8k"])  # neither a draft nor --self-draft
    assert run(["--draft_name_or_path", tmp_path, "--target_name_or_path", target, "--eval-data-dir", data]) == 2
    assert "no complete step_N checkpoint" in capsys.readouterr().err


def test_threshold_flags_pick_their_rule(setup, capsys):
    from deepspec.decoding.confidence import per_slot_lengths
    from deepspec.eval.runner import EvalSetupError, policy_choice

    assert policy_choice(None) == ("fixed", None)
    assert policy_choice(None, confidence_threshold=0.5) == ("threshold", 0.5)  # DeepSpec's per-slot rule
    assert policy_choice(None, survival_threshold=0.5) == ("cumulative-threshold", 0.5)
    assert policy_choice("cumulative-threshold", survival_threshold=0.0) == ("cumulative-threshold", 0.0)
    assert policy_choice("prefix") == ("prefix", None)
    for scheduler, conf, surv, match in [
        (None, 0.5, 0.5, "exclude each other"),
        ("cumulative-threshold", 0.0, None, "needs --survival-threshold"),
        ("threshold", 0.0, 0.5, "--survival-threshold applies to --scheduler cumulative-threshold"),
        ("prefix", 0.5, None, "--confidence-threshold applies to --scheduler threshold"),
        (None, 1.5, None, r"--confidence-threshold must lie in \[0, 1\]"),
        (None, 0.0, -0.1, r"--survival-threshold must lie in \[0, 1\]"),
    ]:
        with pytest.raises(EvalSetupError, match=match):
            policy_choice(scheduler, confidence_threshold=conf, survival_threshold=surv)
    with pytest.raises(SystemExit):
        eval_cli.parse_args(["--self-draft", "3", "--confidence-threshold", "0.5", "--survival-threshold", "0.5"])
    assert "exclude each other" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_cli.parse_args(["--self-draft", "3", "--scheduler", "cumulative-threshold"])
    assert "needs --survival-threshold" in capsys.readouterr().err

    # --confidence-threshold through the CLI: each block is cut at the first slot with σ(c_k) < t
    base, target, drafts, data = setup
    out = base / "out_threshold"
    assert (
        run(
            [
                "--target_name_or_path",
                target,
                "--draft_name_or_path",
                drafts["dspark"],
                "--eval-data-dir",
                data,
                "--tasks",
                "gsm8k:2",
                "--max-new-tokens",
                12,
                "--confidence-threshold",
                0.5,
                "--no-calibration",
                "--output-dir",
                out,
            ]
        )
        == 0
    )
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert (meta["scheduler"], meta["confidence_threshold"], meta["survival_threshold"]) == ("threshold", 0.5, None)
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    for r in rounds:
        ell = int(per_slot_lengths(torch.sigmoid(torch.tensor([r["conf_logits"]])).numpy(), threshold=0.5)[0])
        assert r["proposal_len"] == ell if r["round"] == 0 else r["proposal_len"] <= ell


def test_draft_paths_resolve_like_training_writes_them(setup, tmp_path):
    import shutil

    from deepspec.eval.runner import resolve_draft_dir

    base, target, drafts, data = setup
    root = tmp_path / "ckpt"
    shutil.copytree(drafts["eagle3"], root / "step_7")
    os.symlink("step_7", root / "step_latest")  # what the trainer writes: a draft folder itself
    assert resolve_draft_dir(str(root / "step_7")) == str(root / "step_7")
    assert resolve_draft_dir(str(root / "step_latest")) == str(root / "step_latest")
    (root / "step_latest").unlink()
    (root / "step_latest").write_text("step_7\n")  # the text pointer earlier versions wrote
    assert resolve_draft_dir(str(root / "step_latest")) == str(root / "step_7")


def test_load_draft_fetches_a_hub_id_once_and_loads_it_strictly(setup, monkeypatch):
    # No network here: stand in for the hub with the local folder; load_draft must download the config and
    # the weights of a hub id (one snapshot), and load them strictly like a local folder.
    import huggingface_hub

    from deepspec.models import load_draft
    from deepspec.models.loading import SAFETENSORS_INDEX_NAME

    base, target, drafts, data = setup
    asked = []

    def fake_snapshot(repo_id, allow_patterns=None, **_):
        asked.append((repo_id, allow_patterns))
        return str(drafts["eagle3"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    draft = load_draft("someone/eagle3-draft")
    assert asked == [("someone/eagle3-draft", ["config.json", "*.safetensors", SAFETENSORS_INDEX_NAME])]
    assert type(draft).__name__ == "Qwen3Eagle3Model"


def test_eval_measures_a_speculators_folder_like_the_draft_it_came_from(setup, tmp_path):
    # A speculators-format folder as engines' tools write it (no embedding / LM head: eval fills them from
    # --target_name_or_path) is measured exactly like the DeepSpec folder it was exported from.
    from safetensors.torch import load_file, save_file

    from deepspec.export.speculators import to_speculators_folder

    base, target, drafts, data = setup
    spec = to_speculators_folder(draft_dir=drafts["dspark"], output_dir=tmp_path / "spec")
    state = load_file(spec / "model.safetensors")
    del state["embed_tokens.weight"], state["lm_head.weight"]
    save_file(state, str(spec / "model.safetensors"))
    results = {}
    for name, draft in (("ours", drafts["dspark"]), ("speculators", spec)):
        out = tmp_path / name
        assert (
            run(
                [
                    "--target_name_or_path",
                    target,
                    "--draft_name_or_path",
                    draft,
                    "--eval-data-dir",
                    data,
                    "--tasks",
                    "gsm8k",
                    "--max-new-tokens",
                    8,
                    "--temperature",
                    0,
                    "--output-dir",
                    out,
                    "--save-outputs",
                ]
            )
            == 0
        )
        results[name] = (
            json.loads((out / "results.json").read_text())["tasks"]["gsm8k"],
            (out / "outputs.jsonl").read_text(),
        )
    (a, out_a), (b, out_b) = results["ours"], results["speculators"]
    assert a["accept_rate_by_position"] == b["accept_rate_by_position"] and a["num_rounds"] == b["num_rounds"]
    assert out_a == out_b


def test_a_threshold_that_cuts_every_block_still_reports(setup, capsys):
    """--confidence-threshold 1: every proposal is cut to 0 slots; τ = 1 (the target's own token) and the
    results and table are written, with a note instead of an empty acceptance plot."""
    base, target, drafts, data = setup
    out = base / "cut_all"
    args = ["--target_name_or_path", target, "--draft_name_or_path", drafts["dspark"], "--eval-data-dir", data]
    args += ["--tasks", "gsm8k:2", "--max-new-tokens", 8, "--confidence-threshold", 1.0, "--output-dir", out]
    assert run(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"]["gsm8k"]["acceptance_length"] == pytest.approx(1.0)
    assert (out / "table.md").is_file() and not (out / "conditional_acceptance.png").exists()
    assert "no draft position was ever verified" in capsys.readouterr().out


def test_num_speculative_tokens_drafts_fewer_and_refuses_more(setup, capsys):
    base, target, drafts, data = setup
    common = ["--target_name_or_path", target, "--eval-data-dir", data, "--tasks", "gsm8k:2", "--temperature", 0]
    common += ["--max-new-tokens", 10, "--save-outputs"]
    outputs = {}
    for k in (None, 2):
        out = base / f"k_{k}"
        flag = [] if k is None else ["--num-speculative-tokens", k]
        assert run(common + ["--draft_name_or_path", drafts["eagle3"], "--output-dir", out] + flag) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["meta"]["gamma"] == (k or 4) and results["meta"]["num_speculative_tokens"] == k
        assert results["spec_decode"]["num_spec_tokens"] == (k or 4)
        outputs[k] = [json.loads(line)["token_ids"] for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert outputs[2] == outputs[None]  # lossless at T=0 either way
    # More than the draft was trained for (ttt_length 4): refused before any model loads, nothing written.
    for draft in ("eagle3", "dspark"):
        out = base / f"k5_{draft}"
        assert (
            run(common + ["--draft_name_or_path", drafts[draft], "--output-dir", out, "--num-speculative-tokens", 5])
            == 2
        )
        assert (
            f"--num-speculative-tokens 5: this {draft} draft was trained to propose 4 tokens per round, so it "
            "takes 1..4" in capsys.readouterr().err
        )
        assert not out.exists()
    with pytest.raises(SystemExit):
        eval_cli.parse_args(["--draft_name_or_path", "x", "--num-speculative-tokens", "0"])
    assert "--num-speculative-tokens must be >= 1, got 0" in capsys.readouterr().err


@pytest.fixture
def native_bf16(monkeypatch):
    from deepspec import precision

    monkeypatch.setenv("DEEPSPEC_CPU_BF16", "1")
    precision.cpu_has_native_bf16.cache_clear()
    yield
    precision.cpu_has_native_bf16.cache_clear()


def _dtype_run(setup, out, *extra):
    base, target, drafts, data = setup
    args = ["--target_name_or_path", target, "--draft_name_or_path", drafts["dspark"], "--eval-data-dir", data]
    args += ["--tasks", "gsm8k:2", "--max-new-tokens", 6, "--batch-size", 2, "--output-dir", out, *extra]
    assert run(args) == 0
    return json.loads((out / "results.json").read_text())["meta"]


def test_auto_dtype_on_native_bf16_is_probed_at_decode_shapes_and_recorded(setup, native_bf16, monkeypatch):
    """A fake timer (bf16 twice as fast): both dtypes are timed 3 times each, by turns, at the run's batch and γ;
    the faster is decoded with, and results.json says why."""
    from deepspec.eval import decode_setup

    calls = []

    def fake(*, target, proposer, layer_ids, shapes, seed=0):
        name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[target.model.dtype]
        assert next(proposer.draft.parameters()).dtype == target.model.dtype  # the draft in the same dtype
        calls.append((name, shapes["batch"], shapes["gamma"]))
        return 0.5 if name == "bf16" else 1.0

    monkeypatch.setattr(decode_setup, "seconds_per_round", fake)
    meta = _dtype_run(setup, setup[0] / "probed")
    assert calls == [("fp32", 2, 4), ("bf16", 2, 4)] * 3
    assert meta["dtype"] == "bf16" and meta["dtype_reason"].startswith("auto: bf16, probe 2.00x faster than fp32 ")
    assert "(batch 2, 5 tokens per verify, 256-token KV cache)" in meta["dtype_reason"]
    assert meta["dtype_probe"]["fp32_s_per_round"] == 1.0 and meta["dtype_probe"]["bf16_s_per_round"] == 0.5
    assert meta["dtype_probe"]["runs"] == {"fp32": [1.0] * 3, "bf16": [0.5] * 3}


def test_explicit_dtype_is_not_probed(setup, native_bf16, monkeypatch):
    from deepspec.eval import decode_setup

    def refuse(**_):
        raise AssertionError("an explicit --dtype must not be probed")

    monkeypatch.setattr(decode_setup, "seconds_per_round", refuse)
    meta = _dtype_run(setup, setup[0] / "explicit", "--dtype", "bf16")
    assert (meta["dtype"], meta["dtype_reason"], meta["dtype_probe"]) == ("bf16", "bf16 as given (--dtype)", None)


def test_the_real_probe_times_both_dtypes(setup, native_bf16):
    """No timing claim: the probe decodes in both dtypes and the choice names its ratio."""
    meta = _dtype_run(setup, setup[0] / "real_probe")
    probe = meta["dtype_probe"]
    assert probe["fp32_s_per_round"] > 0 and probe["bf16_s_per_round"] > 0 and probe["context"] == 256
    assert meta["dtype"] in ("fp32", "bf16") and meta["dtype_reason"].startswith(f"auto: {meta['dtype']}, ")
    # The target drafting for itself accepts every token: the probe still times its rounds (it counts rounds,
    # not tokens).
    base, target, drafts, data = setup
    out = base / "real_probe_self"
    args = ["--target_name_or_path", target, "--self-draft", 3, "--eval-data-dir", data, "--tasks", "gsm8k:1"]
    assert run(args + ["--max-new-tokens", 4, "--output-dir", out]) == 0
    assert json.loads((out / "results.json").read_text())["meta"]["dtype_probe"]["rounds"] == 4
