"""How eval.py decodes on this machine: the dtype and torch's thread count, each chosen with its reason.

**Dtype.** ``--dtype bf16 / fp32 / fp16`` is used as given. ``auto`` is bf16 on a GPU and fp32 on a CPU
without native bf16 (:func:`deepspec.precision.cpu_has_native_bf16`: emulated bf16 costs 7-16x). On a CPU
with native bf16, a probe decides: a short greedy decode of random prompts at the run's decode shapes (its
batch, its γ, a KV cache of :data:`PROBE_CONTEXT` tokens) in each dtype, timed per round after the prefill
and the first round (both pay one-time set-up), fp32 and bf16 by turns, up to :data:`PROBE_REPEATS` times
each or until :data:`PROBE_BUDGET_S` seconds are spent; the median run of each counts (on shared cores a
lucky run that had a core alone is no more typical than an unlucky one). bf16 is chosen only when it is at
least :data:`BF16_MARGIN` times faster: fp32 is the exact reference, and on a shared 2-core machine the
probe put bf16 1.02-1.28x ahead at the quickstart's shapes, run to run, where whole decodes took the same
time in both (issue 31); a smaller lead is noise, and would flip the dtype, hence τ, from run to run.
Training picks bf16 on such CPUs by its flags (large matmuls, where bf16 units pay); decoding a small model
is many small ops, another regime, hence the probe.

**Threads.** Decoding runs many small ops, each split across torch's intra-op threads and joined at a
barrier: a thread whose core another job holds stalls every op. With three jobs on 2 cores an evaluation
took 26x its quiet time. So on CPU the thread count is the cores other jobs leave free: the processors
this process may use, less the other runnable tasks that ``/proc/loadavg`` counts (ours subtracted), at
least 1, at most torch's default, re-chosen every :data:`THREAD_RECHECK_S` seconds (checked at each round).
``OMP_NUM_THREADS`` in the environment is used as given. A GPU decode keeps torch's default.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
BF16_MARGIN = 1.5  # bf16 must decode at least this much faster than fp32 to be chosen
PROBE_REPEATS = 3  # probe runs per dtype, at most
PROBE_BUDGET_S = 30.0  # no further pair of runs starts once the probe has spent this long (one pair at least)
PROBE_CONTEXT = 256  # KV-cache length of the probe's prompts
PROBE_ROUNDS = 4  # timed decoding rounds per probe run
THREAD_RECHECK_S = 5.0


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} (or auto, resolved by choose_dtype), got {name!r}")
    return DTYPES[name]


@dataclass(frozen=True)
class DtypeChoice:
    name: str  # bf16 | fp32 | fp16
    reason: str
    probe: dict | None = None  # seconds per round of each dtype and the shapes, when a probe decided

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def meta(self) -> dict:
        return {"dtype": self.name, "dtype_reason": self.reason, "dtype_probe": self.probe}


def dtype_without_probe(requested: str, *, device: str) -> DtypeChoice | None:
    """The choice when no probe is needed (an explicit dtype, a GPU, a CPU without native bf16), else None."""
    from deepspec.precision import cpu_has_native_bf16

    if requested != "auto":
        torch_dtype(requested)
        return DtypeChoice(requested, f"{requested} as given (--dtype)")
    if not device.startswith("cpu"):
        return DtypeChoice("bf16", f"auto: bf16 on a GPU ({device})")
    if not cpu_has_native_bf16():
        forced = os.environ.get("DEEPSPEC_CPU_BF16") == "0"
        why = "DEEPSPEC_CPU_BF16=0" if forced else "no avx512_bf16 / amx_bf16 in /proc/cpuinfo"
        return DtypeChoice("fp32", f"auto: fp32, CPU has no native bf16 ({why}); bf16 not probed")
    return None


def choose_dtype(
    requested: str,
    *,
    device: str,
    probe: Callable[[str], float],
    shapes: Mapping | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> DtypeChoice:
    """``requested`` (auto | bf16 | fp32 | fp16) on ``device``; ``probe(name)`` times one decode in that dtype
    (seconds per round) and is called only when auto must choose between fp32 and bf16 (module doc)."""
    fixed = dtype_without_probe(requested, device=device)
    if fixed is not None:
        return fixed
    times, start = {"fp32": [], "bf16": []}, clock()
    while len(times["fp32"]) < PROBE_REPEATS and (not times["fp32"] or clock() - start < PROBE_BUDGET_S):
        for name in times:
            times[name].append(probe(name))
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    record = {"fp32_s_per_round": fp32, "bf16_s_per_round": bf16, "runs": times, **(shapes or {})}
    where = "at decode shapes" + (f" ({describe_shapes(shapes)})" if shapes else "")
    if fp32 >= bf16 * BF16_MARGIN:
        return DtypeChoice("bf16", f"auto: bf16, probe {fp32 / bf16:.2f}x faster than fp32 {where}", record)
    if bf16 >= fp32:
        return DtypeChoice("fp32", f"auto: fp32, probe {bf16 / fp32:.2f}x faster than bf16 {where}", record)
    return DtypeChoice(
        "fp32",
        f"auto: fp32, bf16 only {fp32 / bf16:.2f}x faster {where}, under the {BF16_MARGIN:.2f}x that choosing "
        "bf16 over the exact fp32 needs",
        record,
    )


def describe_shapes(shapes: Mapping) -> str:
    return f"batch {shapes['batch']}, {shapes['gamma'] + 1} tokens per verify, {shapes['context']}-token KV cache"


class _OnPropose:
    """A proposer that calls ``before()`` ahead of each propose (one per decoding round of the batch)."""

    def __init__(self, proposer, before: Callable[[], object]):
        self.inner, self.gamma, self._before = proposer, proposer.gamma, before

    def propose(self, **kwargs):
        self._before()
        return self.inner.propose(**kwargs)

    def __getattr__(self, name):  # reset, extend, crop, select_rows
        return getattr(self.inner, name)


def probe_shapes(*, batch: int, gamma: int, max_positions: int) -> dict:
    """The probe's shapes: this run's batch and γ, a :data:`PROBE_CONTEXT`-token KV cache where it fits."""
    room = max_positions - (PROBE_ROUNDS + 3) * (gamma + 1) if max_positions else PROBE_CONTEXT
    return {"batch": batch, "gamma": gamma, "context": max(8, min(PROBE_CONTEXT, room)), "rounds": PROBE_ROUNDS}


class _ProbeDone(Exception):
    """Raised from the proposer hook once the probe has timed its rounds."""


@torch.no_grad()
def seconds_per_round(*, target, proposer, layer_ids: list[int], shapes: Mapping, seed: int = 0) -> float:
    """A greedy speculative decode of ``shapes['batch']`` random prompts of ``shapes['context']`` tokens: the
    seconds per round over ``shapes['rounds']`` rounds after the first (the prefill and the first round pay
    one-time set-up). The probe :func:`choose_dtype` runs in each dtype."""
    from deepspec.decoding.engine import speculative_generate
    from deepspec.decoding.target_runner import TargetRunner

    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, target.vocab_size, (shapes["batch"], shapes["context"]), generator=gen).tolist()
    starts, rounds = [], shapes["rounds"]

    def tick():
        starts.append(time.perf_counter())
        if len(starts) == rounds + 2:
            raise _ProbeDone

    try:
        speculative_generate(
            runner=TargetRunner(target, layer_ids=layer_ids),
            proposer=_OnPropose(proposer, tick),
            prompts=prompts,
            max_new_tokens=(rounds + 2) * (proposer.gamma + 1),  # a round commits at most γ + 1 tokens
            temperature=0.0,
        )
    except _ProbeDone:
        return (starts[-1] - starts[1]) / rounds
    raise AssertionError(f"the probe decode ended after {len(starts)} rounds, before {rounds + 2}")


# -- threads --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def torch_default_threads() -> int:
    """torch's intra-op thread count before this module changed it (the first value seen in this process)."""
    return torch.get_num_threads()


