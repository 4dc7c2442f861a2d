"""Answer regeneration (deepspec.data.regenerate, scripts/data/generate_train_data.py).

The hf backend and the HTTP client logic run everywhere in seconds. The tests marked
``vllm`` run real vLLM (CPU build) from the .venv-vllm environment: once in-process and
once as a loopback server started by scripts/data/launch_vllm_server.sh. They skip
when that environment is missing, and fail instead when DEEPSPEC_REQUIRE_VLLM=1
(scripts/test.sh sets it after installing the environment).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deepspec.data.regenerate import (
    OpenAIBackend,
    RegenerateOptions,
    SamplingSettings,
    error_path_for,
    regenerate,
)
from deepspec.data.regenerate.openai_backend import base_url as _base_url
from vllm_env import INSTALL_HINT, skip_or_fail, vllm_interpreter

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "data" / "generate_train_data.py"
LAUNCH = ROOT / "scripts" / "data" / "launch_vllm_server.sh"
MAX_TOKENS = 12

LONG_PROMPT = " ".join(str(i) for i in range(3000))  # far beyond the tiny target's 4096 positions

CONVERSATIONS = [
    {
        "id": "single",
        "conversations": [{"role": "user", "content": "def add(a, b):"}, {"role": "assistant", "content": "ORIGINAL"}],
    },
    {
        "id": "multi",
        "conversations": [
            {"role": "system", "content": "You write Python."},
            {"role": "user", "content": "import os"},
            {"role": "assistant", "content": "ORIGINAL"},
            {"role": "user", "content": "class Config:"},
            {"role": "assistant", "content": "ORIGINAL"},
        ],
    },
    {"id": "prompt-only", "conversations": [{"role": "user", "content": "for i in range(10):"}]},
    {
        "id": "sharegpt",
        "conversations": [{"from": "human", "value": "while True:"}, {"from": "gpt", "value": "ORIGINAL"}],
    },
    '{"id": "broken", "conversations": [',
    {"id": "too-long", "conversations": [{"role": "user", "content": LONG_PROMPT}]},
]
GOOD_IDS = ["single", "multi", "prompt-only", "sharegpt"]


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory):
    from deepspec.tiny_target import build_random_tiny_target

    return build_random_tiny_target(output_dir=tmp_path_factory.mktemp("regen") / "tiny_target", seed=0)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join((c if isinstance(c, str) else json.dumps(c)) + "\n" for c in CONVERSATIONS))
    return path


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _user_turns(conv):
    return [m.get("content", m.get("value")) for m in conv if m.get("role", m.get("from")) in ("user", "human")]


def check_regenerated(rows, *, expect_ids):
    """Ids kept, system/user turns kept, one fresh assistant string after every user turn."""
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == sorted(expect_ids) and len(rows) == len(by_id), "missing or duplicate ids"
    source = {c["id"]: c["conversations"] for c in CONVERSATIONS if isinstance(c, dict)}
    for conv_id, row in by_id.items():
        msgs = row["conversations"]
        src = source[conv_id]
        if src[0].get("role") == "system":
            assert msgs[0] == src[0]
            msgs = msgs[1:]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * len(_user_turns(src))
        assert [m["content"] for m in msgs[0::2]] == _user_turns(src)
        for m in msgs[1::2]:
            assert isinstance(m["content"], str) and m["content"].strip() and m["content"] != "ORIGINAL"
        assert len(row["finish_reasons"]) == len(_user_turns(src))
    return by_id


def check_errors(output_path, *, expect):
    errors = {e["reason"]: e for e in _rows(error_path_for(output_path))}
    assert set(errors) == set(expect)
    if "malformed_json" in expect:
        assert errors["malformed_json"]["where"] == "prompts.jsonl:5"
    if "prompt_too_long" in expect:
        assert errors["prompt_too_long"]["id"] == "too-long"
    return errors


def prewrite_partial_output(path):
    """What a crash leaves: one finished row (with a marker answer) and a half-written line."""
    done = {
        "id": "single",
        "conversations": [
            {"role": "user", "content": "def add(a, b):"},
            {"role": "assistant", "content": "WRITTEN BEFORE THE CRASH"},
        ],
        "finish_reasons": ["stop"],
    }
    path.write_text(json.dumps(done) + "\n" + '{"id": "multi", "conversations": [{"ro')


def check_resumed(rows):
    by_id = check_regenerated(rows, expect_ids=GOOD_IDS)
    assert by_id["single"]["conversations"][1]["content"] == "WRITTEN BEFORE THE CRASH"  # not generated again
    assert rows[0]["id"] == "single"


# ----------------------------------------------------------------------------- hf backend


def _greedy(tiny_target, messages, max_new_tokens):
    """The target's greedy answer for ``messages``, computed independently with plain generate()."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_target)
    model = AutoModelForCausalLM.from_pretrained(tiny_target, dtype=torch.float32).eval()
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=[2, 0],
            pad_token_id=0,
        )
    new = out[0, ids.shape[1] :].tolist()
    new = new[: next((i for i, t in enumerate(new) if t in (0, 2)), len(new))]
    return tok.decode(new, skip_special_tokens=True)


