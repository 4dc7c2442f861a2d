"""Bad inputs to train.py, eval.py and the smaller entry points: a clear refusal, nothing touched.

Each case runs the entry point as a user would (a subprocess), and asserts a non-zero exit, no
traceback, the message naming the problem, and every user file byte-for-byte unchanged.
"""

from __future__ import annotations

import json

import pytest

from badinput import ROOT, fingerprint, refused, run_entry
from deepspec.tiny_target import build_random_tiny_target

TINY = "config/dspark/dspark_tiny.py"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A random tiny target, a small prompt folder, a fake draft folder and a fake eval run."""
    base = tmp_path_factory.mktemp("bad_cli")
    target = build_random_tiny_target(output_dir=base / "target", seed=0)
    prompts = base / "prompts"
    prompts.mkdir()
    (prompts / "gsm8k.jsonl").write_text("".join(json.dumps({"turns": [f"What is {i}+{i}?"]}) + "\n" for i in range(3)))
    (prompts / "broken.jsonl").write_text('{"turns": ["ok"]}\n{not json\n')
    (prompts / "noturns.jsonl").write_text('{"question": "no turns key"}\n')
    draft = base / "draft_without_weights"
    draft.mkdir()
    (draft / "config.json").write_text(json.dumps({"architectures": ["Qwen3DSparkModel"]}))
    (base / "notes.txt").write_text("a user's file\n")
    (base / "empty.jsonl").write_text("\n")
    (base / "latin1.jsonl").write_bytes(b'{"conversations": [{"role": "user", "content": "caf\xe9"}]}\n')
    return {"base": base, "target": target, "prompts": prompts, "draft": draft, "notes": base / "notes.txt"}


def _env(w):
    return {"DEEPSPEC_EVAL_DATA_DIR": str(w["prompts"]), "DEEPSPEC_TINY_TARGET": str(w["target"])}


def _protected(w):
    return [w["target"], w["prompts"], w["draft"], w["notes"], ROOT / "config", ROOT / "README.md"]


# (id, script, args (with {placeholders}), needles)
CASES = [
    ("train-no-config", "train.py", [], ["the following arguments are required: --config"]),
    ("train-missing-config", "train.py", ["--config", "{base}/nope.py"], ["config file not found"]),
    ("train-config-not-python", "train.py", ["--config", "{notes}"], ["config must be a Python file"]),
    (
        "train-unknown-key",
        "train.py",
        ["--config", TINY, "--opts", "train.lrr=1"],
        ["unknown config key 'train.lrr'", "train.lr"],
    ),
    ("train-opts-no-equals", "train.py", ["--config", TINY, "--opts", "train.lr"], ["must look like key.path=value"]),
    ("train-bad-type", "train.py", ["--config", TINY, "--opts", "train.local_batch_size=four"], ["expected int"]),
    (
        "train-batch-zero",
        "train.py",
        ["--config", TINY, "--opts", "train.local_batch_size=0"],
        ["train.local_batch_size must be >= 1, got 0"],
    ),
    (
        "train-batch-not-multiple",
        "train.py",
        ["--config", TINY, "--opts", "train.global_batch_size=6"],
        ["must be a multiple of"],
    ),
    ("train-lr-nan", "train.py", ["--config", TINY, "--opts", "train.lr=.nan"], ["train.lr must be a finite number"]),
    (
        "train-bad-algorithm",
        "train.py",
        ["--config", TINY, "--opts", "model.algorithm=medusa"],
        ["model.algorithm must be one of"],
    ),
    (
        "train-layer-ids-unsorted",
        "train.py",
        ["--config", TINY, "--opts", "model.target_layer_ids=[2,1]"],
        ["strictly increasing"],
    ),
    (
        "train-bad-precision",
        "train.py",
        ["--config", TINY, "--opts", "train.precision=fp8"],
        ["train.precision must be auto, bf16 or fp32"],
    ),
    ("train-no-cache", "train.py", ["--config", TINY], ["no target cache: pass --target-cache-dir"]),
    (
        "train-cache-missing",
        "train.py",
        ["--config", TINY, "--target-cache-dir", "{base}/nocache"],
        ["no target cache at", "manifest.json"],
    ),
    ("train-nproc-zero", "train.py", ["--config", TINY, "--nproc", "0"], ["--nproc: expected an integer >= 1"]),
    (
        "train-stop-after-zero",
        "train.py",
        ["--config", TINY, "--stop-after-steps", "0"],
        ["--stop-after-steps: expected an integer >= 1"],
    ),
    (
        "train-unknown-trainer",
        "train.py",
        ["--config", TINY, "--opts", "train.trainer_cls=Nope", "--target-cache-dir", "{base}"],
        ["train.trainer_cls='Nope' is unknown"],
    ),
    ("eval-no-draft", "eval.py", [], ["--draft_name_or_path is required"]),
    (
        "eval-missing-draft",
        "eval.py",
        ["--draft_name_or_path", "{base}/runs/nope/step_5", "--tasks", "gsm8k:1"],
        ["no such folder"],
    ),
    (
        "eval-relative-missing-draft",
        "eval.py",
        ["--draft_name_or_path", "runs/nope", "--tasks", "gsm8k:1"],
        ["no such folder: runs/nope"],
    ),
    (
        "eval-draft-is-file",
        "eval.py",
        ["--draft_name_or_path", "{notes}", "--tasks", "gsm8k:1"],
        ["is a file, not a draft folder"],
    ),
    (
        "eval-draft-empty-folder",
        "eval.py",
        ["--draft_name_or_path", "{prompts}", "--tasks", "gsm8k:1"],
        ["holds no draft"],
    ),
    ("eval-unknown-task", "eval.py", ["--self-draft", "2", "--tasks", "nosuch:1"], ["unknown task 'nosuch'"]),
    ("eval-task-count-zero", "eval.py", ["--self-draft", "2", "--tasks", "gsm8k:0"], ["the count must be at least 1"]),
    ("eval-task-count-text", "eval.py", ["--self-draft", "2", "--tasks", "gsm8k:x"], ["is not an integer"]),
    ("eval-missing-data-dir", "eval.py", ["--self-draft", "2", "--eval-data-dir", "{base}/noeval"], ["does not exist"]),
    (
        "eval-threshold-range",
        "eval.py",
        ["--self-draft", "2", "--confidence-threshold", "2"],
        ["--confidence-threshold must lie in [0, 1]"],
    ),
    ("eval-max-new-tokens-zero", "eval.py", ["--self-draft", "2", "--max-new-tokens", "0"], ["must be >= 1"]),
    (
        "eval-negative-temperature",
        "eval.py",
        ["--self-draft", "2", "--temperature", "-1"],
        ["--temperature must be >= 0"],
    ),
    ("eval-negative-self-draft", "eval.py", ["--self-draft", "-1"], ["--self-draft must be >= 1"]),
    (
        "eval-few-bootstrap-draws",
        "eval.py",
        ["--self-draft", "2", "--bootstrap-draws", "20"],
        ["argument --bootstrap-draws: must be >= 100 (a 95% interval reads the tails of the draws), got 20"],
    ),
    ("eval-bad-device", "eval.py", ["--self-draft", "2", "--device", "tpu"], ["--device must be cpu, cuda or cuda:N"]),
    (
        "eval-prefix-needs-profile",
        "eval.py",
        ["--self-draft", "2", "--scheduler", "prefix"],
        ["needs --engine-profile"],
    ),
    (
        "eval-output-is-data-dir",
        "eval.py",
        ["--self-draft", "2", "--tasks", "gsm8k:1", "--output-dir", "{prompts}"],
        ["--output-dir path", "is the input"],
    ),
    (
        "eval-output-inside-target",
        "eval.py",
        ["--self-draft", "2", "--tasks", "gsm8k:1", "--output-dir", "{target}/eval"],
        ["lies inside the input folder"],
    ),
    (
        "eval-output-is-file",
        "eval.py",
        ["--self-draft", "2", "--tasks", "gsm8k:1", "--output-dir", "{notes}"],
        ["is a file, not a folder; choose another folder"],
    ),
    (
        "eval-missing-target",
        "eval.py",
        [
            "--self-draft",
            "2",
            "--tasks",
            "gsm8k:1",
            "--target_name_or_path",
            "{base}/no_target",
            "--output-dir",
            "{base}/out1",
        ],
        ["--target_name_or_path: no such folder:", "no_target"],
    ),
    (
        "eval-broken-prompts",
        "eval.py",
        ["--self-draft", "2", "--tasks", "broken:2", "--max-new-tokens", "2", "--output-dir", "{base}/out2"],
        ["broken.jsonl:2: not valid JSON"],
    ),
    (
        "eval-prompts-without-turns",
        "eval.py",
        ["--self-draft", "2", "--tasks", "noturns:1", "--max-new-tokens", "2", "--output-dir", "{base}/out3"],
        ['needs a non-empty "turns" list'],
    ),
    (
        "eval-missing-profile",
        "eval.py",
        [
            "--self-draft",
            "2",
            "--tasks",
            "gsm8k:1",
            "--scheduler",
            "prefix",
            "--engine-profile",
            "{base}/nope.json",
            "--output-dir",
            "{base}/out4",
        ],
        ["does not exist"],
    ),
    (
        "tiny-target-steps-zero",
        "scripts/data/build_tiny_target.py",
        ["--steps", "0", "--output-dir", "{base}/tt"],
        ["steps must be >= 1"],
    ),
    (
        "tiny-target-onto-file",
        "scripts/data/build_tiny_target.py",
        ["--steps", "1", "--output-dir", "{notes}"],
        ["exists and is not a folder"],
    ),
    (
        "tiny-target-onto-foreign-folder",
        "scripts/data/build_tiny_target.py",
        ["--steps", "1", "--output-dir", "{prompts}"],
        ["not a tiny-target folder"],
    ),
    (
        "compare-bad-run-spec",
        "scripts/eval/compare.py",
        ["--runs", "nodir", "--output-dir", "{base}/cmp"],
        ["write NAME=DIR"],
    ),
    (
        "compare-empty-seed-folder",
        "scripts/eval/compare.py",
        ["--runs", "a={base}/x,", "--output-dir", "{base}/cmp"],
        ["write NAME=DIR", "NAME=DIR1,DIR2 for seeds of one algorithm"],
    ),
    (
        "compare-few-bootstrap-draws",
        "scripts/eval/compare.py",
        ["--runs", "a={base}/x", "--output-dir", "{base}/cmp", "--bootstrap-draws", "99"],
        ["argument --bootstrap-draws: must be >= 100"],
    ),
    (
        "compare-missing-run",
        "scripts/eval/compare.py",
        ["--runs", "a={base}/x", "--output-dir", "{base}/cmp"],
        ["results.json not found"],
    ),
    ("ablations-missing-folder", "scripts/eval/plot_ablations.py", ["--out", "{base}/none"], ["is not a folder"]),
    (
        "profile-bad-batch-list",
        "scripts/eval/profile_engine.py",
        ["--batch-tokens", "1,x"],
        ["expected comma-separated integers"],
    ),
    (
        "profile-repeats-zero",
        "scripts/eval/profile_engine.py",
        ["--repeats", "0"],
        ["argument --repeats: expected an integer >= 1, got '0'"],
    ),
    (
        "profile-threads-negative",  # was torch's RuntimeError traceback
        "scripts/eval/profile_engine.py",
        ["--threads", "-2"],
        ["argument --threads: expected an integer >= 1, got '-2'"],
    ),
    (
        "profile-cuda-without-gpu",  # was an AssertionError traceback
        "scripts/eval/profile_engine.py",
        ["--device", "cuda", "--output-file-path", "{base}/cost.json"],
        ["--device cuda: no CUDA device is visible here; pass --device cpu"],
    ),
    (
        "profile-context-past-max-positions",  # was an AssertionError traceback, after loading the target
        "scripts/eval/profile_engine.py",
        ["--target", "{target}", "--context-len", "100000000", "--output-file-path", "{base}/cost.json"],
        ["--context-len 100000000 plus the query tokens", "exceeds the target's max_position_embeddings"],
    ),
    (
        "profile-target-is-a-draft",  # was a profile of a draft config with random weights, exit 0
        "scripts/eval/profile_engine.py",
        ["--target", "{draft}", "--output-file-path", "{base}/cost.json"],
        ["--target: {draft} is a trained draft, not a target (its config.json names a draft architecture)"],
    ),
    (
        "profile-target-is-no-model",  # was transformers' ValueError traceback
        "scripts/eval/profile_engine.py",
        ["--target", "{prompts}", "--output-file-path", "{base}/cost.json"],
        ["--target: {prompts} is not a model folder (no config.json in it)"],
    ),
    (
        "profile-output-under-a-file",  # was '[Errno 17] File exists'
        "scripts/eval/profile_engine.py",
        ["--target", "{target}", "--output-file-path", "{notes}/cost.json"],
        ["--output-file-path path {notes}/cost.json cannot be written: {notes} is a file, not a folder"],
    ),
    (
        "train-bogus-attention-backend",
        "train.py",
        ["--config", TINY, "--opts", "model.attention_backend=flash"],
        ["model.attention_backend must be one of ('auto', 'sdpa', 'eager', 'flex'), got 'flash'"],
    ),
    (
        "train-adam-betas-one",
        "train.py",
        ["--config", TINY, "--opts", "train.adam_betas=[0.9]"],
        ["train.adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.95], got [0.9]"],
    ),
    (
        "train-online-all-lines-bad",
        "train.py",
        ["--config", TINY, "--online", "--train-data-path", "{prompts}/broken.jsonl", "--nproc", "1"]
        + ["--opts", "logging.checkpoint_dir={base}/ck_online", "logging.tensorboard_dir={base}/tb_online"],
        [
            "read 2 conversations: kept 0, skipped 2",  # the cache builder's summary, with file:line
            "broken.jsonl:2: malformed JSON",
            "no usable training sample in {prompts}/broken.jsonl: all 2 conversations were skipped",
        ],
    ),
    (
        "train-online-empty-file",
        "train.py",
        ["--config", TINY, "--online", "--train-data-path", "{base}/empty.jsonl", "--nproc", "1"]
        + ["--opts", "logging.checkpoint_dir={base}/ck_online", "logging.tensorboard_dir={base}/tb_online"],
        ["no training data: {base}/empty.jsonl holds no conversation (empty, or blank lines only)"],
    ),
    (
        "train-online-not-utf8",
        "train.py",
        ["--config", TINY, "--online", "--train-data-path", "{base}/latin1.jsonl", "--nproc", "1"]
        + ["--opts", "logging.checkpoint_dir={base}/ck_online", "logging.tensorboard_dir={base}/tb_online"],
        ["kept 0, skipped 1", "latin1.jsonl:1: invalid UTF-8", "no usable training sample in {base}/latin1.jsonl"],
    ),
]


@pytest.mark.parametrize("script,args,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_clearly_and_nothing_touched(world, script, args, needles):
    fill = {k: str(v) for k, v in world.items()}
    argv = [a.format(**fill) for a in args]
    before = fingerprint(_protected(world))
    result = run_entry(script, argv, env=_env(world))
    refused(result, *[n.format(**fill) for n in needles])
    assert fingerprint(_protected(world)) == before


def test_train_sh_forwards_repeated_opts_to_the_same_checks(world):
    """train.sh --opts a --opts b: both overrides reach train.py (the second one fails here, on purpose)."""
    result = run_entry(
        "scripts/train/train.sh",
        ["--opts", "train.lr=1e-3", "--opts", "train.local_batch_size=0"],
        env={**_env(world), "config_path": TINY},
    )
    refused(result, "train.local_batch_size must be >= 1, got 0")


def test_cli_main_one_line_for_project_and_os_errors_traceback_for_bugs(capsys, monkeypatch):
    from deepspec.errors import DeepSpecError, cli_main

    @cli_main
    def main(kind):
        if kind == "project":
            raise DeepSpecError("the draft folder is empty; pass a step_N folder")
        if kind == "os":
            raise PermissionError(13, "Permission denied", "/data/out")
        if kind == "bug":
            raise KeyError("oops")
        return None

    monkeypatch.setattr("sys.argv", ["tool.py"])
    assert main("project") == 2 and capsys.readouterr().err == (
        "tool.py: error: the draft folder is empty; pass a step_N folder\n"
    )
    assert main("os") == 2 and capsys.readouterr().err == "tool.py: error: [Errno 13] Permission denied: '/data/out'\n"
    assert main("fine") == 0
    with pytest.raises(KeyError):
        main("bug")
    monkeypatch.setenv("DEEPSPEC_TRACEBACK", "1")
    with pytest.raises(DeepSpecError):
        main("project")


def test_small_tools_never_write_over_their_inputs(world, tmp_path):
    """compare.py and profile_engine.py refuse an output that is, or lies in, what they read."""
    run = tmp_path / "run_a"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"tasks": {"gsm8k": {"acceptance_length": 2.0}}, "meta": {}}))
    (run / "table.md").write_text("the run's own table\n")
    before = fingerprint([run, world["target"]])
    compare = "scripts/eval/compare.py"
    refused(run_entry(compare, ["--runs", f"a={run}", "--output-dir", run]), "lies inside the input folder")
    refused(
        run_entry(compare, ["--runs", f"a={run}", f"a={tmp_path}", "--output-dir", tmp_path / "cmp"]),
        f"--runs names 'a' twice ({run} and {tmp_path}); give each run its own name",
    )
    refused(
        run_entry(
            "scripts/eval/profile_engine.py",
            ["--target_name_or_path", world["target"], "--output", world["target"] / "config.json"],
        ),
        "lies inside the input folder",
    )
    assert fingerprint([run, world["target"]]) == before
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize(
    "content,needle",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", 'has no "tasks" mapping'),
        (
            '{"tasks": {"gsm8k": {"acceptance_length": "2.1"}}}',
            "tasks.gsm8k.acceptance_length must be a number, got '2.1'",
        ),
        ('{"tasks": {"gsm8k": 3}}', "tasks.gsm8k must be a mapping of metrics, got 3"),
        # these three were a NaN table (exit 0), a TypeError traceback, and task names spelled letter by letter
        ('{"tasks": {"gsm8k": {"acceptance_length": NaN}}}', "tasks.gsm8k.acceptance_length must be a number, got nan"),
        (
            '{"tasks": {"gsm8k": {"acceptance_length": 2.0, "conditional_accept_rate_by_position": "high"}}}',
            "tasks.gsm8k.conditional_accept_rate_by_position must be a list of numbers, got 'high'",
        ),
        (
            '{"tasks": {"gsm8k": {"acceptance_length": 2.0}}, "meta": {"absent_tasks": "mbpp"}}',
            "meta.absent_tasks must be a list of task names, got 'mbpp'",
        ),
    ],
    ids=["not-json", "no-tasks", "string-tau", "task-not-mapping", "nan-tau", "string-rates", "string-absent"],
)
def test_compare_names_the_file_and_field_of_a_malformed_results_json(tmp_path, content, needle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(content)
    before = fingerprint([run])
    refused(run_entry("scripts/eval/compare.py", ["--runs", f"a={run}", "--output-dir", tmp_path / "cmp"]), needle)
    assert (
        str(run / "results.json")
        in run_entry("scripts/eval/compare.py", ["--runs", f"a={run}", "--output-dir", tmp_path / "cmp"]).stderr
    )
    assert fingerprint([run]) == before and not (tmp_path / "cmp").exists()


def test_compare_names_a_results_file_given_for_a_run_and_an_output_under_a_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"tasks": {"gsm8k": {"acceptance_length": 2.0}}}))
    (tmp_path / "notes.txt").write_text("mine\n")
    before = fingerprint([tmp_path])
    compare = "scripts/eval/compare.py"
    refused(
        run_entry(compare, ["--runs", f"a={run / 'results.json'}", "--output-dir", tmp_path / "cmp"]),
        f"{run / 'results.json'} is a file; pass the eval run's folder (the one eval.py wrote results.json in)",
        code=2,
    )
    refused(
        run_entry(compare, ["--runs", f"a={run}", "--output-dir", tmp_path / "notes.txt"]),
        f"cannot be written: {tmp_path / 'notes.txt'} is a file, not a folder; choose another path",
        code=2,
    )
    assert fingerprint([tmp_path]) == before


def _quickstart_folder(base, results: str | None, *, kind: str = "file"):
    """A quickstart output folder whose eval/dspark run holds ``results`` as its results.json."""
    run = base / "eval" / "dspark"
    base.mkdir(parents=True)
    if kind == "run-is-a-file":
        run.parent.mkdir(parents=True)
        run.write_text("not a folder")
    elif kind == "results-is-a-folder":
        (run / "results.json").mkdir(parents=True)
    elif results is not None:
        run.mkdir(parents=True)
        (run / "results.json").write_text(results)
    return base


@pytest.mark.parametrize(
    "results,kind,needle",
    [
        ("{oops", "file", "eval/dspark/results.json is not valid JSON"),  # was a JSONDecodeError traceback
        ('{"tasks": {}}', "file", 'eval/dspark/results.json has no "tasks" mapping'),  # was empty plots, exit 0
        ('{"tasks": {"gsm8k": {"acceptance_length": "2.1"}}}', "file", "acceptance_length must be a number"),
        (
            '{"tasks": {"gsm8k": {"acceptance_length": 2.1}}, "meta": {"absent_tasks": "mbpp"}}',
            "file",
            "meta.absent_tasks must be a list of task names",
        ),
        (None, "file", "no ablation run under"),  # no run at all: was empty plots and table, exit 0
        (None, "run-is-a-file", "no ablation run under"),
        (None, "results-is-a-folder", "no ablation run under"),
    ],
    ids=["not-json", "no-tasks", "string-tau", "string-absent", "no-runs", "run-is-a-file", "results-is-a-folder"],
)
def test_plot_ablations_refuses_what_it_cannot_plot_and_writes_nothing(tmp_path, results, kind, needle):
    out = _quickstart_folder(tmp_path / "q", results, kind=kind)
    before = fingerprint([tmp_path])
    refused(run_entry("scripts/eval/plot_ablations.py", ["--output-dir", out]), needle, code=2)
    assert fingerprint([tmp_path]) == before


def test_plot_ablations_plots_the_runs_it_finds(tmp_path):
    out = _quickstart_folder(tmp_path / "q", json.dumps({"tasks": {"gsm8k": {"acceptance_length": 2.5}}}))
    result = run_entry("scripts/eval/plot_ablations.py", ["--output-dir", out])
    assert result.rc == 0, result.output[-2000:]
    table = (out / "ablations.md").read_text()
    assert "| 5 | 2.500 |" in table and "missing runs (not evaluated): dflash," in table
    assert (out / "depth.png").is_file() and (out / "block_size.png").is_file()
