"""Bad inputs to the data entry points: generate_train_data.py, download_and_split.py, prepare_data.sh.

Each refusal case runs the entry point as a user would and asserts a non-zero exit, no traceback, a
message naming the problem, and every user file byte-for-byte untouched. Almost all of them stop
before a model loads; the few that need one use the random tiny target (built once, in seconds).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from badinput import fingerprint, refused, run_entry

GEN = "scripts/data/generate_train_data.py"
SPLIT = "scripts/data/download_and_split.py"
PREPARE = "scripts/data/prepare_data.sh"


def _conv(i, answer="ORIGINAL"):
    return {
        "id": f"c{i}",
        "conversations": [{"role": "user", "content": f"def f{i}(x):"}, {"role": "assistant", "content": answer}],
    }


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket closes


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    from deepspec.tiny_target import build_random_tiny_target

    return build_random_tiny_target(output_dir=tmp_path_factory.mktemp("bad_data") / "tiny_target", seed=0)


@pytest.fixture
def fake_model(tmp_path):
    """A folder that passes as a model until something loads it: refusals happen before that."""
    d = tmp_path / "model_b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 8}))
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    return d


# ----------------------------------------------------------------------------- generate_train_data.py


def _gen_setup(tmp_path, fake_model):
    """The user's files: a prompt file, an output of an earlier run by another model, a notes file."""
    data = tmp_path / "data"
    prompts = _write_jsonl(data / "prompts.jsonl", [_conv(i) for i in range(3)])
    other = {"model": "Qwen/Qwen3-4B", "fingerprint": "name:Qwen/Qwen3-4B"}
    done = _write_jsonl(
        tmp_path / "done" / "regen.jsonl", [dict(_conv(0, "OLD ANSWER"), finish_reasons=["stop"], generated_by=other)]
    )
    return dict(data=data, prompts=prompts, done=done, model=fake_model, tmp=tmp_path)


def _io(f, inp="{prompts}", out="{tmp}/out/regen.jsonl"):
    return ["--input-file-path", inp.format(**f), "--output-file-path", out.format(**f)]


def _hf(f):
    return ["--backend", "hf", "--model", str(f["model"])]


