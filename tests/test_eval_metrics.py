"""Evaluation bookkeeping: task lists, prompt loading, metrics against hand-computed numbers, reports."""

import json

import pytest

from deepspec.eval.metrics import MetricsError, engine_counters, macro_average, request_steps, task_metrics
from deepspec.eval.plots import (
    conditional_acceptance_figure,
    conditional_by_algorithm_figure,
    plot_conditional_acceptance,
    plot_conditional_by_algorithm,
    plot_tau_by_task,
    tau_by_task_figure,
)
from deepspec.eval.report import comparison_table, format_table, markdown_table, short_name, write_results
from deepspec.eval.tasks import (
    KNOWN_TASKS,
    EvalDataError,
    TaskSpec,
    absent_tasks_line,
    default_eval_data_dir,
    load_prompts,
    parse_tasks,
)

GAMMA = 3
# Four rounds with γ=3; round 2 was truncated to ℓ=2 by a threshold.
ROUNDS = [
    {"task": "gsm8k", "prompt_index": 0, "round": 0, "gamma": 3, "proposal_len": 3, "accepted": 3, "conf_logits": None},
    {"task": "gsm8k", "prompt_index": 0, "round": 1, "gamma": 3, "proposal_len": 3, "accepted": 1, "conf_logits": None},
    {
        "task": "gsm8k",
        "prompt_index": 1,
        "round": 0,
        "gamma": 3,
        "proposal_len": 2,
        "accepted": 2,
        "conf_logits": [1.0, 0.5, -2.0],
    },
    {"task": "gsm8k", "prompt_index": 1, "round": 1, "gamma": 3, "proposal_len": 3, "accepted": 0, "conf_logits": None},
]


# ------------------------------------------------------------------------------------------- metrics


def test_task_metrics_hand_computed():
    m = task_metrics(ROUNDS, gamma=GAMMA, num_samples=2, wall_seconds=2.0)
    # committed per round: 4, 2, 3, 1
    assert m["acceptance_length"] == pytest.approx(10 / 4)
    assert (m["num_samples"], m["num_rounds"], m["gamma"]) == (2, 4, 3)
    # accepted >= 1: rounds 1,2,3; >= 2: rounds 1,3; >= 3: round 1
    assert m["accept_rate_by_position"] == pytest.approx([3 / 4, 2 / 4, 1 / 4])
    # k=1: all 4 reach slot 1, 3 pass; k=2: rounds 1,2,3 reach (acc>=1, ℓ>=2), 2 pass;
    # k=3: round 3 passed slot 2 but was truncated at ℓ=2, so only round 1 reaches slot 3 (passes).
    assert m["conditional_accept_rate_by_position"] == pytest.approx([3 / 4, 2 / 3, 1.0])
    assert m["mean_proposal_len"] == pytest.approx(11 / 4)
    assert m["verify_rate"] == pytest.approx((1 + 1 + 2 / 3 + 1) / 4)
    assert m["acceptance_rate"] == pytest.approx(6 / 11)
    assert m["generated_tokens"] == 10
    assert m["tokens_per_second"] == pytest.approx(5.0)


def test_engine_counters_in_vllms_schema_hand_computed():
    cut = {"task": "gsm8k", "prompt_index": 1, "round": 2, "gamma": 3, "proposal_len": 0, "accepted": 0}
    c = engine_counters(ROUNDS + [cut], gamma=GAMMA)
    # The ℓ=0 round sent nothing to verify: no vLLM draft. Drafts (ℓ, accepted): (3,3) (3,1) (2,2) (3,0).
    assert c == {
        "num_spec_tokens": 3,
        "num_drafts": 4,
        "num_draft_tokens": 11,
        "num_accepted_tokens": 6,
        "num_accepted_tokens_per_pos": [3, 2, 1],  # accepted >= 1: 3 drafts; >= 2: 2; >= 3: 1
        "num_draft_tokens_per_pos": [4, 4, 3],  # ℓ >= 1: 4; >= 2: 4; >= 3: 3
    }
    # vLLM's mean acceptance length 1 + accepted / drafts equals our τ when no round is cut to 0.
    assert (
        1 + c["num_accepted_tokens"] / c["num_drafts"]
        == task_metrics(ROUNDS, gamma=3, num_samples=2)["acceptance_length"]
    )
    assert request_steps(ROUNDS[2:] + [cut]) == {"per_step_accepted": [2, 0], "per_step_drafted": [2, 3]}
    assert engine_counters([], gamma=2)["num_accepted_tokens_per_pos"] == [0, 0]
    with pytest.raises(MetricsError, match="gamma=3 is outside 1..2"):
        engine_counters(ROUNDS, gamma=2)


