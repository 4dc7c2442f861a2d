"""Trainer: every algorithm learns, 2 gloo workers match 1, crash + resume replays exactly, checkpoint layout,
pre-flight errors. A random 3-layer tiny target and a 48-sample cache keep it to CPU seconds per run."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepspec.run_config import load_config
from deepspec.cache.format import CacheCompatibilityError
from deepspec.models import load_draft
from deepspec.tiny_target import build_random_tiny_target
from deepspec.training import checkpoint as ckpt
from deepspec.training.checkpoint import ResumeError, latest_checkpoint, save_checkpoint
from deepspec.launch import LAUNCH_ENV_VARS as LAUNCH_ENV, LaunchError, LaunchPlan, launch, plan_launch, plan_rendezvous
from deepspec.training.metrics import read_metrics
from deepspec.training.trainer import TrainingError, grad_accumulation
from tinyrun import tiny_run, TINY_SIZES

ROOT = Path(__file__).resolve().parents[1]
CACHE_LAYERS = [-1, 1]  # layer 0 deliberately absent (pre-flight test)
CONFIGS = {
    "dspark": "config/dspark/dspark_tiny.py",
    "dflash": "config/dflash/dflash_tiny.py",
    "eagle3": "config/eagle3/eagle3_tiny.py",
}
_spec = importlib.util.spec_from_file_location("deepspec_train_entry", ROOT / "train.py")
train_entry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_entry)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("training"), layers=CACHE_LAYERS, n=48, batch_size=16)


def make_cfg(setup, algo, out, *extra):
    layers = [1] if algo == "eagle3" else CACHE_LAYERS  # Eagle3 uses a subset of the cache's layers
    opts = [
        f"model.target_model_name_or_path={setup['target']}",
        f"model.target_layer_ids={layers}",
        "model.num_draft_layers=1",
        "train.local_batch_size=2",
        "train.global_batch_size=4",
        "train.max_train_steps=12",
        "logging.logging_steps=1",
        "logging.checkpointing_steps=4",
        f"logging.checkpoint_dir={out}",
        f"logging.tensorboard_dir={out}/tb",
    ]
    if algo == "eagle3":
        opts.append("model.ttt_length=3")
    else:
        opts.append("model.num_anchors=8")
    return load_config(ROOT / CONFIGS[algo], opts=opts + list(extra))


def train(setup, cfg, **kwargs):
    return train_entry.run_training(cfg, cache_dir=setup["cache"], device="cpu", progress=False, **kwargs)


def losses(out):
    return [r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl")]


@pytest.mark.parametrize("algo", ["dspark", "dflash", "eagle3"])
def test_each_algorithm_learns(setup, algo, tmp_path):
    cfg = make_cfg(setup, algo, tmp_path, "train.max_train_steps=24", "train.lr=5e-3", "train.warmup_ratio=0.1")
    train(setup, cfg)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 25))
    first, last = records[:4], records[-4:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "loss") < 0.9 * mean(first, "loss"), [r["loss"] for r in records]
    if algo == "dspark":
        assert mean(last, "tau_probabilistic") > mean(first, "tau_probabilistic")
    if algo == "eagle3":
        assert mean(last, "accuracy@0") > mean(first, "accuracy@0")
    for key in ("lr", "grad_norm", "tokens_per_s", "data_wait_fraction"):
        assert key in records[-1]
    assert any((tmp_path / "tb").iterdir()), "TensorBoard events missing"


def test_dflash_in_the_engines_layout_learns_and_saves_its_layout(setup, tmp_path):
    # model.sample_from_anchor=False: slot 0 is the bonus token, block_size 4 drafts 3 tokens (vLLM's layout).
    layout = ("model.sample_from_anchor=False", "model.block_size=4")
    cfg = make_cfg(
        setup, "dflash", tmp_path, "train.max_train_steps=24", "train.lr=5e-3", "train.warmup_ratio=0.1", *layout
    )
    train(setup, cfg)
    records = read_metrics(tmp_path / "metrics.jsonl")
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(records[-4:], "loss") < 0.9 * mean(records[:4], "loss"), [r["loss"] for r in records]
    saved = json.loads((tmp_path / "step_latest" / "config.json").read_text())
    assert saved["sample_from_anchor"] is False and saved["block_size"] == 4
    draft = load_draft(tmp_path / "step_latest")
    from deepspec.algorithms import build_proposer

    assert build_proposer(draft).gamma == 3 and not draft.samples_from_anchor


def test_resume_replays_exactly(setup, tmp_path):
    ref = tmp_path / "ref"
    train(setup, make_cfg(setup, "dspark", ref))

    crashed = tmp_path / "crashed"

    def crash(step):
        if step == 6:  # after the step-4 checkpoint: steps 5-6 are lost and must be replayed
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(setup, make_cfg(setup, "dspark", crashed), on_step_end=crash)
    assert os.readlink(crashed / "step_latest") == "step_4"
    assert len(losses(crashed)) == 6
    train(setup, make_cfg(setup, "dspark", crashed))

    stopped = tmp_path / "stopped"  # a planned stop (--stop-after-steps) mid-way between checkpoints
    train(setup, make_cfg(setup, "dspark", stopped), stop_after_step=7)
    assert os.readlink(stopped / "step_latest") == "step_7"
    train(setup, make_cfg(setup, "dspark", stopped))

    want = losses(ref)
    assert len(want) == 12
    ref_w = load_file(ref / "step_12" / "model.safetensors")
    for run in (crashed, stopped):
        assert losses(run) == want  # bit-exact on CPU
        got_w = load_file(run / "step_12" / "model.safetensors")
        assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def test_checkpoint_layout_and_load(setup, tmp_path):
    cfg = make_cfg(
        setup,
        "dspark",
        tmp_path,
        "train.max_train_steps=4",
        "+logging.keep_last_checkpoints=1",
        "logging.checkpointing_steps=2",
    )
    train(setup, cfg)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step_")) == ["step_4", "step_latest"]
    folder = tmp_path / "step_4"
    assert {"config.json", "model.safetensors", "training_state.pt", "train_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen3DSparkModel"]
    assert config["block_size"] == 7 and config["target_layer_ids"] == CACHE_LAYERS
    assert config["tie_word_embeddings"] is False and config["num_hidden_layers"] == 1
    draft = load_draft(str(folder))
    saved = load_file(folder / "model.safetensors")
    for name, tensor in draft.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    assert "markov_head.markov_w1.weight" in saved and "confidence_head.proj.weight" in saved
    # Plain tensors and values only: loads with weights_only=True, no global needs allowing (any torch version).
    assert torch.serialization.get_unsafe_globals_in_checkpoint(folder / "training_state.pt") == []
    state = torch.load(folder / "training_state.pt", weights_only=True)
    assert state["step"] == 4 and {"optimizer", "scheduler", "rng", "config", "epoch", "step_in_epoch"} <= set(state)
    assert_plain(state)
    # step_latest: a relative symlink to step_4, re-pointed from step_2 without a temp link left behind,
    # usable as-is wherever a draft folder is expected
    latest = tmp_path / "step_latest"
    assert latest.is_symlink() and os.readlink(latest) == "step_4"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    via_link = load_draft(str(latest))
    assert type(via_link) is type(draft)
    assert all(torch.equal(t, draft.state_dict()[k]) for k, t in via_link.state_dict().items())
    assert latest_checkpoint(tmp_path) == folder


def assert_plain(value, where="state"):
    """Only what torch's weights_only unpickler has always allowed: tensors, containers, numbers, strings, None."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, (str, int)), f"{where}: key {k!r}"
            assert_plain(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            assert_plain(v, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (bool, int, float, str, torch.Tensor), f"{where}: {type(value)}"


class _FakeDraft:
    """Stands in for a draft: save_checkpoint only needs save_pretrained."""

    def save_pretrained(self, folder, state_dict):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text("{}\n")


def _save(root, step, **kwargs):
    return save_checkpoint(
        root=root, step=step, model=_FakeDraft(), model_state={}, training_state={"step": step}, config={}, **kwargs
    )


def test_step_latest_symlink_is_replaced_atomically(tmp_path, monkeypatch):
    _save(tmp_path, 2)
    replaced = []
    real_replace = os.replace

    def spy(src, dst):  # the link must be renamed over the old one, never removed first
        replaced.append((Path(src).name, Path(dst).name, os.readlink(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    _save(tmp_path, 4)
    assert replaced == [(".step_latest.tmp", "step_latest", "step_2")]
    assert os.readlink(tmp_path / "step_latest") == "step_4" and not os.path.lexists(tmp_path / ".step_latest.tmp")
    assert latest_checkpoint(tmp_path) == tmp_path / "step_4"
    os.symlink("step_2", tmp_path / ".step_latest.tmp")  # a crash left a temp link: the next save replaces it
    _save(tmp_path, 6)
    assert os.readlink(tmp_path / "step_latest") == "step_6" and not os.path.lexists(tmp_path / ".step_latest.tmp")


def test_latest_checkpoint_reads_old_pointers_and_survives_stale_links(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 4):
        _save(tmp_path, step)
    latest = tmp_path / "step_latest"
    latest.unlink()
    latest.write_text("step_2\n")  # the one-line text file earlier versions wrote
    assert latest_checkpoint(tmp_path) == tmp_path / "step_2"
    latest.unlink()
    os.symlink("step_9", latest)  # dangling: the newest complete folder
    assert latest_checkpoint(tmp_path) == tmp_path / "step_4"
    _save(tmp_path, 6)  # an old text pointer or a dangling link is replaced by a fresh link
    assert latest.is_symlink() and os.readlink(latest) == "step_6"


def test_pruning_keeps_the_folder_step_latest_points_at(tmp_path):
    for step in (2, 4, 6):
        _save(tmp_path, step)
    _save(tmp_path, 4, keep_last=1)  # re-saving an older step (e.g. after resuming from it)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_4", "step_6", "step_latest"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_4"
    _save(tmp_path, 8, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_8", "step_latest"]


def test_two_gloo_workers_match_one(setup, tmp_path):
    """Same global batch on 2 workers: same samples, same anchors, so the same losses up to float order."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["train.max_train_steps=3", "logging.checkpointing_steps=2"]
    train(setup, make_cfg(setup, "dflash", one, *common))
    cfg = make_cfg(setup, "dflash", two, *common)
    cmd = [
        sys.executable,
        "train.py",
        "--config",
        str(ROOT / CONFIGS["dflash"]),
        "--target-cache-dir",
        setup["cache"],
        "--nproc",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--opts",
    ]
    cmd += [
        f"model.target_model_name_or_path={setup['target']}",
        f"model.target_layer_ids={CACHE_LAYERS}",
        "model.num_draft_layers=1",
        "model.num_anchors=8",
        "train.local_batch_size=2",
        "train.global_batch_size=4",
        "logging.logging_steps=1",
        f"logging.checkpoint_dir={two}",
        f"logging.tensorboard_dir={two}/tb",
        *common,
    ]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, timeout=600)
    assert cfg.train.global_batch_size == 4
    layout = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if "tb" not in p.parts)  # noqa: E731
    assert layout(one) == layout(two)
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)


def test_preflight_errors(setup, tmp_path):
    with pytest.raises(TrainingError, match=r"needs layers \[0\].*set model.target_layer_ids to a subset"):
        train(setup, make_cfg(setup, "dspark", tmp_path / "a", "model.target_layer_ids=[0, 1]"))
    other = build_random_tiny_target(
        output_dir=tmp_path / "other_target",
        seed=1,
        **TINY_SIZES,
    )  # same shape, other weights
    with pytest.raises(CacheCompatibilityError, match="target_model"):
        train(setup, make_cfg(setup, "dspark", tmp_path / "b", f"model.target_model_name_or_path={other}"))
    with pytest.raises(TrainingError, match=r"48 samples, fewer than one global batch.*global_batch_size"):
        train(setup, make_cfg(setup, "dspark", tmp_path / "c", "train.global_batch_size=64"))
    with pytest.raises(TrainingError, match=r"multiple of 6"):
        grad_accumulation(global_batch_size=16, world_size=3, local_batch_size=2)
    with pytest.raises(TrainingError, match="Eagle3Trainer"):
        train(setup, make_cfg(setup, "dspark", tmp_path / "d", "train.trainer_cls=Nope"))
    with pytest.raises(TrainingError, match="trains eagle3, not model.algorithm=dspark"):
        train(setup, make_cfg(setup, "dspark", tmp_path / "e", "train.trainer_cls=Eagle3Trainer"))
    run = tmp_path / "f"
    # one worker, no process group: nothing to shard, so the plain model trains (FSDP2 itself: test_fsdp_on_cpu)
    train(
        setup,
        make_cfg(
            setup, "dspark", run, "train.max_train_steps=1", "train.sharding_strategy=full_shard", "data.num_workers=1"
        ),
    )
    assert os.readlink(run / "step_latest") == "step_1"
    with pytest.raises(ResumeError, match=r"model.markov_rank was 64 there but is 32 now"):
        train(setup, make_cfg(setup, "dspark", run, "train.max_train_steps=2", "model.markov_rank=32"))
    assert not any((tmp_path / d).exists() and any((tmp_path / d).glob("step_*")) for d in "abcde")


# -- resume: weights_only state, unreadable checkpoints fall back ------------------------------------
class _WeightsDraft(_FakeDraft):
    """Writes a real model.safetensors, so a folder is a complete checkpoint for resume_point."""

    def save_pretrained(self, folder, state_dict):
        from safetensors.torch import save_file

        super().save_pretrained(folder, state_dict)
        save_file(state_dict, str(Path(folder) / "model.safetensors"))


def _optimizer_state():
    from deepspec.training.schedule import build_scheduler

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    sched = build_scheduler(opt, total_steps=10, warmup_ratio=0.2)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _save_real(root, step, model, opt, sched):
    import random

    import numpy as np

    random.seed(step), np.random.seed(step), torch.manual_seed(step)
    state = {
        "step": step,
        "epoch": 0,
        "step_in_epoch": step,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": [ckpt.capture_rng()],
        "world_size": 1,
        "global_batch_size": 4,
    }
    cfg = {"model": {"betas": (0.9, 0.95), "path": Path("/x")}, "seed": 0}
    return save_checkpoint(
        root=root, step=step, model=_WeightsDraft(), model_state=model.state_dict(), training_state=state, config=cfg
    )


def test_training_state_round_trips_with_weights_only(tmp_path):
    import random

    import numpy as np

    model, opt, sched = _optimizer_state()
    folder = _save_real(tmp_path, 3, model, opt, sched)
    want = (random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(1)))
    assert torch.serialization.get_unsafe_globals_in_checkpoint(folder / "training_state.pt") == []
    state = ckpt.load_training_state(folder)  # weights_only=True inside
    assert_plain(state)
    assert state["config"] == {"model": {"betas": [0.9, 0.95], "path": "/x"}, "seed": 0}  # stored as JSON values
    model2, opt2, sched2 = _optimizer_state()
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    ckpt.restore_rng(state["rng"][0])
    assert (random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(1))) == want


def test_earlier_numpy_rng_states_still_load_but_code_never_runs(tmp_path):
    import numpy as np

    folder = tmp_path / "step_1"
    folder.mkdir()
    legacy = {"step": 1, "config": {}, "rng": [{"numpy": np.random.get_state()}]}  # what earlier versions pickled
    torch.save(legacy, folder / "training_state.pt")
    assert ckpt.load_training_state(folder)["rng"][0]["numpy"][0] == "MT19937"

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": 1, "config": {}, "x": Evil()}, folder / "training_state.pt")
    with pytest.raises(ResumeError, match=r"holds Python objects beyond tensors.*posix.system"):
        ckpt.load_training_state(folder)
    assert not marker.exists()


def test_resume_point_skips_unreadable_checkpoints(tmp_path):
    model, opt, sched = _optimizer_state()
    for step in (2, 4, 6):
        _save_real(tmp_path, step, model, opt, sched)
    messages = []
    folder, state, tensors = ckpt.resume_point(tmp_path, warn=messages.append)
    assert folder == tmp_path / "step_6" and state["step"] == 6 and set(tensors) == {"weight", "bias"}
    assert messages == []

    weights = tmp_path / "step_6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])  # truncated
    folder, state, _ = ckpt.resume_point(tmp_path, warn=messages.append)
    assert folder == tmp_path / "step_4" and state["step"] == 4
    assert "step_6/model.safetensors" in messages[0] and "truncated or corrupted" in messages[0]
    assert "resuming from" in messages[1] and "step_4" in messages[1]

    state_file = tmp_path / "step_4" / "training_state.pt"
    state_file.write_bytes(state_file.read_bytes()[:100])
    messages.clear()
    folder, _, _ = ckpt.resume_point(tmp_path, warn=messages.append)
    assert folder == tmp_path / "step_2" and "step_4/training_state.pt" in messages[1]

    (tmp_path / "step_2" / "model.safetensors").unlink()  # no readable one left: one clear error naming them all
    with pytest.raises(
        ckpt.CheckpointReadError,
        match=r"no readable checkpoint in .*step_6: .*step_4: .*step_2: "
        r".*new exp_name",
    ):
        ckpt.resume_point(tmp_path, warn=messages.append)
    assert ckpt.resume_point(tmp_path / "fresh") is None


def test_resume_falls_back_past_a_truncated_latest_checkpoint(setup, tmp_path, capfd):
    common = ["train.max_train_steps=4", "logging.checkpointing_steps=2"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(setup, make_cfg(setup, "dflash", ref, *common))
    train(setup, make_cfg(setup, "dflash", run, *common))
    weights = run / "step_4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capfd.readouterr()
    train(setup, make_cfg(setup, "dflash", run, *common))
    err = capfd.readouterr().err
    assert f"{weights}" in err and "truncated or corrupted" in err and "resuming from" in err and "step_2" in err
    assert losses(run) == losses(ref)  # steps 3-4 replayed from step 2, bit-exact
    assert os.readlink(run / "step_latest") == "step_4"
    assert ckpt.read_checkpoint(run / "step_4")[0]["step"] == 4  # re-saved whole


# -- launch: single-node rendezvous is loopback only -----------------------------------------------
def _listening_addresses() -> list[str]:
    """Addresses this process listens on (TCP, from /proc), as hex strings of /proc/net/tcp{,6}."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A = LISTEN
                found.append(parts[1].split(":")[0])
    return found


def _is_loopback(hex_addr: str) -> bool:
    if len(hex_addr) == 8:  # IPv4, little-endian: 127.x.x.x ends in 7F
        return hex_addr.upper().endswith("7F")
    return hex_addr.upper() in ("00000000000000000000000001000000",) or (
        hex_addr.upper().startswith("0000000000000000FFFF0000") and hex_addr.upper().endswith("7F")
    )


def _report_listeners(info, *, out: str) -> None:
    from deepspec.training.distributed import all_gather_object, barrier

    barrier(info)  # every pair connected: every socket there will be exists now
    gathered = all_gather_object(_listening_addresses(), info)
    if info.is_main:
        Path(out).write_text(json.dumps(gathered))
    barrier(info)


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads listening sockets from /proc")
def test_single_node_workers_listen_on_loopback_only(tmp_path, single_node_env):
    import functools
    import tempfile

    monkeypatch = single_node_env
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # other runs' leftovers in /tmp do not count
    out = tmp_path / "listeners.json"
    launch(functools.partial(_report_listeners, out=str(out)), plan_launch(device_type="cpu", nproc=2))
    per_rank = json.loads(out.read_text())
    assert len(per_rank) == 2 and all(per_rank), per_rank  # gloo's pair sockets are there...
    assert all(_is_loopback(a) for addrs in per_rank for a in addrs), per_rank  # ...and only on loopback
    assert not list(private_tmp.glob("deepspec-rendezvous-*/store"))  # store removed


def test_rendezvous_plan(tmp_path, single_node_env):
    monkeypatch = single_node_env
    monkeypatch.setenv("MASTER_PORT", "29500")  # ignored by a single-node run: it opens no port
    single = plan_launch(device_type="cpu", nproc=2)
    assert (single.master_addr, single.master_port) == (None, None)
    rdv = plan_rendezvous(single, store_dir=tmp_path)
    assert rdv.init_method == f"file://{tmp_path}/store"
    assert rdv.env in (
        {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"},
        {"GLOO_SOCKET_IFNAME": "lo0", "NCCL_SOCKET_IFNAME": "lo0"},
        {},
    )
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    multi = plan_launch(device_type="cpu", nproc=2)
    assert plan_rendezvous(multi, store_dir=None).init_method == "tcp://10.0.0.1:29500"
    assert (multi.node_rank, multi.num_nodes) == (1, 2)
    for var, value, match in (
        ("NODE_RANK", "2", "must be a node rank"),
        ("MASTER_PORT", "http", "MASTER_PORT='http'"),
        ("MASTER_PORT", "70000", r"\[1, 65535\]"),
        ("NNODES", "0", "NNODES='0'"),
        ("MASTER_ADDR", "", "needs MASTER_ADDR and MASTER_PORT"),
    ):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            with pytest.raises(LaunchError, match=match):
                plan_launch(device_type="cpu", nproc=2)
    with pytest.raises(LaunchError, match="--nproc must be >= 1"):
        plan_launch(device_type="cpu", nproc=0)
    assert isinstance(LaunchPlan(1, 0, 1, None, None, "cpu"), LaunchPlan)


def test_torchrun_environment(single_node_env):
    """Started by torchrun, RANK / WORLD_SIZE are global (torchrun's convention) and this process is one worker."""
    monkeypatch = single_node_env
    for var, value in (("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "4")):
        monkeypatch.setenv(var, value)
    plan = plan_launch(device_type="cpu", nproc=None)
    assert plan.torchrun is not None and plan.nproc == 1
    assert (plan.torchrun.rank, plan.torchrun.local_rank, plan.torchrun.world_size) == (5, 1, 8)
    assert (plan.node_rank, plan.num_nodes) == (1, 2)
    # Independent-shard stages (cache build, eval) ignore the node environment.
    assert plan_launch(device_type="cpu", nproc=2, multi_node=False).torchrun is None
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    with pytest.raises(LaunchError, match="set NODE_RANK \\(this node\\) and NNODES"):
        plan_launch(device_type="cpu", nproc=2)


def _raise_config_error(info):
    from deepspec.run_config import ConfigError

    if info.rank == 1:
        raise ConfigError("rank 1 refuses: the cache differs in the target")
    torch.distributed.barrier()  # rank 0 waits; the launcher must stop it, not hang


def test_a_worker_project_error_is_one_line_in_the_launcher():
    from deepspec.launch import WorkerError

    with pytest.raises(WorkerError) as err:
        launch(_raise_config_error, plan_launch(device_type="cpu", nproc=2))
    assert str(err.value) == "rank 1 refuses: the cache differs in the target"