# (name, argv builder, needles): each must refuse before writing anything.
GEN_CASES = [
    ("missing-input", lambda f: _hf(f) + _io(f, inp="{tmp}/nope.jsonl"), ["input file not found"]),
    ("input-folder-without-jsonl", lambda f: _hf(f) + _io(f, inp="{tmp}/empty_dir"), ["no *.jsonl"]),
    ("output-is-input", lambda f: _hf(f) + _io(f, out="{prompts}"), ["is the input"]),
    # Once the error file of out.jsonl was opened before the input was read, then deleted as empty.
    (
        "error-file-is-input",
        lambda f: _hf(f) + _io(f, inp="{data}/out_error.jsonl", out="{data}/out.jsonl"),
        ["error file path", "out_error.jsonl", "is the input"],
    ),
    (
        "output-inside-input-folder",
        lambda f: _hf(f) + _io(f, inp="{data}", out="{data}/regen.jsonl"),
        ["inside the input folder"],
    ),
    ("output-inside-model-folder", lambda f: _hf(f) + _io(f, out="{model}/regen.jsonl"), ["inside the input folder"]),
    ("output-is-a-folder", lambda f: _hf(f) + _io(f, out="{tmp}/done"), ["is a folder"]),
    ("output-parent-is-a-file", lambda f: _hf(f) + _io(f, out="{prompts}/x.jsonl"), ["is a file, not a folder"]),
    ("num-samples-0", lambda f: _hf(f) + _io(f) + ["--num-samples", "0"], ["--num-samples", ">= 1"]),
    ("num-samples-negative", lambda f: _hf(f) + _io(f) + ["--num-samples", "-3"], ["--num-samples"]),
    ("batch-size-0", lambda f: _hf(f) + _io(f) + ["--batch-size", "0"], ["--batch-size", ">= 1"]),
    ("max-tokens-0", lambda f: _hf(f) + _io(f) + ["--max-tokens", "0"], ["--max-tokens"]),
    ("max-tokens-not-a-number", lambda f: _hf(f) + _io(f) + ["--max-tokens", "lots"], ["--max-tokens"]),
    ("temperature-negative", lambda f: _hf(f) + _io(f) + ["--temperature", "-1"], ["--temperature"]),
    ("temperature-nan", lambda f: _hf(f) + _io(f) + ["--temperature", "nan"], ["--temperature"]),
    ("top-p-0", lambda f: _hf(f) + _io(f) + ["--top-p", "0"], ["--top-p", "(0, 1]"]),
    ("top-p-above-1", lambda f: _hf(f) + _io(f) + ["--top-p", "1.5"], ["--top-p"]),
    ("min-p-above-1", lambda f: _hf(f) + _io(f) + ["--min-p", "2"], ["--min-p"]),
    ("top-k-below-minus-1", lambda f: _hf(f) + _io(f) + ["--top-k", "-5"], ["--top-k"]),
    ("seed-negative", lambda f: _hf(f) + _io(f) + ["--seed", "-1"], ["--seed"]),
    ("concurrency-0", lambda f: _hf(f) + _io(f) + ["--concurrency", "0"], ["--concurrency"]),
    ("request-timeout-0", lambda f: _hf(f) + _io(f) + ["--request-timeout", "0"], ["--request-timeout"]),
    ("max-retries-negative", lambda f: _hf(f) + _io(f) + ["--max-retries", "-1"], ["--max-retries"]),
    (
        "gpu-memory-utilization-0",
        lambda f: _hf(f) + _io(f) + ["--gpu-memory-utilization", "0"],
        ["--gpu-memory-utilization"],
    ),
    ("tensor-parallel-0", lambda f: _hf(f) + _io(f) + ["--tensor-parallel-size", "0"], ["--tensor-parallel-size"]),
    ("data-parallel-0", lambda f: _hf(f) + _io(f) + ["--data-parallel-size", "0"], ["--data-parallel-size"]),
    ("dtype-unknown", lambda f: _hf(f) + _io(f) + ["--dtype", "float8"], ["--dtype"]),
    (
        "resume-and-overwrite",
        lambda f: _hf(f) + _io(f, out="{done}") + ["--resume", "--overwrite"],
        ["--overwrite", "not allowed with"],
    ),
    ("existing-output-without-resume", lambda f: _hf(f) + _io(f, out="{done}"), ["already has rows", "--resume"]),
    (
        "resume-another-model",
        lambda f: _hf(f) + _io(f, out="{done}") + ["--resume"],
        ["written by Qwen/Qwen3-4B", "model_b", "--overwrite", "new --output-file-path"],
    ),
    (
        "missing-model-folder",
        lambda f: ["--backend", "hf", "--model", str(f["tmp"] / "models" / "nope")] + _io(f),
        ["no such model folder"],
    ),
    (
        "model-folder-without-config",
        lambda f: ["--backend", "hf", "--model", str(f["tmp"] / "empty_dir")] + _io(f),
        ["no config.json"],
    ),
    ("hf-without-model", lambda f: ["--backend", "hf"] + _io(f), ["--model is required"]),
    ("openai-without-server", lambda f: ["--backend", "openai"] + _io(f), ["--server-address"]),
    (
        "server-address-without-port",
        lambda f: ["--backend", "openai", "--server-address", "localhost"] + _io(f),
        ["HOST:PORT"],
    ),
    (
        "server-address-ftp",
        lambda f: ["--backend", "openai", "--server-address", "ftp://127.0.0.1:21"] + _io(f),
        ["http://"],
    ),
    (
        "server-not-running",
        lambda f: (
            ["--backend", "openai", "--server-address", f"127.0.0.1:{_dead_port()}", "--max-retries", "0"] + _io(f)
        ),
        ["no server answered", "launch_vllm_server"],
    ),
    (
        "api-key-env-unset",
        lambda f: (
            ["--backend", "openai", "--server-address", "127.0.0.1:9", "--api-key-env", "DEEPSPEC_TEST_NO_SUCH_KEY"]
            + _io(f)
        ),
        ["not set"],
    ),
    (
        "server-address-with-hf",
        lambda f: _hf(f) + ["--server-address", "127.0.0.1:8000"] + _io(f),
        ["--backend openai"],
    ),
    (
        "error-path-holds-a-user-file",
        lambda f: _hf(f) + _io(f, out="{tmp}/notes/regen.jsonl"),
        ["regen_error.jsonl", "not a failure list"],
    ),
]