def test_task_metrics_caller_tokens_none_positions_and_empty():
    m = task_metrics(ROUNDS, gamma=GAMMA, num_samples=2, generated_tokens=8)
    assert m["generated_tokens"] == 8 and m["tokens_per_second"] is None
    # Every round verified only slot 1: positions 2 and 3 are never reached.
    short = [{"gamma": 3, "proposal_len": 1, "accepted": a} for a in (1, 0)]
    m = task_metrics(short, gamma=3, num_samples=1)
    assert m["conditional_accept_rate_by_position"] == [0.5, None, None]
    assert m["accept_rate_by_position"] == [0.5, 0.0, 0.0]
    empty = task_metrics([], gamma=3, num_samples=0)
    assert empty["acceptance_length"] is None and empty["num_rounds"] == 0
    assert empty["accept_rate_by_position"] == [None] * 3


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"gamma": 3, "proposal_len": 2, "accepted": 3}, "accepted=3"),
        ({"gamma": 3, "proposal_len": 4, "accepted": 0}, "proposal_len=4"),
        ({"gamma": 5, "proposal_len": 1, "accepted": 0}, "gamma=5"),
        ({"gamma": 3, "accepted": 0}, "proposal_len"),
    ],
)
def test_task_metrics_rejects_impossible_rounds(bad, words):
    with pytest.raises(MetricsError, match=words):
        task_metrics([bad], gamma=3, num_samples=1)


def test_macro_average_by_domain():
    res = {
        "gsm8k": {"acceptance_length": 4.0},
        "math500": {"acceptance_length": 3.0},
        "humaneval": {"acceptance_length": 5.0},
        "empty": {"acceptance_length": None},
    }
    domains = {"gsm8k": "math", "math500": "math", "humaneval": "code", "empty": "chat"}
    macro = macro_average(res, domains=domains)
    assert macro == pytest.approx({"all": 4.0, "math": 3.5, "code": 5.0})
    assert list(macro) == ["all", "math", "code"]  # chat had no usable task: omitted


# --------------------------------------------------------------------------------------------- tasks


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "eval_datasets"
    d.mkdir()
    for name in KNOWN_TASKS:
        if name != "alpaca":  # as in the shared data folder
            _write_jsonl(d / f"{name}.jsonl", [{"turns": [f"{name} q{i}", "follow-up"]} for i in range(3)])
    _write_jsonl(d / "mydata.jsonl", [{"turns": ["custom q0"]}, {"turns": ["custom q1"]}])
    return d


def test_parse_tasks_default_is_all_known_with_paper_counts(data_dir):
    tasks, absent = parse_tasks(None, eval_data_dir=data_dir)
    assert [t.name for t in tasks] == [n for n in KNOWN_TASKS if n != "alpaca"]
    assert {t.name: t.count for t in tasks}["gsm8k"] == 500
    assert {t.name: t.domain for t in tasks}["mt-bench"] == "chat"
    assert absent == ["alpaca"]
    assert parse_tasks("", eval_data_dir=data_dir)[0] == tasks


def test_parse_tasks_counts_custom_and_missing(data_dir):
    tasks, absent = parse_tasks("gsm8k:20, mt-bench,humaneval:5,mydata,alpaca", eval_data_dir=data_dir)
    assert [(t.name, t.count, t.domain) for t in tasks] == [
        ("gsm8k", 20, "math"),
        ("mt-bench", 80, "chat"),
        ("humaneval", 5, "code"),
        ("mydata", 2, "other"),
    ]
    assert tasks[3].path == data_dir / "mydata.jsonl"
    assert absent == ["alpaca"]