def _state(stat: Path) -> str:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # a thread that ended while we read
        return ""


def runnable_others() -> int | None:
    """Runnable tasks on this machine other than our own threads (``/proc/loadavg``), or None where there is
    no ``/proc`` (then nobody else is assumed)."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None
    ours = sum(_state(s) == "R" for s in Path("/proc/self/task").glob("*/stat"))
    return max(0, running - ours)


@dataclass(frozen=True)
class ThreadChoice:
    count: int
    reason: str


def choose_threads(
    *,
    device: str,
    env: Mapping[str, str],
    default: int,
    cpus: int,
    machine_cpus: int,
    others: int | None,
) -> ThreadChoice:
    """torch's intra-op threads for decoding (module doc). ``default``: torch's own count; ``cpus``: the
    processors this process may run on; ``machine_cpus``: the machine's; ``others``: other runnable tasks
    (:func:`runnable_others`; None: unknown)."""
    if not device.startswith("cpu"):
        return ThreadChoice(default, f"torch's default {default} (decoding on {device})")
    if env.get("OMP_NUM_THREADS"):
        return ThreadChoice(default, f"{default}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']} from the environment")
    cap = min(default, cpus)
    if others is None:
        return ThreadChoice(cap, f"auto: {cap} (torch's default; no /proc/loadavg to see other jobs)")
    free = machine_cpus - others
    count = max(1, min(cap, free))
    return ThreadChoice(
        count,
        f"auto: {count}, {others} other runnable task(s) on {machine_cpus} core(s) (/proc/loadavg) leave "
        f"{max(free, 0)} free; at most {cap} (torch's default on the {cpus} core(s) this process may use)",
    )


@dataclass
class ThreadRule:
    """Sets torch's threads for CPU decoding by :func:`choose_threads`, re-chosen at most every ``every``
    seconds: :meth:`apply` before decoding, :meth:`watch` a proposer to re-check at each round;
    :meth:`restore` puts the previous count back."""

    device: str
    every: float = THREAD_RECHECK_S
    others: Callable[[], int | None] = runnable_others
    clock: Callable[[], float] = time.monotonic
    first: ThreadChoice | None = None
    used: dict[int, int] = field(default_factory=dict)  # thread count -> decoding rounds run with it
    _last: float | None = None
    _count: int | None = None
    _before: int | None = None

    def choose(self) -> ThreadChoice:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
        return choose_threads(
            device=self.device,
            env=os.environ,
            default=torch_default_threads(),
            cpus=len(affinity),
            machine_cpus=os.cpu_count() or len(affinity),
            others=self.others(),
        )

    def apply(self) -> int:
        """Set the thread count, re-chosen when ``every`` seconds have passed since the last choice."""
        now = self.clock()
        if self._last is None or now - self._last >= self.every:
            choice, self._last = self.choose(), now
            if self.first is None:
                self.first, self._before = choice, torch.get_num_threads()
            if choice.count != torch.get_num_threads():
                torch.set_num_threads(choice.count)
            self._count = choice.count
        return self._count

    def _round(self) -> None:
        count = self.apply()
        self.used[count] = self.used.get(count, 0) + 1

    def watch(self, proposer):
        """``proposer``, applying the rule (and counting the round) before each of its rounds."""
        return _OnPropose(proposer, self._round)

    def restore(self) -> None:
        if self._before is not None and torch.get_num_threads() != self._before:
            torch.set_num_threads(self._before)

    def meta(self) -> dict:
        """``threads`` (the first choice), ``threads_reason`` and ``threads_used`` ({count: decoding rounds})."""
        first = self.first or self.choose()
        return {
            "threads": first.count,
            "threads_reason": first.reason,
            "threads_used": {str(k): v for k, v in sorted(self.used.items())},
        }