@pytest.mark.parametrize("name,argv,needles", GEN_CASES, ids=[c[0] for c in GEN_CASES])
def test_generate_refuses(name, argv, needles, tmp_path, fake_model):
    f = _gen_setup(tmp_path, fake_model)
    (tmp_path / "empty_dir").mkdir()
    _write_jsonl(f["data"] / "out_error.jsonl", [_conv(9)])  # the user's data, named like our error file
    _write_jsonl(tmp_path / "notes" / "regen_error.jsonl", ["my own notes, not JSON"])
    before = fingerprint([tmp_path])
    result = run_entry(
        GEN,
        argv(f),
        cwd=tmp_path,
        timeout=60,
        env={"DEEPSPEC_TEST_NO_SUCH_KEY": "", "OPENAI_API_KEY": "sk-must-not-leak"},
    )
    refused(result, *needles)
    assert fingerprint([tmp_path]) == before  # nothing written, nothing deleted


def test_input_folder_holding_the_output_ends_at_once(tmp_path, fake_model):
    # Once: the tool read its own output and error files back, each bad line writing another (369 MB in 60 s).
    data = _write_jsonl(tmp_path / "data" / "bad.jsonl", ["{not json"] * 50).parent
    before = fingerprint([data])
    result = run_entry(
        GEN,
        [
            "--backend",
            "hf",
            "--model",
            str(fake_model),
            "--input-file-path",
            str(data),
            "--output-file-path",
            str(data / "regen.jsonl"),
            "--resume",
        ],
        timeout=30,
    )
    refused(result, "inside the input folder")
    assert fingerprint([data]) == before


# ----------------------------------------------------------------------------- fixes that need a running backend