def test_hf_regenerates_every_assistant_turn_greedily(tiny_target, prompts, tmp_path):
    out = tmp_path / "regen.jsonl"
    summary = regenerate(
        RegenerateOptions(
            input_path=prompts,
            output_path=out,
            backend="hf",
            model=str(tiny_target),
            sampling=SamplingSettings(temperature=0.0, max_tokens=MAX_TOKENS),
            batch_size=3,
            progress=False,
        ),
        log=lambda _m: None,
    )
    assert (summary.ok, summary.failed, summary.skipped) == (4, 2, 0)
    by_id = check_regenerated(_rows(out), expect_ids=GOOD_IDS)
    # Every row names the model that wrote it; --resume checks it (tests/test_bad_inputs_data.py).
    assert {r["generated_by"]["model"] for r in _rows(out)} == {str(tiny_target)}
    check_errors(out, expect={"malformed_json", "prompt_too_long"})

    # Turn 2 of the multi-turn conversation must be the target's greedy answer given the
    # system prompt, turn 1 and the *regenerated* first answer.
    multi = by_id["multi"]["conversations"]
    assert multi[-1]["content"] == _greedy(tiny_target, multi[:-1], MAX_TOKENS)
    single = by_id["single"]["conversations"]
    assert single[-1]["content"] == _greedy(tiny_target, single[:-1], MAX_TOKENS)


def test_hf_resume_generates_only_missing_ids(tiny_target, prompts, tmp_path):
    out = tmp_path / "regen.jsonl"
    prewrite_partial_output(out)
    summary = regenerate(
        RegenerateOptions(
            input_path=prompts,
            output_path=out,
            backend="hf",
            model=str(tiny_target),
            sampling=SamplingSettings(temperature=0.0, max_tokens=4),
            resume=True,
            progress=False,
        ),
        log=lambda _m: None,
    )
    assert (summary.ok, summary.skipped) == (3, 1)
    check_resumed(_rows(out))


def test_existing_output_needs_resume_or_overwrite(tiny_target, prompts, tmp_path):
    out = tmp_path / "regen.jsonl"
    prewrite_partial_output(out)
    with pytest.raises(FileExistsError, match="--resume"):
        regenerate(
            RegenerateOptions(
                input_path=prompts,
                output_path=out,
                backend="hf",
                model=str(tiny_target),
                progress=False,
            ),
            log=lambda _m: None,
        )


def test_hf_command_line(tiny_target, prompts, tmp_path):
    out = tmp_path / "cli.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--backend",
            "hf",
            "--model",
            str(tiny_target),
            "--input-file-path",
            str(prompts),
            "--output-file-path",
            str(out),
            "--num-samples",
            "2",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["id"] for r in _rows(out)] == ["single", "multi"]
    assert "regenerated 2 conversations" in proc.stdout


# ----------------------------------------------------------------------------- openai client (fake servers)