def test_parse_tasks_errors(data_dir, tmp_path):
    with pytest.raises(EvalDataError) as e:
        parse_tasks("gsm8k,nosuch", eval_data_dir=data_dir)
    msg = str(e.value)
    assert "nosuch" in msg and "arena-hard-v2" in msg and "mydata" in msg  # known tasks and files listed
    for spec in ("gsm8k:abc", "gsm8k:0", "gsm8k:-2"):
        with pytest.raises(EvalDataError, match="gsm8k"):
            parse_tasks(spec, eval_data_dir=data_dir)
    with pytest.raises(EvalDataError, match="more than once"):
        parse_tasks("gsm8k,gsm8k:3", eval_data_dir=data_dir)
    with pytest.raises(EvalDataError, match="not a plain name"):
        parse_tasks("../gsm8k", eval_data_dir=data_dir)
    with pytest.raises(EvalDataError, match="DEEPSPEC_EVAL_DATA_DIR") as e:
        parse_tasks(None, eval_data_dir=tmp_path / "absent")
    assert "build_eval_datasets.py" in str(e.value) and "--eval-data-dir" in str(e.value)
    with pytest.raises(EvalDataError, match="none of the requested") as e:
        parse_tasks("alpaca", eval_data_dir=data_dir)
    assert f"build_eval_datasets.py --tasks alpaca --output-dir {data_dir}" in str(e.value)


def test_absent_tasks_line_names_the_fetch_command(data_dir, monkeypatch):
    monkeypatch.delenv("DEEPSPEC_EVAL_DATA_DIR", raising=False)
    shipped = default_eval_data_dir().resolve()
    assert absent_tasks_line(["aime25", "alpaca"], data_dir=shipped) == (
        f"not evaluated, no prompt file in {shipped}: aime25, alpaca (not shipped: see eval_datasets/README.md); "
        "fetch them with: python eval_datasets/build_eval_datasets.py --tasks aime25,alpaca"
    )
    # Another folder: the command writes there.
    assert absent_tasks_line(["alpaca"], data_dir=data_dir).endswith(f"--tasks alpaca --output-dir {data_dir}")


def test_default_eval_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPSPEC_EVAL_DATA_DIR", str(tmp_path))
    assert default_eval_data_dir() == tmp_path
    monkeypatch.delenv("DEEPSPEC_EVAL_DATA_DIR")
    d = default_eval_data_dir()
    assert d.name == "eval_datasets" and (d.parent / "deepspec").is_dir()


def test_load_prompts(data_dir, tmp_path):
    tasks, _ = parse_tasks("gsm8k:2,mt-bench:10", eval_data_dir=data_dir)
    assert load_prompts(tasks[0]) == ["gsm8k q0", "gsm8k q1"]
    assert len(load_prompts(tasks[1])) == 3  # fewer lines than asked: what exists
    bad = tmp_path / "bad.jsonl"
    for rows, words in [
        ([{"turns": ["ok"]}, "{not json"], "bad.jsonl:2"),
        ([{"turns": []}], "bad.jsonl:1"),
        ([{"turns": ["ok"]}, "", {"prompt": "x"}], "bad.jsonl:3"),
        ([{"turns": [""]}], "bad.jsonl:1"),
    ]:
        _write_jsonl(bad, rows)
        with pytest.raises(EvalDataError, match=words):
            load_prompts(TaskSpec(name="bad", count=5, domain="other", path=bad))


# -------------------------------------------------------------------------------------------- report


def _results():
    gsm = task_metrics(ROUNDS, gamma=GAMMA, num_samples=2)
    full = [{"gamma": 3, "proposal_len": 3, "accepted": a} for a in (3, 2, 1, 3)]
    code = task_metrics(full, gamma=GAMMA, num_samples=1)
    return {"gsm8k": gsm, "humaneval": code}, {"gsm8k": "math", "humaneval": "code"}


def test_format_table_rows_and_values():
    res, domains = _results()
    text = format_table(res, target="/models/Qwen/Qwen3-4B/", draft="ckpt/proj/dspark_tiny/step_100", gamma=3)
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["dataset", "target", "draft", "proposal_len", "accept_len", "verify"]
    assert "acc@3" in lines[0]
    gsm = next(line for line in lines if line.startswith("gsm8k"))
    # τ 2.50, mean ℓ 2.75 < γ, verify 11/12, accept@1..3 = 75/50/25 %
    for cell in ("Qwen3-4B", "dspark_tiny/step_100", "3 (2.8)", "2.50", "91.7%", "75.0%", "50.0%", "25.0%"):
        assert cell in gsm, (cell, gsm)
    he = next(line for line in lines if line.startswith("humaneval"))
    assert " 3 " in he and "3.25" in he and "100.0%" in he  # τ = (4+3+2+4)/4, nothing truncated
    assert lines[-1].startswith("macro-avg (2)") and "2.88" in lines[-1]  # (2.5 + 3.25) / 2 = 2.875
    assert any(line.startswith("avg math (1)") and "2.50" in line for line in lines)
    assert any(line.startswith("avg code (1)") and "3.25" in line for line in lines)
    md = markdown_table(res, target="Qwen3-4B", draft="d", gamma=3, domains=domains)
    assert md.splitlines()[0].startswith("| dataset | target | draft |")
    assert "| gsm8k | Qwen3-4B | d | 3 (2.8) | 2.50 | 91.7% | 75.0% | 50.0% | 25.0% |" in md
    assert "**macro-avg (2)**" in md