class _Recorder:
    """A loopback OpenAI-compatible server that records each request's Authorization header."""

    def __init__(self, *, on_post=None):
        self.auth: list = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, obj):
                body = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                outer.auth.append(self.headers.get("Authorization"))
                self._send({"data": [{"id": "served-model"}]})

            def do_POST(self):
                outer.auth.append(self.headers.get("Authorization"))
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if on_post is not None:
                    on_post()
                self._send(
                    {
                        "choices": [
                            {
                                "message": {"role": "assistant", "content": "A:" + req["messages"][-1]["content"]},
                                "finish_reason": "stop",
                            }
                        ]
                    }
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_env_key_never_goes_to_a_server_not_given_one(tmp_path):
    server = _Recorder()
    try:
        prompts = _write_jsonl(tmp_path / "p.jsonl", [_conv(i) for i in range(2)])
        out = tmp_path / "o.jsonl"
        base = [
            "--backend",
            "openai",
            "--server-address",
            server.address,
            "--input-file-path",
            str(prompts),
            "--no-progress",
        ]
        env = {"OPENAI_API_KEY": "sk-secret", "MY_SERVER_KEY": "local-key"}
        r = run_entry(GEN, base + ["--output-file-path", out], env=env, timeout=60)
        assert r.rc == 0, r.output[-2000:]
        assert server.auth and all(a is None for a in server.auth)  # $OPENAI_API_KEY stayed here
        assert {row["generated_by"]["model"] for row in _rows(out)} == {"served-model"}
        server.auth.clear()
        r = run_entry(
            GEN,
            base + ["--output-file-path", tmp_path / "o2.jsonl", "--api-key-env", "MY_SERVER_KEY"],
            env=env,
            timeout=60,
        )
        assert r.rc == 0, r.output[-2000:]
        assert server.auth and set(server.auth) == {"Bearer local-key"}  # the key given for it, only that
    finally:
        server.close()


def test_key_only_for_the_official_api(monkeypatch):
    from deepspec.data.regenerate.openai_backend import key_for

    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert key_for("https://api.openai.com/v1/chat/completions", None) == "sk-x"
    assert key_for("http://api.openai.com/v1/models", None) is None  # not over plain http
    assert key_for("https://api.openai.com.evil.example/v1/models", None) is None
    assert key_for("http://127.0.0.1:8000/v1/models", None) is None
    assert key_for("http://127.0.0.1:8000/v1/models", "given") == "given"


def test_folder_input_is_listed_before_writing(tmp_path):
    # A file that appears in the input folder mid-run (like an output would) is not read.
    data = _write_jsonl(tmp_path / "data" / "a.jsonl", [_conv(i) for i in range(3)]).parent
    late = data / "b.jsonl"
    server = _Recorder(on_post=lambda: late.exists() or _write_jsonl(late, [_conv(i) for i in range(10, 20)]))
    try:
        out = tmp_path / "out" / "regen.jsonl"
        r = run_entry(
            GEN,
            [
                "--backend",
                "openai",
                "--server-address",
                server.address,
                "--input-file-path",
                data,
                "--output-file-path",
                out,
                "--concurrency",
                "1",
                "--no-progress",
            ],
            timeout=60,
        )
        assert r.rc == 0, r.output[-2000:]
        assert late.exists() and sorted(row["id"] for row in _rows(out)) == ["c0", "c1", "c2"]
    finally:
        server.close()


def test_rows_record_the_model_and_resume_all_done_exits_0(tiny_target, tmp_path):
    prompts = _write_jsonl(tmp_path / "p.jsonl", ['{"broken', _conv(0), _conv(1)])
    out = tmp_path / "regen.jsonl"
    argv = [
        "--backend",
        "hf",
        "--model",
        str(tiny_target),
        "--input-file-path",
        prompts,
        "--output-file-path",
        out,
        "--max-tokens",
        "3",
        "--temperature",
        "0",
        "--no-progress",
    ]
    r = run_entry(GEN, argv, timeout=300)
    assert r.rc == 0, r.output[-3000:]
    rows = _rows(out)
    assert [row["id"] for row in rows] == ["c0", "c1"]
    from deepspec.data.regenerate import model_identity

    assert all(row["generated_by"] == model_identity(str(tiny_target)).record() for row in rows)
    assert rows[0]["generated_by"]["fingerprint"].startswith("dstf1:")
    before = fingerprint([out])
    r = run_entry(GEN, argv + ["--resume"], timeout=300)
    assert r.rc == 0, r.output[-3000:]
    assert f"nothing to do: all 2 rows already in {out}" in r.stdout
    assert fingerprint([out]) == before
    # The same model under another spelling is the same model; a copy with another config is not.
    link = tmp_path / "same_target"
    link.symlink_to(tiny_target)
    assert run_entry(GEN, argv[:3] + [str(link)] + argv[4:] + ["--resume"], timeout=300).rc == 0
    other = tmp_path / "other_target"
    shutil.copytree(tiny_target, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["rope_theta"] = cfg.get("rope_theta", 10000) * 2
    (other / "config.json").write_text(json.dumps(cfg))
    refused(
        run_entry(GEN, argv[:3] + [str(other)] + argv[4:] + ["--resume"], timeout=300),
        f"written by {tiny_target}",
        "other_target",
        "--overwrite",
    )
    assert fingerprint([out]) == before


def test_identity_of_a_folder(tmp_path, fake_model):
    from deepspec.data.regenerate import model_identity

    a = model_identity(str(fake_model))
    assert a.fingerprint == model_identity(str(fake_model) + "/").fingerprint
    moved = tmp_path / "elsewhere" / "model_b"
    shutil.copytree(fake_model, moved)
    assert model_identity(str(moved)).fingerprint == a.fingerprint  # the folder name is not the identity
    (moved / "model.safetensors").write_bytes(b"\1" * 64)  # same names and sizes, other weights
    assert model_identity(str(moved)).fingerprint != a.fingerprint
    assert model_identity("Qwen/Qwen3-4B").fingerprint == "name:Qwen/Qwen3-4B"


# ----------------------------------------------------------------------------- download_and_split.py


def _split_setup(tmp_path):
    src = _write_jsonl(
        tmp_path / "src" / "chats.jsonl",
        [
            {"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(6)
        ],
    )
    _write_jsonl(tmp_path / "src" / "bad.json", ['[{"broken'])  # not read by the cases that name chats.jsonl
    _write_jsonl(tmp_path / "allbad" / "x.jsonl", ["{nope", '{"id": 1}'])
    (tmp_path / "nodata").mkdir()
    (tmp_path / "nodata" / "readme.txt").write_text("no data here")
    (tmp_path / "broken.parquet").write_bytes(b"this is not parquet")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "outdir").mkdir()
    return dict(src=src, tmp=tmp_path)


def _split_io(train="{tmp}/out/train.jsonl", test_dir="{tmp}/out", name="heldout"):
    return lambda f: [
        "--train-output-path",
        train.format(**f),
        "--test-output-dir",
        test_dir.format(**f),
        "--test-output-name",
        name,
        "--no-progress",
    ]


def _src(path="{src}"):
    return lambda f: ["--dataset-name", path.format(**f)]


SPLIT_CASES = [
    ("missing-local-file", _src("{tmp}/nope.jsonl"), _split_io(), [], ["not found"]),
    ("missing-nested-path", _src("data/sets/nope"), _split_io(), [], ["not found"]),
    ("train-output-is-input", _src(), _split_io(train="{src}"), [], ["is the input"]),
    ("test-output-is-input", _src(), _split_io(test_dir="{tmp}/src", name="chats"), [], ["is the input"]),
    (
        "output-inside-input-folder",
        _src("{tmp}/src"),
        _split_io(train="{tmp}/src/train.jsonl"),
        [],
        ["inside the input folder"],
    ),
    ("train-and-test-same-file", _src(), _split_io(train="{tmp}/out/heldout.jsonl"), [], ["both"]),
    ("train-output-is-a-folder", _src(), _split_io(train="{tmp}/outdir"), [], ["is a folder"]),
    ("test-dir-is-a-file", _src(), _split_io(test_dir="{tmp}/notes.txt"), [], ["is a file, not a folder"]),
    ("sample-size-0", _src(), _split_io(), ["--sample-size", "0"], ["--sample-size"]),
    ("sample-size-text", _src(), _split_io(), ["--sample-size", "many"], ["--sample-size"]),
    ("test-size-negative", _src(), _split_io(), ["--test-size", "-0.1"], ["--test-size"]),
    ("test-size-nan", _src(), _split_io(), ["--test-size", "nan"], ["--test-size"]),
    ("test-size-fractional-count", _src(), _split_io(), ["--test-size", "2.5"], ["--test-size", "whole"]),
    ("seed-text", _src(), _split_io(), ["--seed", "abc"], ["--seed"]),
    ("unsupported-suffix", _src("{tmp}/notes.txt"), _split_io(), [], ["unsupported file type"]),
    ("folder-without-data", _src("{tmp}/nodata"), _split_io(), [], ["holds no"]),
    ("corrupt-parquet", _src("{tmp}/broken.parquet"), _split_io(), [], ["cannot read", "broken.parquet"]),
    ("broken-json-array", _src("{tmp}/src/bad.json"), _split_io(), [], ["not valid JSON"]),
    ("all-rows-bad", _src("{tmp}/allbad"), _split_io(), [], ["no conversations left"]),
    ("strict-bad-row", _src("{tmp}/allbad"), _split_io(), ["--strict"], ["--strict"]),
    ("everything-held-out", _src(), _split_io(), ["--test-size", "6"], ["no conversations left"]),
]


@pytest.mark.parametrize("name,src,io,extra,needles", SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_download_and_split_refuses(name, src, io, extra, needles, tmp_path):
    f = _split_setup(tmp_path)
    before = fingerprint([tmp_path])
    result = run_entry(SPLIT, src(f) + io(f) + extra, cwd=tmp_path, timeout=120, env={"HF_HUB_OFFLINE": "1"})
    refused(result, *needles)
    assert fingerprint([tmp_path]) == before


# ----------------------------------------------------------------------------- prepare_data.sh


def _prepare_env(tmp_path, model, **extra):
    return {
        "PYTHON": sys.executable,
        "DEEPSPEC_VLLM_PYTHON": str(tmp_path / "no_vllm_python"),
        "MODEL": str(model),
        "DATA_DIR": str(tmp_path / "data"),
        "CACHE_DIR": str(tmp_path / "cache"),
        "CUDA_VISIBLE_DEVICES": "",
        **extra,
    }


def test_prepare_data_refuses_a_changed_model(tmp_path, fake_model):
    # Step 1 is skipped (its outputs exist); step 2 resumes a file another model wrote and must refuse.
    data = tmp_path / "data"
    _write_jsonl(data / "train.jsonl", [_conv(i) for i in range(3)])
    _write_jsonl(data / "heldout.jsonl", [{"id": "h", "turns": ["q"]}])
    _write_jsonl(
        data / "train_regen.jsonl",
        [
            dict(
                _conv(0, "OLD"),
                finish_reasons=["stop"],
                generated_by={"model": "Qwen/Qwen3-4B", "fingerprint": "name:Qwen/Qwen3-4B"},
            )
        ],
    )
    before = fingerprint([data])
    result = run_entry(PREPARE, [], env=_prepare_env(tmp_path, fake_model), timeout=120)
    refused(result, "written by Qwen/Qwen3-4B", "train_data_path=<new file>", "overwrite=1")
    assert fingerprint([data]) == before
    assert not (tmp_path / "cache").exists()


def test_prepare_data_refuses_a_bad_overwrite_flag(tmp_path, fake_model):
    result = run_entry(PREPARE, [], env=_prepare_env(tmp_path, fake_model, OVERWRITE="yes"), timeout=60)
    refused(result, "OVERWRITE must be 0 or 1")
    assert not (tmp_path / "data").exists()


def test_case_names_are_unique():
    assert len({c[0] for c in GEN_CASES}) == len(GEN_CASES) and len({c[0] for c in SPLIT_CASES}) == len(SPLIT_CASES)
