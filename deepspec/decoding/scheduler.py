"""Per-round proposal lengths: how many of the γ drafted slots each request sends to the target.

Each decoding round the engine asks a :class:`Policy` for ℓ_r ∈ [0, γ] per active request; the
target then verifies the pending token plus ℓ_r drafts, so a round costs Σ_r (ℓ_r + 1) batch tokens.

- :class:`FixedLength` — ℓ = min(length, γ) (plain speculative decoding; length 1 ≈ MTP-1).
- :class:`PerSlotThreshold` ("threshold") — DeepSpec's ``--confidence-threshold``: cut the block at
  the first slot whose own confidence c_{r,j} is below a fixed threshold.
- :class:`CumulativeThreshold` ("cumulative-threshold") — keep the leading slots whose prefix
  survival a_{r,j} = Π_{i≤j} c_{r,i} clears a fixed threshold.
- :class:`PrefixScheduler` — the hardware-aware prefix scheduler (DSpark paper, Algorithm 1): spend
  verification tokens where the expected accepted length per second, Θ = τ*·SPS(B), still grows,
  with SPS(B) the target's measured steps/second at B batch tokens (:class:`CostTable`, written
  by ``scripts/eval/profile_engine.py``).

Why the early stop matters (paper Appendix A): a slot's survival a_{r,j} is known before the draft
token x_{r,j} is sampled (c_{r,j} depends on x_{r,<j} only). Rejection sampling stays exact
when "verify slot j" is decided from x_{r,<j} — a stopping rule; both threshold rules are one (slot
j is verified iff c_{r,1..j} pass). Admitting candidates greedily
and stopping at the first admission that does not raise Θ decides slot j from the candidates
ranked at or above it, all of which are known before x_{r,j}. Searching for the best prefix of
the whole ranked list instead lets a_{r,j+1} — a function of x_{r,j} — decide whether slot j is
verified, and the output is no longer the target's (tests/test_scheduler.py reproduces the
paper's 0.7 → 0.85 example).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from deepspec.decoding.confidence import cumulative_lengths, per_slot_lengths
from deepspec.errors import DeepSpecError

PROFILE_HINT = "run scripts/eval/profile_engine.py to measure one for your target and device"


class SchedulerError(DeepSpecError, ValueError):
    """A policy or cost table that cannot work; the message says what to change."""


# ----------------------------------------------------------------------------- cost table


@dataclass
class CostTable:
    """Measured verification speed SPS(B) (target forward steps per second at B batch tokens)."""

    batch_tokens: list[int]
    steps_per_second: list[float]
    device: str = "unknown"
    context_len: int = 0
    dtype: str = "unknown"
    target: str = "unknown"
    extra: dict = field(default_factory=dict)  # whatever else the profiler recorded, kept on save

    def __post_init__(self):
        for key, values in (("batch_tokens", self.batch_tokens), ("steps_per_second", self.steps_per_second)):
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise SchedulerError(f"cost table {key} must be a list of numbers, got {values!r}; {PROFILE_HINT}")
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Real)]
            if bad:
                raise SchedulerError(f"cost table {key} must hold numbers only, got {bad[0]!r}; {PROFILE_HINT}")
        b, s = list(self.batch_tokens), list(self.steps_per_second)
        if not b:
            raise SchedulerError(f"cost table has no measured points; {PROFILE_HINT}")
        if len(b) != len(s):
            raise SchedulerError(
                f"cost table has {len(b)} batch_tokens but {len(s)} steps_per_second; they must pair up one to one"
            )
        if any(int(x) != x or x < 1 for x in b):
            raise SchedulerError(f"cost table batch_tokens must be positive integers, got {b}")
        if any(y <= x for x, y in zip(b, b[1:])):
            raise SchedulerError(f"cost table batch_tokens must be strictly ascending, got {b}")
        if any(not (math.isfinite(v) and v > 0) for v in s):
            raise SchedulerError(f"cost table steps_per_second must be positive and finite, got {s}")
        self.batch_tokens = [int(x) for x in b]
        self.steps_per_second = [float(v) for v in s]
        self._b = np.asarray(self.batch_tokens, dtype=np.float64)
        self._t = 1.0 / np.asarray(self.steps_per_second, dtype=np.float64)  # seconds per step
        # Beyond the last point, time grows linearly as between the last two points; a negative
        # slope (measurement noise) would make huge batches free, so it is floored at 0.
        self._slope = max(0.0, (self._t[-1] - self._t[-2]) / (self._b[-1] - self._b[-2])) if len(b) > 1 else 0.0

    def step_time(self, batch_tokens):
        """Seconds per verification step at B tokens (scalar or array): linear in time between
        measured points, clamped below the first, linear from the last two points above the last."""
        x = np.asarray(batch_tokens, dtype=np.float64)
        t = np.interp(x, self._b, self._t)
        t = np.where(x > self._b[-1], self._t[-1] + self._slope * (x - self._b[-1]), t)
        return float(t) if t.ndim == 0 else t

    def sps(self, batch_tokens):
        """Steps per second at B tokens (scalar or array), 1 / :meth:`step_time`."""
        t = self.step_time(batch_tokens)
        return 1.0 / t

    def to_dict(self) -> dict:
        return {
            **self.extra,
            "device": self.device,
            "context_len": self.context_len,
            "batch_tokens": self.batch_tokens,
            "steps_per_second": self.steps_per_second,
            "dtype": self.dtype,
            "target": self.target,
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "cost table") -> "CostTable":
        missing = [k for k in ("batch_tokens", "steps_per_second") if k not in data]
        if missing:
            raise SchedulerError(f"{source} lacks {missing}; {PROFILE_HINT}")
        known = {"batch_tokens", "steps_per_second", "device", "context_len", "dtype", "target"}
        try:
            return cls(
                batch_tokens=list(data["batch_tokens"]),
                steps_per_second=list(data["steps_per_second"]),
                device=str(data.get("device", "unknown")),
                context_len=int(data.get("context_len", 0)),
                dtype=str(data.get("dtype", "unknown")),
                target=str(data.get("target", "unknown")),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except SchedulerError as exc:
            raise SchedulerError(f"{source}: {exc}") from None
        except (TypeError, ValueError) as exc:  # e.g. "context_len": "long", or a number where a list belongs
            raise SchedulerError(f"{source}: a field has the wrong type ({exc}); {PROFILE_HINT}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "CostTable":
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise SchedulerError(f"cost table {str(path)!r} does not exist; {PROFILE_HINT}") from None
        except json.JSONDecodeError as exc:
            raise SchedulerError(f"cost table {str(path)!r} is not valid JSON ({exc}); {PROFILE_HINT}") from None
        if not isinstance(data, dict):
            raise SchedulerError(f"cost table {str(path)!r} must hold a JSON object; {PROFILE_HINT}")
        return cls.from_dict(data, source=f"cost table {str(path)!r}")

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")


# ----------------------------------------------------------------------------- policies


def _check_confidences(confidences: torch.Tensor, *, gamma: int) -> np.ndarray:
    """[R, γ] confidences as float64 numpy, after checking shape and range."""
    assert confidences.dim() == 2 and confidences.shape[1] == gamma, (
        f"confidences must be [num_requests, gamma={gamma}], got {tuple(confidences.shape)}; "
        "pass one calibrated confidence per drafted slot"
    )
    c = confidences.detach().to("cpu", torch.float64).numpy()
    assert np.isfinite(c).all() and (c >= 0).all() and (c <= 1).all(), (
        "confidences must be probabilities in [0, 1] (apply the sigmoid and calibration first); "
        f"got range [{np.nanmin(c) if c.size else 0}, {np.nanmax(c) if c.size else 0}] or NaN"
    )
    return c


class Policy:
    """Decides per round how many drafted slots each request sends to verification."""

    name: str = "policy"

    def plan(self, confidences: torch.Tensor | None, *, gamma: int, num_requests: int | None = None) -> torch.Tensor:
        """Proposal lengths ℓ_r ∈ [0, γ], long [R].

        ``confidences`` [R, γ]: calibrated c_{r,k} ∈ [0, 1], or None for drafts without a
        confidence head (then ``num_requests`` gives R).
        """
        raise NotImplementedError

    def reset(self) -> None:
        """Forget per-run state (a new decoding run starts)."""

    @staticmethod
    def _num_requests(confidences, num_requests) -> int:
        if confidences is not None:
            return int(confidences.shape[0])
        assert num_requests is not None, "without confidences pass num_requests= so the policy knows R"
        return int(num_requests)

    @staticmethod
    def _device(confidences) -> torch.device:
        return confidences.device if confidences is not None else torch.device("cpu")


class FixedLength(Policy):
    """ℓ = min(length, γ) for every request; confidences are ignored."""

    def __init__(self, length: int):
        if int(length) != length or length < 0:
            raise SchedulerError(f"fixed proposal length must be an integer >= 0, got {length!r}")
        self.length = int(length)
        self.name = f"fixed-{self.length}"

    def plan(self, confidences, *, gamma, num_requests=None):
        R = self._num_requests(confidences, num_requests)
        return torch.full((R,), min(self.length, gamma), dtype=torch.long, device=self._device(confidences))


class _ThresholdPolicy(Policy):
    """ℓ_r from a fixed threshold on the confidences (γ without confidences); subclasses pick the rule."""

    kind: str  # the policy's name in build_policy / eval.py --scheduler

    def __init__(self, threshold: float):
        if not 0.0 <= threshold <= 1.0:
            raise SchedulerError(f"threshold must lie in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.name = f"{self.kind}-{self.threshold:g}"

    @staticmethod
    def _lengths(conf: np.ndarray, *, threshold: float) -> np.ndarray:
        raise NotImplementedError

    def plan(self, confidences, *, gamma, num_requests=None):
        if confidences is None:
            return torch.full((self._num_requests(None, num_requests),), gamma, dtype=torch.long)
        ell = self._lengths(_check_confidences(confidences, gamma=gamma), threshold=self.threshold)
        return torch.as_tensor(ell, dtype=torch.long, device=confidences.device)


class PerSlotThreshold(_ThresholdPolicy):
    """DeepSpec's rule: ℓ_r = index of the first slot with c_{r,j} < threshold (γ if none)."""

    kind = "threshold"
    _lengths = staticmethod(per_slot_lengths)  # the same rule the offline sweep replays


