"""eval.py's decoding dtype and thread count (deepspec.eval.decode_setup), with fake timers and loads: who is
probed, what is chosen, and the reason given. No timing is asserted."""

import pytest
import torch

from deepspec import precision
from deepspec.eval import decode_setup as ds


@pytest.fixture
def native_bf16(monkeypatch):
    def set_to(has: bool):
        monkeypatch.setenv("DEEPSPEC_CPU_BF16", "1" if has else "0")
        precision.cpu_has_native_bf16.cache_clear()

    yield set_to
    precision.cpu_has_native_bf16.cache_clear()


def timer(fp32: float, bf16: float):
    calls = []

    def probe(name):
        calls.append(name)
        return {"fp32": fp32, "bf16": bf16}[name]

    return probe, calls


def never(name):
    raise AssertionError(f"probed {name}")


SHAPES = {"batch": 8, "gamma": 7, "context": 256, "rounds": 8}


def test_explicit_dtypes_gpus_and_cpus_without_native_bf16_are_not_probed(native_bf16):
    native_bf16(True)
    for name in ("fp32", "bf16", "fp16"):
        choice = ds.choose_dtype(name, device="cpu", probe=never)
        assert (choice.name, choice.reason, choice.probe) == (name, f"{name} as given (--dtype)", None)
    assert ds.choose_dtype("auto", device="cuda:1", probe=never).reason == "auto: bf16 on a GPU (cuda:1)"
    native_bf16(False)
    choice = ds.choose_dtype("auto", device="cpu", probe=never)
    assert choice.name == "fp32" and choice.dtype is torch.float32
    assert choice.reason == "auto: fp32, CPU has no native bf16 (DEEPSPEC_CPU_BF16=0); bf16 not probed"
    with pytest.raises(ValueError, match="dtype must be one of"):
        ds.choose_dtype("int8", device="cpu", probe=never)


def test_native_bf16_cpu_probes_both_interleaved_and_says_why(native_bf16):
    native_bf16(True)
    probe, calls = timer(fp32=0.010, bf16=0.0114)
    choice = ds.choose_dtype("auto", device="cpu", probe=probe, shapes=SHAPES)
    assert calls == ["fp32", "bf16"] * ds.PROBE_REPEATS  # by turns: A B A B ...
    assert choice.name == "fp32"
    assert choice.reason == (
        "auto: fp32, probe 1.14x faster than bf16 at decode shapes (batch 8, 8 tokens per verify, 256-token KV cache)"
    )
    runs = {"fp32": [0.010] * 3, "bf16": [0.0114] * 3}
    probed = {"fp32_s_per_round": 0.010, "bf16_s_per_round": 0.0114, "runs": runs, **SHAPES}
    assert choice.meta()["dtype_probe"] == probed
    assert ds.choose_dtype("auto", device="cpu", probe=timer(fp32=0.02, bf16=0.01)[0]).name == "bf16"


def test_bf16_needs_a_clear_margin_over_fp32(native_bf16):
    native_bf16(True)
    close = ds.choose_dtype("auto", device="cpu", probe=timer(fp32=0.0128, bf16=0.0100)[0])
    assert close.name == "fp32" and "bf16 only 1.28x faster at decode shapes, under the 1.50x" in close.reason
    assert ds.choose_dtype("auto", device="cpu", probe=timer(fp32=0.0151, bf16=0.0100)[0]).name == "bf16"


def test_the_median_run_of_each_dtype_counts(native_bf16):
    native_bf16(True)
    times = iter([0.03, 0.06, 0.01, 0.05, 0.02, 0.01])  # fp32 / bf16 by turns
    choice = ds.choose_dtype("auto", device="cpu", probe=lambda name: next(times))
    assert choice.probe["fp32_s_per_round"] == 0.02 and choice.probe["bf16_s_per_round"] == 0.05
    assert choice.probe["runs"] == {"fp32": [0.03, 0.01, 0.02], "bf16": [0.06, 0.05, 0.01]} and choice.name == "fp32"


def test_a_slow_probe_stops_at_its_budget_after_one_pair(native_bf16):
    native_bf16(True)
    now = [0.0]

    def slow(name):
        now[0] += ds.PROBE_BUDGET_S / 2 + 1  # a pair of runs spends the whole budget
        return {"fp32": 3.0, "bf16": 1.0}[name]

    choice = ds.choose_dtype("auto", device="cpu", probe=slow, clock=lambda: now[0])
    assert choice.probe["runs"] == {"fp32": [3.0], "bf16": [1.0]} and choice.name == "bf16"


def threads(**kw):
    args = dict(device="cpu", env={}, default=2, cpus=2, machine_cpus=2, others=0) | kw
    return ds.choose_threads(**args)


def test_threads_are_the_cores_other_jobs_leave_free():
    assert threads().count == 2
    loaded = threads(others=2)
    assert loaded.count == 1  # never below one
    assert loaded.reason == (
        "auto: 1, 2 other runnable task(s) on 2 core(s) (/proc/loadavg) leave 0 free; at most 2 (torch's "
        "default on the 2 core(s) this process may use)"
    )
    assert threads(default=16, cpus=16, machine_cpus=16, others=5).count == 11
    assert threads(default=8, cpus=4, machine_cpus=64, others=3).count == 4  # the processors we may use cap it
    assert threads(default=4, cpus=4, machine_cpus=4, others=None).reason.startswith("auto: 4 (torch's default; no")


def test_omp_num_threads_and_gpus_keep_torchs_count():
    given = threads(env={"OMP_NUM_THREADS": "2"}, others=5)
    assert (given.count, given.reason) == (2, "2, OMP_NUM_THREADS=2 from the environment")
    assert threads(device="cuda", default=3, others=5).count == 3


class Proposer:
    gamma = 3

    def __init__(self):
        self.proposed = 0

    def propose(self, **_):
        self.proposed += 1
        return "block"

    def crop(self, n):
        return n


def test_thread_rule_rechooses_between_rounds_counts_them_and_restores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    loads, now = iter([0, 9, 9]), [0.0]
    rule = ds.ThreadRule(device="cpu", every=5.0, others=lambda: next(loads), clock=lambda: now[0])
    before = torch.get_num_threads()
    free = min(ds.torch_default_threads(), len(ds.os.sched_getaffinity(0)), ds.os.cpu_count())
    inner = Proposer()
    watched = rule.watch(inner)
    assert watched.gamma == 3 and watched.crop(2) == 2  # the rest passes through
    try:
        rule.apply()  # before decoding (the dtype probe): not a round
        for t in (1.0, 2.0, 6.0, 7.0):  # re-chosen at 6 s (busy machine: one thread), not at 1, 2 or 7
            now[0] = t
            assert watched.propose(pending=None) == "block"
        assert torch.get_num_threads() == 1 and inner.proposed == 4
    finally:
        rule.restore()
    assert torch.get_num_threads() == before
    meta = rule.meta()
    assert meta["threads"] == free and meta["threads_reason"].startswith(f"auto: {free}, 0 other runnable")
    assert meta["threads_used"] == ({"1": 2, str(free): 2} if free != 1 else {"1": 4})


def test_runnable_others_reads_the_machine():
    others = ds.runnable_others()
    assert others is None or others >= 0