class _FakeServer:
    """A loopback stand-in for a vLLM server: answers with a text that encodes what it was sent."""

    def __init__(self, name, *, fail_first=0):
        self.name, self.fail_first, self.requests = name, fail_first, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, {"data": [{"id": "fake-model"}]})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(req)
                if len(outer.requests) <= outer.fail_first:
                    return self._send(503, {"error": {"message": "warming up"}})
                last = req["messages"][-1]["content"]
                if last == "reject me":
                    return self._send(400, {"error": {"message": "unsupported request"}})
                text = f"{outer.name}:{len(req['messages'])}:{last}"
                self._send(
                    200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_client_retries_spreads_and_conditions_on_earlier_turns(tmp_path):
    a, b = _FakeServer("A", fail_first=1), _FakeServer("B")
    try:
        src = tmp_path / "prompts.jsonl"
        convs = [
            {
                "id": f"c{i}",
                "conversations": [
                    {"role": "user", "content": f"q{i}"},
                    {"role": "assistant", "content": "x"},
                    {"role": "user", "content": f"r{i}"},
                ],
            }
            for i in range(4)
        ]
        convs.append({"id": "bad", "conversations": [{"role": "user", "content": "reject me"}]})
        src.write_text("".join(json.dumps(c) + "\n" for c in convs))
        out = tmp_path / "out.jsonl"
        summary = regenerate(
            RegenerateOptions(
                input_path=src,
                output_path=out,
                backend="openai",
                model=None,
                server_addresses=[a.address, f"http://{b.address}/v1"],
                concurrency=3,
                sampling=SamplingSettings(temperature=0.5, top_k=20, min_p=0.05, max_tokens=7),
                progress=False,
            ),
            log=lambda _m: None,
        )
        assert (summary.ok, summary.failed) == (4, 1)
        rows = {r["id"]: r["conversations"] for r in _rows(out)}
        for i in range(4):
            first, second = rows[f"c{i}"][1]["content"], rows[f"c{i}"][3]["content"]
            assert first.endswith(f":1:q{i}") and second.endswith(f":3:r{i}")
        sent = a.requests + b.requests
        assert a.requests and b.requests  # round-robin reached both servers
        # Turn 2 was asked with the regenerated turn 1 in its context, not the original "x".
        follow_ups = [r for r in sent if len(r["messages"]) == 3]
        assert all(r["messages"][1]["content"] != "x" for r in follow_ups)
        req = sent[-1]
        assert req["model"] == "fake-model" and req["max_tokens"] == 7 and req["top_k"] == 20
        assert req["min_p"] == 0.05 and req["chat_template_kwargs"] == {"enable_thinking": False}
        (err,) = _rows(error_path_for(out))
        assert err["id"] == "bad" and err["reason"] == "rejected_by_server" and "unsupported" in err["message"]
    finally:
        a.close()
        b.close()


def test_openai_client_gives_up_on_dead_servers(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    with pytest.raises(RuntimeError, match="launch_vllm_server.sh"):
        OpenAIBackend(servers=[f"127.0.0.1:{port}"], model=None, sampling=SamplingSettings(), log=lambda _m: None)


@pytest.mark.parametrize(
    "given,expected",
    [
        ("127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
        ("http://localhost:9/", "http://localhost:9/v1"),
        ("https://h.example:443/v1", "https://h.example:443/v1"),
        ("[::1]:8000", "http://[::1]:8000/v1"),
    ],
)
def test_server_address_forms(given, expected):
    assert _base_url(given) == expected


def test_server_address_without_port_is_rejected():
    with pytest.raises(ValueError, match="HOST:PORT"):
        _base_url("localhost")


# ----------------------------------------------------------------------------- options and the backend table


def _action(parser, dest):
    return next(a for a in parser._actions if a.dest == dest)


def test_cli_offers_exactly_the_backends_of_the_table():
    from deepspec.data.regenerate import BACKENDS, build_parser

    assert _action(build_parser(), "backend").choices == list(BACKENDS)
    assert set(BACKENDS) == {"vllm", "openai", "hf"}
    for name, backend in BACKENDS.items():
        assert backend.name == name
        for method in ("check", "identity", "open", "drive"):
            assert callable(getattr(backend, method)), f"{name} has no {method}"


def test_parser_defaults_are_the_options_defaults():
    from deepspec.data.regenerate import build_parser
    from deepspec.data.regenerate.cli import options_from_args

    parser = build_parser()
    args = parser.parse_args(["--input-file-path", "in.jsonl", "--output-file-path", "out.jsonl"])
    defaults = RegenerateOptions(input_path="in.jsonl", output_path="out.jsonl")
    assert options_from_args(args) == defaults
    assert defaults.sampling == SamplingSettings() and defaults.progress is True
    # The numbers --help prints are the dataclasses' too.
    help_text = " ".join(parser.format_help().split())
    assert f"(default: {SamplingSettings().max_tokens})" in help_text
    assert f"(default: {defaults.gpu_memory_utilization})" in help_text
    assert f"(default: {defaults.request_timeout:g})" in help_text


def test_flags_reach_the_options():
    from deepspec.data.regenerate import build_parser
    from deepspec.data.regenerate.cli import options_from_args

    argv = ["--input-file-path", "i", "--output-file-path", "o", "--backend", "openai", "--no-progress"]
    argv += ["--server-address", "h:1", "--server-address", "h:2", "--top-k", "5", "--enable-thinking"]
    options = options_from_args(build_parser().parse_args(argv))
    assert options.backend == "openai" and options.server_addresses == ("h:1", "h:2")
    assert options.progress is False and options.input_path == Path("i")
    assert options.sampling == SamplingSettings(top_k=5, enable_thinking=True)


def test_options_are_frozen_and_keyword_only(tmp_path):
    import dataclasses

    options = RegenerateOptions(input_path=tmp_path / "i.jsonl", output_path=tmp_path / "o.jsonl")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.resume = True
    with pytest.raises(TypeError):
        RegenerateOptions(tmp_path / "i.jsonl", tmp_path / "o.jsonl")


def test_unknown_backend_is_refused_before_any_work(tmp_path):
    options = RegenerateOptions(input_path=tmp_path / "nope.jsonl", output_path=tmp_path / "o.jsonl", backend="tgi")
    with pytest.raises(ValueError, match="unknown backend 'tgi'; choose vllm, openai or hf"):
        regenerate(options, log=lambda _m: None)
    assert not any(tmp_path.iterdir())


# A stand-in for the vllm package: enough of LLM and SamplingParams for VLLMBackend, answering with
# "vllm:<messages>:<last user turn>". On sys.path (and PYTHONPATH, for spawned workers) it is "vllm".
_FAKE_VLLM = """
import types


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class LLM:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.llm_engine = types.SimpleNamespace(shutdown=lambda: None)

    def get_default_sampling_params(self):
        return SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0)

    def chat(self, batch, params, use_tqdm=False, chat_template_kwargs=None):
        def out(messages):
            text = f"vllm:{len(messages)}:{messages[-1]['content']}"
            return types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text, finish_reason="stop")])

        return [out(m) for m in batch]
"""


@pytest.mark.parametrize("data_parallel_size", [None, 2], ids=["one-engine", "data-parallel-workers"])
def test_vllm_entry_with_a_stand_in_engine(data_parallel_size, prompts, tmp_path, monkeypatch):
    fake = tmp_path / "fake_vllm"
    (fake / "vllm").mkdir(parents=True)
    (fake / "vllm" / "__init__.py").write_text(_FAKE_VLLM)
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU: the workers share no GPU
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    out = tmp_path / "regen.jsonl"
    options = RegenerateOptions(
        input_path=prompts,
        output_path=out,
        backend="vllm",
        model="org/served-by-name",
        data_parallel_size=data_parallel_size,
        progress=False,
    )
    said: list[str] = []
    try:
        summary = regenerate(options, log=said.append)
    finally:
        sys.modules.pop("vllm", None)
    assert (summary.ok, summary.failed, summary.broken_workers) == (5, 1, [])
    workers = [m for m in said if "data-parallel worker" in m]
    assert len(workers) == (data_parallel_size or 0), said
    rows = {r["id"]: r for r in _rows(out)}
    assert sorted(rows) == sorted(GOOD_IDS + ["too-long"])  # the stand-in has no context limit
    multi = rows["multi"]["conversations"]
    assert multi[-1]["content"] == "vllm:4:class Config:"  # system, user, regenerated answer, user
    assert {r["generated_by"]["fingerprint"] for r in rows.values()} == {"name:org/served-by-name"}
    check_errors(out, expect={"malformed_json"})


# ----------------------------------------------------------------------------- real vLLM (CPU build)


@pytest.fixture(scope="session")
def vllm_python():
    py = vllm_interpreter()
    try:
        proc = subprocess.run([py, "-c", "import vllm"], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        skip_or_fail(f"`import vllm` with {py} took over 300 s; {INSTALL_HINT}")
    if proc.returncode != 0:
        skip_or_fail(f"`import vllm` fails with {py}: {proc.stderr.strip().splitlines()[-1:]}; {INSTALL_HINT}")
    return py


def _vllm_env():
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


@pytest.mark.vllm
def test_vllm_in_process_regenerates_and_resumes(vllm_python, tiny_target, prompts, tmp_path):
    # One engine start covers both: the output already holds a finished row and a torn line.
    out = tmp_path / "regen.jsonl"
    prewrite_partial_output(out)
    t0 = time.time()
    proc = subprocess.run(
        [
            vllm_python,
            str(SCRIPT),
            "--backend",
            "vllm",
            "--model",
            str(tiny_target),
            "--input-file-path",
            str(prompts),
            "--output-file-path",
            str(out),
            "--max-tokens",
            "16",
            "--temperature",
            "0",
            "--resume",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=480,
        env=_vllm_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    print(f"vLLM in-process run: {time.time() - t0:.0f}s")
    check_resumed(_rows(out))
    # vLLM's own length check raises for the whole batch; only that row may fail.
    check_errors(out, expect={"malformed_json", "prompt_too_long"})


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.vllm
def test_vllm_server_with_openai_backend(vllm_python, tiny_target, prompts, tmp_path):
    port = _free_port()
    env = _vllm_env()
    env["DEEPSPEC_VLLM_PYTHON"] = vllm_python
    lines: list[str] = []
    t0 = time.time()
    server = subprocess.Popen(
        [
            "bash",
            str(LAUNCH),
            "--model",
            str(tiny_target),
            "--port",
            str(port),
            "--log-dir",
            str(tmp_path / "logs"),
            "--wait-timeout",
            "180",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    reader = threading.Thread(target=lambda: lines.extend(iter(server.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 200  # the script itself gives up after 180 s
        while not any("ready after" in line for line in lines):
            if server.poll() is not None or time.time() > deadline:
                log = tmp_path / "logs" / "vllm_server_0.log"
                tail = log.read_text()[-3000:] if log.exists() else ""
                pytest.fail("vLLM server did not come up:\n" + "".join(lines) + tail)
            time.sleep(1)
        print(f"vLLM server ready in {time.time() - t0:.0f}s")
        ready = next(line for line in lines if "ready after" in line)
        assert f"--server-address 127.0.0.1:{port}" in ready

        out = tmp_path / "regen.jsonl"
        cmd = [
            sys.executable,
            str(SCRIPT),
            "--backend",
            "openai",
            "--server-address",
            f"127.0.0.1:{port}",
            "--model",
            str(tiny_target),
            "--input-file-path",
            str(prompts),
            "--output-file-path",
            str(out),
            "--max-tokens",
            "16",
            "--temperature",
            "0",
            "--concurrency",
            "4",
            "--no-progress",
        ]
        first = subprocess.run(cmd + ["--num-samples", "2"], capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        check_regenerated(_rows(out), expect_ids=["single", "multi"])
        before = out.read_text()

        second = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        assert out.read_text().startswith(before)  # earlier rows untouched, new ones appended
        check_regenerated(_rows(out), expect_ids=GOOD_IDS)
        assert "skipped 2" in second.stdout
        check_errors(out, expect={"malformed_json", "prompt_too_long"})  # the server's HTTP 400, not retried
    finally:
        _stop_launcher(server, lines)


def _stop_launcher(proc, lines):
    """SIGTERM lets the script's trap stop its servers; anything left after 60 s is killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for line in lines:  # "[launch] server 0 pid N ...": each server leads its own process group
        if line.startswith("[launch] server ") and " pid " in line:
            pgid = int(line.split(" pid ")[1].split()[0])
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