class CumulativeThreshold(_ThresholdPolicy):
    """ℓ_r = number of leading slots with prefix survival a_{r,j} = Π_{i≤j} c_{r,i} ≥ threshold."""

    kind = "cumulative-threshold"
    _lengths = staticmethod(cumulative_lengths)  # the same rule the offline sweep replays


def rank_candidates(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates (r, j) with a_{r,j} > 0, best first: (rows, slots 1..γ, survivals a).

    Order: a descending; ties by slot ascending (so slot j−1 always precedes slot j, which
    a_{r,j} ≤ a_{r,j−1} alone does not guarantee on ties); then by the confidence prefix
    c_{r,1..j} (lexicographically descending) so that reordering requests does not reorder
    candidates; only candidates with identical prefixes fall back to the request index. Every key
    of (r, j) is known before x_{r,j} is drawn, as losslessness needs.
    """
    R, G = conf.shape
    a = np.cumprod(conf, axis=1)
    rows = np.repeat(np.arange(R), G)
    slots = np.tile(np.arange(1, G + 1), R)
    flat = a.reshape(-1)
    keep = flat > 0
    rows, slots, flat = rows[keep], slots[keep], flat[keep]
    prefix = np.where(np.arange(G)[None, :] < slots[:, None], conf[rows], 0.0)  # c_{r,1..j}, zero-padded
    # np.lexsort: the last key is the primary one.
    keys = [rows] + [-prefix[:, k] for k in reversed(range(G))] + [slots, -flat]
    order = np.lexsort(keys)
    return rows[order], slots[order], flat[order]


def theta_curve(survivals: np.ndarray, *, num_requests: int, cost_table: CostTable) -> np.ndarray:
    """Θ_k = τ*_k · SPS(B_k) after admitting the first k ranked candidates, k = 0..N.

    τ*_k = R + Σ_{i<k} a_i (each request commits at least its pending token), B_k = R + k.
    """
    # Sequential sum from R, the same float arithmetic as admitting one candidate at a time.
    tau = np.cumsum(np.concatenate([[float(num_requests)], survivals]))
    return tau * cost_table.sps(num_requests + np.arange(len(survivals) + 1))


def early_stop_budget(theta: np.ndarray) -> int:
    """Algorithm 1: admit while Θ strictly rises; the first non-improving admission stops it."""
    rises = theta[1:] > theta[:-1]
    return int(np.cumprod(rises).sum())


def best_budget(theta: np.ndarray) -> int:
    """Unconstrained search: the k maximising Θ_k (smallest on ties). NOT lossless on the current step."""
    return int(np.argmax(theta))


class PrefixScheduler(Policy):
    """Hardware-aware prefix scheduler (DSpark Algorithm 1), optionally asynchronous (§5.2).

    Synchronous: rank candidates (r, j) by a_{r,j} (:func:`rank_candidates`); start with ℓ_r = 0,
    B = R, τ* = R, Θ_best = R·SPS(R); admit one at a time (ℓ_r ← j, B += 1, τ* += a_{r,j},
    Θ = τ*·SPS(B)); keep it if Θ > Θ_best, otherwise stop at once and return the best ℓ.

    Asynchronous (``asynchronous=True``): the total budget K (admitted slots) is taken from the
    confidences of two steps earlier, by an unconstrained search for the best K over all prefixes
    of that step's ranked list (so the budget can be computed off the critical path while later
    steps run); the current step admits its own top-K candidates by up-to-date a_{r,j}. With
    fewer than two steps of history the synchronous rule is used. Call :meth:`reset` between runs.

    Why the asynchronous rule stays lossless. Speculative sampling reproduces the target exactly
    for each request r as long as "is slot j verified" is decided without looking at x_{r,j} or
    later draft tokens of r (decisions may use anything drawn before: earlier tokens of r, other
    requests, previous steps). (1) K is a function of step t−2 only. At step t, the draft tokens
    are fresh samples given the committed context, and the committed tokens of earlier steps
    were already target-distributed given their context, so conditioning on K (or on anything
    else from the past, e.g. rejected drafts) does not bias step t. That is why an unconstrained
    search, unsafe on the current step (its best K depends on a_{r,j+1}, i.e. on x_{r,j}), is
    safe on a past one. (2) Given K, slot (r, j) is verified iff its rank in the current ranked
    list is < K. Its rank counts the candidates ranked above it: slots i < j of the same request
    (a_{r,i} depends on x_{r,<i}) and other requests' slots; slots i > j of r never rank above it
    (tie-break by slot). So the decision uses x_{r,<j} only — the same stopping-rule structure as
    the synchronous early stop — and ℓ_r is prefix-closed. What is NOT claimed: the budget is
    optimal for the current step; when R changes between steps K is clamped to the current
    number of positive candidates, which costs throughput, never exactness.
    """

    def __init__(self, cost_table: CostTable, *, asynchronous: bool = False):
        if not isinstance(cost_table, CostTable):
            raise SchedulerError(f"PrefixScheduler needs a CostTable, got {type(cost_table).__name__}; {PROFILE_HINT}")
        self.cost_table = cost_table
        self.asynchronous = bool(asynchronous)
        self.name = "prefix-async" if self.asynchronous else "prefix"
        self._budgets: deque[int] = deque(maxlen=2)  # unconstrained best K of the last two steps
        self._warned = False
        self.last_budget = 0  # slots admitted in the latest plan (for logging)

    def reset(self) -> None:
        self._budgets.clear()
        self.last_budget = 0

    def plan(self, confidences, *, gamma, num_requests=None):
        if confidences is None:
            if not self._warned:
                warnings.warn(
                    f"{self.name}: the draft has no confidence head; falling back to a fixed "
                    f"proposal length of gamma={gamma}",
                    stacklevel=2,
                )
                self._warned = True
            return FixedLength(gamma).plan(None, gamma=gamma, num_requests=num_requests)
        conf = _check_confidences(confidences, gamma=gamma)
        R = conf.shape[0]
        if R == 0:
            return torch.zeros(0, dtype=torch.long, device=confidences.device)
        rows, slots, survivals = rank_candidates(conf)
        theta = theta_curve(survivals, num_requests=R, cost_table=self.cost_table)
        if self.asynchronous and len(self._budgets) == 2:
            budget = min(self._budgets[0], len(survivals))  # K from step t−2
        else:
            budget = early_stop_budget(theta)
        if self.asynchronous:
            self._budgets.append(best_budget(theta))
        self.last_budget = budget
        return torch.as_tensor(self._lengths(rows[:budget], slots[:budget], R), device=confidences.device)

    @staticmethod
    def _lengths(rows: np.ndarray, slots: np.ndarray, num_requests: int) -> np.ndarray:
        ell = np.bincount(rows, minlength=num_requests).astype(np.int64)
        top = np.zeros(num_requests, dtype=np.int64)
        np.maximum.at(top, rows, slots)
        # Ranking puts slot j−1 before slot j, so admitted slots of a request form 1..ℓ_r.
        assert (top == ell).all(), "prefix scheduler admitted a slot without its predecessor; this is a bug"
        return ell


THRESHOLD_POLICIES = {"threshold": PerSlotThreshold, "cumulative-threshold": CumulativeThreshold}
POLICY_NAMES = ("fixed", *THRESHOLD_POLICIES, "prefix")


def build_policy(
    name: str,
    *,
    gamma: int,
    threshold: float | None = None,
    cost_table: CostTable | str | os.PathLike | None = None,
    asynchronous: bool = False,
) -> Policy:
    """A policy by name: "fixed" (ℓ = γ), "threshold" (per-slot c_k ≥ t, DeepSpec's rule) or
    "cumulative-threshold" (prefix survival a_k ≥ t), both needing ``threshold``; "prefix" (needs a
    cost table: a :class:`CostTable` or the path of a profiler JSON)."""
    if gamma < 1:
        raise SchedulerError(f"gamma must be >= 1, got {gamma}")
    if name == "fixed":
        return FixedLength(gamma)
    if name in THRESHOLD_POLICIES:
        if threshold is None:
            raise SchedulerError(f"the {name} policy needs a threshold in [0, 1] (e.g. 0.5)")
        return THRESHOLD_POLICIES[name](threshold)
    if name == "prefix":
        if cost_table is None:
            raise SchedulerError(
                f"the prefix scheduler needs a cost table (steps/second vs batch tokens); "
                f"{PROFILE_HINT} and pass its JSON"
            )
        if not isinstance(cost_table, CostTable):
            cost_table = CostTable.from_json(cost_table)
        return PrefixScheduler(cost_table, asynchronous=asynchronous)
    raise SchedulerError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
