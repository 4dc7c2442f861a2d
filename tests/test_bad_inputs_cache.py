"""Bad inputs to the cache tools: prepare_target_cache.py, estimate_target_cache_size.py, and train.py opening a
cache. Every case: non-zero exit, no traceback, the message names the problem, the user's files untouched.

Cases that fail before torch is imported run the script in a subprocess (a fraction of a second each); cases
that need the target run the entry point's ``main`` in this process (imports already paid), plus one of each
in a subprocess to prove the whole path.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from badinput import ROOT, Result, fingerprint, refused, run_entry
from tinyrun import RUN_SIZES

PREPARE = "scripts/data/prepare_target_cache.py"
ESTIMATE = "scripts/data/estimate_target_cache_size.py"
CONFIG = str(ROOT / "config/dspark/dspark_tiny.py")
LAYERS = "[-1, 1]"


def _load(script: str):
    spec = importlib.util.spec_from_file_location(f"entry_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(script: str, args) -> Result:
    """The entry point's cli_main-wrapped ``main`` in this process (argparse exits become exit codes)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = _load(script).main([str(a) for a in args])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return Result(rc, out.getvalue(), err.getvalue())


def write_data(path: Path, n: int = 9) -> Path:
    rows = [
        json.dumps(
            {
                "id": f"c{i}",
                "conversations": [
                    {"role": "user", "content": f"def f{i}(x):"},
                    {"role": "assistant", "content": "    return x" + " + x" * (i % 4 + 3)},
                ],
            }
        )
        for i in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One random tiny target, a same-named fine-tune of it, data, and a complete cache."""
    from safetensors.torch import load_file, save_file

    from deepspec.run_config import load_config
    from deepspec.cache.build import build_target_cache
    from deepspec.tiny_target import build_random_tiny_target

    base = tmp_path_factory.mktemp("bad_cache")
    target = build_random_tiny_target(
        output_dir=base / "base" / "Qwen3-tiny",
        seed=0,
        **RUN_SIZES,
    )
    ft = base / "ft" / "Qwen3-tiny"
    shutil.copytree(target, ft)
    weights = load_file(ft / "model.safetensors")
    save_file({k: v * 1.01 for k, v in weights.items()}, ft / "model.safetensors", metadata={"format": "pt"})
    data = write_data(base / "data" / "train.jsonl")
    cfg = load_config(CONFIG, opts=[f"model.target_model_name_or_path={target}", f"model.target_layer_ids={LAYERS}"])
    build_target_cache(
        cfg=cfg,
        train_data_paths=[str(data)],
        output_dir=base / "cache",
        min_loss_tokens=2,
        max_shard_bytes=1 << 20,
        batch_size=8,
        log=lambda _: None,
    )
    return {"base": base, "target": target, "ft": ft, "data": data, "cache": base / "cache"}


def untouched(world, *extra):
    return fingerprint([world["data"], world["cache"], world["target"], world["ft"], *extra])


def prepare_args(world, *more, target=None):
    return [
        "--config",
        CONFIG,
        "--opts",
        f"model.target_model_name_or_path={target or world['target']}",
        f"model.target_layer_ids={LAYERS}",
        *more,
    ]


# -- prepare_target_cache.py: refused before anything is loaded ---------------------------------------
CHEAP_PREPARE = [
    (["--local-batch-size", "0"], "--local-batch-size: must be >= 1, got 0"),
    (["--local-batch-size", "two"], "--local-batch-size: expected an integer, got 'two'"),
    (["--max-shard-bytes", "-5"], "--max-shard-bytes: must be >= 1, got -5"),
    (["--min-loss-tokens", "-1"], "--min-loss-tokens: must be >= 0"),
    (["--nproc", "0"], "--nproc: must be >= 1"),
    (["--num-workers", "-2"], "--num-workers: must be >= 1"),
]


@pytest.mark.parametrize("args,needle", CHEAP_PREPARE, ids=[a[0] + "=" + a[1] for a, _ in CHEAP_PREPARE])
def test_prepare_numeric_options_refused_at_parse_time(world, args, needle):
    before = untouched(world)
    refused(
        run_entry(
            PREPARE,
            prepare_args(world, "--train-data-path", world["data"], "--output-dir", world["base"] / "new", *args),
        ),
        needle,
        code=2,
    )
    assert untouched(world) == before and not (world["base"] / "new").exists()


def test_prepare_missing_config_file(world, tmp_path):
    refused(
        run_entry(
            PREPARE,
            ["--config", tmp_path / "nope.py", "--train-data-path", world["data"], "--output-dir", tmp_path / "out"],
        ),
        "config file not found",
        code=2,
    )
    assert not (tmp_path / "out").exists()


def test_prepare_missing_data_file(world, tmp_path):
    before = untouched(world)
    refused(
        run_entry(
            PREPARE,
            prepare_args(world, "--train-data-path", tmp_path / "missing.jsonl", "--output-dir", tmp_path / "out"),
        ),
        "training data file not found",
        "missing.jsonl",
        code=2,
    )
    assert untouched(world) == before and not (tmp_path / "out").exists()


def test_prepare_data_folder_without_jsonl(world, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(
        run_entry(
            PREPARE, prepare_args(world, "--train-data-path", tmp_path / "empty", "--output-dir", tmp_path / "out")
        ),
        "contains no *.jsonl",
        code=2,
    )


def test_prepare_no_output_folder(world):
    refused(
        run_entry(PREPARE, prepare_args(world, "--train-data-path", world["data"])),
        "no output folder",
        "--output-dir",
        code=2,
    )


@pytest.mark.parametrize("where", ["inside_data_folder", "equals_data_file", "holds_data", "inside_target"])
def test_prepare_cache_folder_apart_from_inputs(world, where):
    data_dir = world["data"].parent
    data_arg, out = {
        "inside_data_folder": (data_dir, data_dir / "cache"),
        "equals_data_file": (world["data"], world["data"]),
        "holds_data": (world["data"], data_dir),
        "inside_target": (world["data"], world["target"] / "cache"),
    }[where]
    before = untouched(world)
    result = run_entry(PREPARE, prepare_args(world, "--train-data-path", data_arg, "--output-dir", out, "--overwrite"))
    refused(result, "cache output", code=2)
    assert untouched(world) == before and not (data_dir / "cache").exists() and not (world["target"] / "cache").exists()


def test_prepare_output_is_a_file(world, tmp_path):
    (tmp_path / "a_file").write_text("mine")
    refused(
        run_entry(
            PREPARE, prepare_args(world, "--train-data-path", world["data"], "--output-dir", tmp_path / "a_file")
        ),
        "is a file",
        code=2,
    )
    assert (tmp_path / "a_file").read_text() == "mine"


def test_prepare_overwrite_refuses_a_folder_of_user_files(world, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "paper.tex").write_text("months of work")
    before = fingerprint([tmp_path / "results"])
    refused(
        run_entry(
            PREPARE,
            prepare_args(
                world, "--train-data-path", world["data"], "--output-dir", tmp_path / "results", "--overwrite"
            ),
        ),
        "not part of a target cache",
        "paper.tex",
        code=2,
    )
    assert fingerprint([tmp_path / "results"]) == before


# -- prepare_target_cache.py: refused once the target is known -------------------------------------------
def test_prepare_complete_cache_of_a_same_named_other_target_subprocess(world):
    before = untouched(world)
    refused(
        run_entry(
            PREPARE,
            prepare_args(world, "--train-data-path", world["data"], "--output-dir", world["cache"], target=world["ft"]),
        ),
        "differs in the target (config or weights)",
        "--overwrite",
        "--output-dir",
        code=2,
    )
    assert untouched(world) == before


@pytest.mark.parametrize(
    "change,needle",
    [
        (["--opts", "model.target_layer_ids=[0, 1]"], "layer_ids=[-1, 1], this run has [0, 1]"),
        (["--opts", "data.max_length=128"], "data.max_length=512, this run has 128"),
        (["--min-loss-tokens", "3"], "min_loss_tokens=2, this run has 3"),
        (
            ["--opts", "model.target_model_name_or_path=/no/such/target"],
            "target folder '/no/such/target' does not exist",
        ),
    ],
    ids=["layers", "max_length", "min_loss_tokens", "missing_target"],
)
def test_prepare_complete_cache_of_another_build(world, change, needle):
    before = untouched(world)
    result = run_main(
        PREPARE,
        prepare_args(
            world, "--train-data-path", world["data"], "--output-dir", world["cache"], "--min-loss-tokens", "2", *change
        ),
    )
    refused(result, needle, code=2)
    assert untouched(world) == before


def test_prepare_complete_cache_with_other_data(world, tmp_path):
    other = write_data(tmp_path / "other.jsonl", n=4)
    before = untouched(world, other)
    refused(
        run_main(
            PREPARE,
            prepare_args(world, "--train-data-path", other, "--output-dir", world["cache"], "--min-loss-tokens", "2"),
        ),
        "differs in the training data",
        "other.jsonl",
        "--overwrite",
        code=2,
    )
    assert untouched(world, other) == before


# -- estimate_target_cache_size.py -------------------------------------------------------------------------
ESTIMATES = [
    (
        ["--num-samples", "0", "--avg-tokens", "10", "--num-layers", "2", "--hidden-size", "8"],
        "--num-samples: must be >= 1",
    ),
    (
        ["--num-samples", "5", "--avg-tokens", "-3", "--num-layers", "2", "--hidden-size", "8"],
        "--avg-tokens: must be > 0",
    ),
    (
        ["--num-samples", "5", "--avg-tokens", "nan", "--num-layers", "2", "--hidden-size", "8"],
        "--avg-tokens: must be > 0",
    ),
    (
        ["--num-samples", "5", "--avg-tokens", "10", "--num-layers", "2", "--hidden-size", "0"],
        "--hidden-size: must be >= 1",
    ),
    (
        ["--num-samples", "5", "--avg-tokens", "10", "--num-layers", "-1", "--hidden-size", "8"],
        "--num-layers: must be >= 1",
    ),
    (
        ["--num-samples", "5", "--avg-tokens", "10", "--target-layer-ids", "1,x", "--hidden-size", "8"],
        "--target-layer-ids: expected comma-separated integers",
    ),
    (
        [
            "--num-samples",
            "5",
            "--avg-tokens",
            "10",
            "--num-layers",
            "3",
            "--target-layer-ids",
            "1,2",
            "--hidden-size",
            "8",
        ],
        "disagrees with 2 --target-layer-ids",
    ),
    (["--num-samples", "5", "--avg-tokens", "10", "--hidden-size", "8"], "pass --num-layers or --target-layer-ids"),
    (
        ["--num-samples", "5", "--avg-tokens", "10", "--num-layers", "2", "--target-model", "/no/such/model"],
        "/no/such/model/config.json not found",
    ),
    (["--num-layers", "2", "--hidden-size", "8"], "pass --num-samples and --avg-tokens"),
    (
        ["--train-data-path", "/no/such/data.jsonl", "--num-layers", "2", "--hidden-size", "8"],
        "training data file not found",
    ),
    (
        ["--num-samples", "5", "--max-length", "0", "--avg-tokens", "10", "--num-layers", "2", "--hidden-size", "8"],
        "--max-length: must be >= 1",
    ),
]


@pytest.mark.parametrize("args,needle", ESTIMATES, ids=[f"estimate{i}" for i in range(len(ESTIMATES))])
def test_estimate_bad_inputs(args, needle):
    refused(run_entry(ESTIMATE, args), needle, code=2)


def test_estimate_bad_config_and_empty_data(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{broken")
    before = fingerprint([tmp_path])
    refused(
        run_entry(
            ESTIMATE,
            ["--num-samples", "5", "--avg-tokens", "10", "--num-layers", "2", "--target-model", tmp_path / "model"],
        ),
        "not valid JSON",
        "--hidden-size",
        code=2,
    )
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    refused(
        run_entry(ESTIMATE, ["--train-data-path", tmp_path / "bad.jsonl", "--num-layers", "2", "--hidden-size", "8"]),
        "no valid conversations",
        code=2,
    )
    assert fingerprint([tmp_path / "model"]) == {k: v for k, v in before.items() if "model" in k}


# -- train.py opening a cache ----------------------------------------------------------------------------
def train_args(world, out, *more, target=None, cache=None):
    return [
        "--config",
        CONFIG,
        "--target-cache-dir",
        cache or world["cache"],
        "--device",
        "cpu",
        "--no-progress",
        "--opts",
        f"model.target_model_name_or_path={target or world['target']}",
        f"model.target_layer_ids={LAYERS}",
        "model.num_draft_layers=1",
        "model.num_anchors=4",
        "train.local_batch_size=2",
        "train.global_batch_size=4",
        "train.max_train_steps=4",
        f"logging.checkpoint_dir={out}",
        f"logging.tensorboard_dir={out}/tb",
        *more,
    ]


def test_train_cache_of_a_same_named_other_target_subprocess(world, tmp_path):
    before = untouched(world)
    refused(
        run_entry("train.py", train_args(world, tmp_path / "run", target=world["ft"])),
        "differs in the target (config or weights)",
        "--target-cache-dir",
        code=2,
    )
    assert untouched(world) == before and not list(tmp_path.rglob("step_*"))


def test_train_cache_built_for_another_max_length(world, tmp_path):
    before = untouched(world)
    refused(
        run_main("train.py", train_args(world, tmp_path / "run", "data.max_length=1024")),
        "data.max_length=512, this run has 1024",
        code=2,
    )
    assert untouched(world) == before


def test_train_incomplete_cache(world, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(world["cache"], partial)
    (partial / "manifest.json").unlink()
    before = fingerprint([partial])
    refused(
        run_main("train.py", train_args(world, tmp_path / "run", cache=partial)),
        "incomplete cache",
        "re-run the build",
        code=2,
    )
    assert fingerprint([partial]) == before


def test_train_corrupted_shard_stops_naming_the_shard(world, tmp_path):
    from deepspec.cache.format import RECORD_DTYPE

    bad = tmp_path / "bad"
    shutil.copytree(world["cache"], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    records = np.frombuffer((bad / "index.bin").read_bytes(), dtype=RECORD_DTYPE)
    for rec in records:  # one flipped bit in every sample's ids: whichever is read first must stop the run
        shard = bad / manifest["shards"][int(rec["shard"])]["file"]
        with open(shard, "r+b") as fh:
            fh.seek(int(rec["offset"]))
            byte = fh.read(1)
            fh.seek(int(rec["offset"]))
            fh.write(bytes([byte[0] ^ 1]))
    before = fingerprint([bad])
    result = run_main("train.py", train_args(world, tmp_path / "run", cache=bad))
    refused(result, "fails its checksum", ".shard000000.bin", "sample ", code=2)
    assert fingerprint([bad]) == before and not list((tmp_path / "run").glob("step_*"))


def test_estimate_checks_layer_ids_against_the_target_and_a_missing_tokenizer(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"hidden_size": 64, "num_hidden_layers": 4}')
    sizes = ["--num-samples", "5", "--avg-tokens", "10", "--target-model", tmp_path / "model"]
    refused(
        run_entry(ESTIMATE, sizes + ["--target-layer-ids", "1,2,3"]),
        "--target-layer-ids [1, 2, 3]: the target has 4 layers (ids -1..3)",
        code=2,
    )
    assert run_entry(ESTIMATE, sizes + ["--target-layer-ids", "0,1,2", "--target-params", "1e6"]).rc == 0
    (tmp_path / "d.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    refused(
        run_entry(
            ESTIMATE,
            ["--train-data-path", tmp_path / "d.jsonl", "--num-layers", "2", "--hidden-size", "8"]
            + ["--tokenizer", tmp_path / "no_tokenizer"],
        ),
        f"--tokenizer: no such folder: {tmp_path / 'no_tokenizer'}",
        code=2,
    )


def test_a_shard_write_past_the_file_size_limit_is_one_line_and_a_rerun_continues(world, tmp_path):
    """ulimit -f: the writer's EFBIG ends the build in one line; the uncommitted shard is never taken for part of the
    cache (no manifest, a temp name), and the same command without the limit keeps the shards already committed
    (byte for byte) and completes the cache."""
    import subprocess
    import sys

    from deepspec.cache.reader import TargetCache

    rows = []  # even samples (rank 0) are too large for the limit, odd ones (rank 1) fit
    for i in range(8):
        answer = "    return x" + " + x" * (60 if i % 2 == 0 else 4)
        turns = [{"role": "user", "content": f"def f{i}(x):"}, {"role": "assistant", "content": answer}]
        rows.append(json.dumps({"id": f"c{i}", "conversations": turns}))
    data = tmp_path / "mixed_lengths.jsonl"
    data.write_text("\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    more = ["--train-data-path", data, "--output-dir", cache, "--max-shard-bytes", "1", "--nproc", "2"]
    args = [str(a) for a in prepare_args(world, *more)]
    cmd = " ".join(f"'{a}'" for a in [sys.executable, str(ROOT / PREPARE), *args])
    # No .pyc written under the limit: a truncated one would break every later import of that module.
    env = {"TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(["bash", "-c", f"ulimit -f 24; exec {cmd}"], capture_output=True, text=True, env=env)
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    refused(result, f"prepare_target_cache.py: error: writing {cache} failed ([Errno 27] File too large)", code=2)
    assert "file-size limit (ulimit -f)" in result.stderr and "resumes after the last committed shard" in result.stderr
    assert not (cache / "manifest.json").exists() and not list(cache.glob("rank00000.shard*"))
    with pytest.raises(Exception, match="no target cache|incomplete|manifest"):
        TargetCache(cache)
    kept = {p.name: p.read_bytes() for p in cache.glob("rank00001.shard*")}
    assert len(kept) == 8  # rank 1's four samples, one shard (.bin + .idx) each, committed before the failure
    again = run_entry(PREPARE, args)
    assert again.rc == 0, again.output[-2000:]
    assert {p.name: p.read_bytes() for p in cache.glob("rank00001.shard*")} == kept  # continued, not redone
    assert not list(cache.glob(".*.tmp"))
    built = TargetCache(cache)
    assert len(built) == 8 and all(int(built[i]["input_ids"].numel()) > 0 for i in range(8))


def test_estimate_names_an_empty_file_a_tokenizer_folder_without_one_and_takes_negative_layer_ids(world, tmp_path):
    """Before: 'see the summary above' with no summary; 0.0 tokens per sample from a draft folder taken for a
    tokenizer, exit 0; and '--target-layer-ids -1,1' read as an unknown option."""
    (tmp_path / "empty.jsonl").write_text("\n")
    sizes = ["--num-layers", "2", "--hidden-size", "8"]
    refused(
        run_entry(ESTIMATE, ["--train-data-path", tmp_path / "empty.jsonl", *sizes]),
        f"--train-data-path {tmp_path / 'empty.jsonl'} holds no conversation (empty, or blank lines only)",
        code=2,
    )
    no_tokenizer = tmp_path / "draft"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text('{"architectures": ["Qwen3DSparkModel"]}')
    refused(
        run_entry(ESTIMATE, ["--train-data-path", world["data"], *sizes, "--tokenizer", no_tokenizer]),
        f"--tokenizer {no_tokenizer} holds no tokenizer (tokenizer.json, tokenizer_config.json",
        code=2,
    )
    given = ["--num-samples", "10", "--avg-tokens", "10", "--target", world["target"]]
    refused(
        run_entry(ESTIMATE, [*given, "--target-layer-ids", "-9,1"]),
        "--target-layer-ids: -1 (embedding output) is the smallest id, got [-9, 1]",
        code=2,
    )
    ok = run_entry(ESTIMATE, [*given, "--target-layer-ids", "-1,1", "--target-params", "1e6"])
    assert ok.rc == 0 and "2 x hidden 64 (+ last hidden state)" in ok.stdout, ok.output[-2000:]