def test_short_name():
    assert short_name("Qwen/Qwen3-4B") == "Qwen3-4B"
    assert short_name("checkpoints/p/exp/step_latest/") == "exp/step_latest"


def test_write_results_round_trip(tmp_path):
    res, domains = _results()
    path = tmp_path / "out" / "results.json"
    write_results(path, results=res, meta={"target": "t", "gamma": 3}, domains=domains)
    data = json.loads(path.read_text())
    assert data["tasks"] == json.loads(json.dumps(res))
    assert data["macro"] == pytest.approx({"all": 2.875, "math": 2.5, "code": 3.25})
    assert data["meta"] == {"target": "t", "gamma": 3}
    with pytest.raises(ValueError, match="plain JSON"):
        write_results(path, results=res, meta={"bad": float("nan")})
    assert json.loads(path.read_text())["meta"]["gamma"] == 3  # the failed write left the old file


def _labels(items) -> list[str]:
    """The text of tick labels and legend entries, the label of lines."""
    return [item.get_text() if hasattr(item, "get_text") else item.get_label() for item in items]


def test_plots_show_the_metrics_and_comparison(tmp_path):
    res, domains = _results()
    by_algo = {"DSpark": res, "DFlash": {"gsm8k": res["gsm8k"]}}
    # Conditional acceptance by position, by hand: gsm8k as in test_task_metrics_hand_computed; humaneval's
    # rounds accept 3, 2, 1, 3 of 3: slot 1 passes 4/4, slot 2 3/4, slot 3 2/3 (reached by 3 rounds).
    gsm, code = [3 / 4, 2 / 3, 1.0], [1.0, 3 / 4, 2 / 3]
    [ax] = conditional_acceptance_figure(res, domains=domains, title="t").axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "draft position k",
        "P(accept k | 1..k-1 accepted)",
        "t",
    )
    assert ax.get_ylim() == (0.0, 1.02) and _labels(ax.lines) == ["math", "code"]
    assert _labels(ax.get_legend().get_texts()) == ["math", "code"]
    for line, want in zip(ax.lines, (gsm, code)):
        assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == pytest.approx(want)
    [ax] = conditional_by_algorithm_figure(by_algo).axes  # macro over each algorithm's tasks
    assert ax.get_title() == "Conditional acceptance by algorithm" and _labels(ax.lines) == ["DSpark", "DFlash"]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([(a + b) / 2 for a, b in zip(gsm, code)])
    assert list(ax.lines[1].get_ydata()) == pytest.approx(gsm)
    [ax] = tau_by_task_figure(by_algo).axes
    assert (ax.get_ylabel(), ax.get_title()) == ("accepted length τ", "Accepted length τ by task")
    assert _labels(ax.get_xticklabels()) == ["gsm8k", "humaneval", "macro-avg"]
    assert _labels(ax.get_legend().get_texts()) == ["DSpark", "DFlash"]
    dspark, dflash = ax.containers  # one bar group per algorithm, side by side (width 0.4) around each task
    assert [b.get_height() for b in dspark] == pytest.approx([2.5, 3.25, 2.875])  # τ, and macro (2.5 + 3.25) / 2
    assert [b.get_x() + b.get_width() / 2 for b in dspark] == pytest.approx([-0.2, 0.8, 1.8])
    # DFlash ran no humaneval: no bar there (not a zero bar); its macro is its one task's τ.
    assert [b.get_height() for b in dflash] == pytest.approx([2.5, 2.5])
    assert [b.get_x() + b.get_width() / 2 for b in dflash] == pytest.approx([0.2, 2.2])
    # Intervals become error bars, from each bar's low to its high end (none where a bar has no interval).
    intervals = {"DSpark": {"gsm8k": [2.0, 3.0], "macro-avg": [2.5, 3.5]}}
    from matplotlib.container import BarContainer

    [ax] = tau_by_task_figure(by_algo, intervals=intervals).axes
    bars, dflash_bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    segments = bars.errorbar.lines[2][0].get_segments()
    assert [y for s in segments for y in (s[0][1], s[1][1])] == pytest.approx([2.0, 3.0, 3.25, 3.25, 2.5, 3.5])
    assert [b.get_height() for b in bars] == pytest.approx([2.5, 3.25, 2.875])
    assert dflash_bars.errorbar is None  # DFlash has no interval: no error bars at all
    # The PNGs are these figures, written where asked.
    assert plot_conditional_acceptance(res, domains=domains, path=tmp_path / "cond.png", title="t") is True
    plot_tau_by_task(by_algo, path=tmp_path / "tau.png")
    assert plot_conditional_by_algorithm(by_algo, path=tmp_path / "cond_algo.png") is True
    for name in ("cond.png", "tau.png", "cond_algo.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    # No position with data (every proposal cut to 0 slots): no figure and no file.
    cut = {"gsm8k": dict(res["gsm8k"], conditional_accept_rate_by_position=[None] * 3)}
    assert conditional_acceptance_figure(cut, domains=domains) is None
    assert plot_conditional_acceptance(cut, domains=domains, path=tmp_path / "none.png") is False
    assert not (tmp_path / "none.png").exists()
    md = comparison_table(by_algo, domains=domains)
    lines = md.splitlines()
    assert lines[0] == "| algorithm | τ all | τ math | τ code | gsm8k | humaneval |"
    assert lines[2] == "| DSpark | 2.88 | 2.50 | 3.25 | 2.50 | 3.25 |"
    assert lines[3] == "| DFlash | 2.50 | 2.50 | - | 2.50 | - |"


def test_coverage_line():
    from deepspec.eval.report import coverage_line

    assert coverage_line(["gsm8k", "mbpp"]) == "tasks covered (2): gsm8k, mbpp"
    assert coverage_line({"gsm8k": {}}, ["aime25", "alpaca"]) == (
        "tasks covered (1): gsm8k; not covered, no prompt file: aime25, alpaca "
        "(eval_datasets/README.md says how to fetch them)"
    )


def test_ablation_plots_show_the_macro_tau_of_each_evaluated_run(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "eval" / "plot_ablations.py"
    spec = importlib.util.spec_from_file_location("plot_ablations", path)
    ablations = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablations)
    taus = {  # run -> τ of its two tasks; the macro is their mean
        "dspark_L1": (2.0, 3.0),
        "dspark": (4.0, 5.0),  # 5 draft layers, and the Markov head's block-7 point
        "markov_b4": (3.0, 3.5),
        "dflash": (2.5, 2.5),  # DFlash's block-7 point
        "dflash_b16": (1.0, 2.0),
    }
    for run, (a, b) in taus.items():
        folder = tmp_path / "eval" / run
        folder.mkdir(parents=True)
        tasks = {"gsm8k": {"acceptance_length": a}, "humaneval": {"acceptance_length": b}}
        (folder / "results.json").write_text(json.dumps({"tasks": tasks}))
    assert ablations.main(["--out", str(tmp_path)]) == 0
    missing: list[str] = []
    depth, blocks = ablations.ablation_series(tmp_path, missing, {})
    assert "dspark_L2" in missing and "rnn_b4" in missing
    figs = ablations.figures(depth, blocks)
    assert list(figs) == ["depth.png", "block_size.png"]
    for name in figs:  # main wrote the same two figures
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    [ax] = figs["depth.png"].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("draft layers", "macro accepted length τ")
    assert ax.get_title() == "τ vs draft depth (Fig. 3 analog)" and _labels(ax.lines) == ["DSpark"]
    assert list(ax.lines[0].get_xdata()) == [1, 5] and list(ax.lines[0].get_ydata()) == pytest.approx([2.5, 4.5])
    [ax] = figs["block_size.png"].axes
    assert ax.get_xlabel() == "block size γ" and ax.get_title() == "τ vs block size (Fig. 4 analog)"
    # The RNN head has no evaluated run: no line (and no legend entry) for it.
    assert _labels(ax.lines) == _labels(ax.get_legend().get_texts()) == ["Markov (DSpark)", "DFlash (no head)"]
    markov, dflash = ax.lines
    assert list(markov.get_xdata()) == [4, 7] and list(markov.get_ydata()) == pytest.approx([3.25, 4.5])
    assert list(dflash.get_xdata()) == [7, 16] and list(dflash.get_ydata()) == pytest.approx([2.5, 1.5])
    table = (tmp_path / "ablations.md").read_text()
    assert "| 1 | 2.500 |" in table and "| 5 | 4.500 |" in table and "| 7 | 4.500 | - | 2.500 |" in table
