"""The one process launcher: training, the cache build and eval start their workers here.

Launch: one worker per visible GPU (``--device cuda``) or ``--nproc`` CPU workers, spawned with
torch.multiprocessing; one worker runs in this process. Several nodes (training): ``NNODES`` (node
count) and ``NODE_RANK`` (this node's rank) with ``MASTER_ADDR`` / ``MASTER_PORT``, so a worker's global
rank is ``NODE_RANK * nproc + local_rank``. Started by ``torchrun`` instead (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` set, torchrun's convention: global rank and world size), each
process is one worker and joins torchrun's rendezvous. Backend: NCCL on CUDA, gloo on CPU.

What listens where (:func:`plan_rendezvous`):

- One node: no port at all for the rendezvous -- the workers meet through a file store in a private
  temp folder (mode 0700) -- and gloo / NCCL bind their own sockets to the loopback interface
  (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` = ``lo``, unless set already). Nothing is
  reachable from another machine.
- Several nodes: global rank 0 (node rank 0, local rank 0) runs torch's TCPStore, which listens on
  ``MASTER_PORT`` on *every* interface (torch's store cannot bind one address); every worker on every
  node also opens gloo / NCCL sockets on ephemeral ports, on the interface that
  ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` name (default: gloo the address the host name
  resolves to, NCCL the first non-loopback interface). Run multi-node jobs on a private network, or
  firewall ``MASTER_PORT`` and the ephemeral range to the cluster's nodes.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from typing import Callable

import torch

from deepspec.errors import DeepSpecError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
# Every variable plan_launch reads (tests clear them for a single-node run).
LAUNCH_ENV_VARS = (*TORCHRUN_VARS, "NODE_RANK", "NNODES", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(DeepSpecError):
    """The requested workers / nodes cannot be started; the message says what to change."""


class WorkerError(DeepSpecError):
    """A worker process stopped on a project error; the message is that worker's."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class LaunchPlan:
    nproc: int  # workers this launch starts on this node
    node_rank: int
    num_nodes: int
    master_addr: str | None  # multi-node only: single-node runs meet through a file store
    master_port: int | None
    device_type: str
    torchrun: DistInfo | None = None  # started by torchrun: this process is that one worker


@dataclass(frozen=True)
class Rendezvous:
    """How the workers find each other: an ``init_method`` and env defaults set in every worker."""

    init_method: str
    env: dict[str, str] = field(default_factory=dict)


def plan_launch(*, device_type: str, nproc: int | None, multi_node: bool = True) -> LaunchPlan:
    """Workers for this node; ``multi_node=False`` (cache build, eval: independent shards) ignores the node env."""
    if multi_node and any(os.environ.get(k, "").strip() for k in TORCHRUN_VARS):
        return _torchrun_plan(device_type=device_type)
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise LaunchError("--device cuda but no GPU is visible; use --device cpu or check CUDA_VISIBLE_DEVICES")
        gpus = torch.cuda.device_count()
        nproc = nproc or gpus
        if nproc > gpus:
            raise LaunchError(
                f"--nproc {nproc} exceeds the {gpus} visible GPUs; lower --nproc or set CUDA_VISIBLE_DEVICES"
            )
    nproc = 1 if nproc is None else nproc
    if nproc < 1:
        raise LaunchError(f"--nproc must be >= 1, got {nproc}")
    single = LaunchPlan(
        nproc=nproc, node_rank=0, num_nodes=1, master_addr=None, master_port=None, device_type=device_type
    )
    if not multi_node:
        return single
    num_nodes = _env_int("NNODES", default=1, low=1)
    node_rank = _env_int("NODE_RANK", default=0, low=0)
    if not node_rank < num_nodes:
        raise LaunchError(
            f"NODE_RANK={node_rank} must be a node rank in [0, NNODES={num_nodes}); set NODE_RANK to this "
            "node's rank, or unset NODE_RANK and NNODES for a single-node run"
        )
    if num_nodes == 1:
        return single
    addr = os.environ.get("MASTER_ADDR", "").strip()
    if not addr or not os.environ.get("MASTER_PORT", "").strip():
        raise LaunchError(
            "multi-node training (NNODES > 1) needs MASTER_ADDR and MASTER_PORT in the "
            "environment: the address of node 0 and a free port there"
        )
    port = _env_int("MASTER_PORT", default=0, low=1, high=65535)
    return LaunchPlan(
        nproc=nproc,
        node_rank=node_rank,
        num_nodes=num_nodes,
        master_addr=addr,
        master_port=port,
        device_type=device_type,
    )


def _torchrun_plan(*, device_type: str) -> LaunchPlan:
    missing = [k for k in TORCHRUN_VARS if not os.environ.get(k, "").strip()]
    if missing:
        raise LaunchError(
            f"{', '.join(k for k in TORCHRUN_VARS if k not in missing)} set but not {', '.join(missing)}: "
            "RANK / WORLD_SIZE are torchrun's global rank and world size. Launch with torchrun, or for a "
            "node-level launch set NODE_RANK (this node) and NNODES (node count) and unset RANK / WORLD_SIZE"
        )
    world = _env_int("WORLD_SIZE", default=1, low=1)
    rank = _env_int("RANK", default=0, low=0, high=world - 1)
    local_world = _env_int("LOCAL_WORLD_SIZE", default=1, low=1)
    local_rank = _env_int("LOCAL_RANK", default=0, low=0, high=local_world - 1)
    if device_type == "cuda":
        if torch.cuda.device_count() < local_world:
            raise LaunchError(
                f"torchrun started {local_world} workers on this node but {torch.cuda.device_count()} GPUs are "
                "visible; lower --nproc-per-node or check CUDA_VISIBLE_DEVICES"
            )
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    info = DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)
    return LaunchPlan(
        nproc=1,
        node_rank=rank // local_world,
        num_nodes=max(1, world // local_world),
        master_addr=os.environ.get("MASTER_ADDR"),
        master_port=None,
        device_type=device_type,
        torchrun=info,
    )


def _env_int(name: str, *, default: int, low: int, high: int | None = None) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise LaunchError(f"{name}={text!r} in the environment must be {bounds}; fix or unset it")
    return value


def loopback_interface() -> str | None:
    """The loopback interface's name (``lo`` on Linux, ``lo0`` on macOS), or None when there is none."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


def plan_rendezvous(plan: LaunchPlan, *, store_dir: str | os.PathLike | None) -> Rendezvous:
    """Single node: a file store in ``store_dir`` and loopback-only sockets; several nodes: MASTER_ADDR's TCP store."""
    if plan.num_nodes == 1:
        if store_dir is None:
            raise LaunchError("a single-node launch needs a folder for its file store")
        lo = loopback_interface()
        env = {"GLOO_SOCKET_IFNAME": lo, "NCCL_SOCKET_IFNAME": lo} if lo else {}
        return Rendezvous(init_method=f"file://{os.path.abspath(store_dir)}/store", env=env)
    return Rendezvous(init_method=f"tcp://{plan.master_addr}:{plan.master_port}")


def launch(fn: Callable[[DistInfo], object], plan: LaunchPlan, *, process_group: bool = True):
    """Run ``fn(info)`` in every local worker; returns its result where it ran in this process, else None.

    A single worker (and a torchrun-started one) runs in this process. ``process_group=False``: the
    workers share no collectives (independent shards), so no process group is formed.
    """
    if plan.torchrun is not None:
        return _run_torchrun_worker(fn, plan, process_group=process_group)
    if plan.nproc == 1 and plan.num_nodes == 1:
        device = torch.device("cuda", 0) if plan.device_type == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return fn(DistInfo(rank=0, local_rank=0, world_size=1, device=device))
    store_dir = tempfile.mkdtemp(prefix="deepspec-rendezvous-") if plan.num_nodes == 1 else None  # mode 0700
    error_dir = tempfile.mkdtemp(prefix="deepspec-errors-")
    try:
        rdv = plan_rendezvous(plan, store_dir=store_dir)
        torch.multiprocessing.spawn(
            _worker, args=(plan, rdv, fn, error_dir, process_group), nprocs=plan.nproc, join=True
        )
    except (torch.multiprocessing.ProcessRaisedException, torch.multiprocessing.ProcessExitedException):
        # A worker that stopped on a project error left its one-line message: say that, not the
        # wrapped traceback; anything else is a bug and keeps its traceback.
        messages = [open(os.path.join(error_dir, name)).read() for name in sorted(os.listdir(error_dir))]
        if messages:
            raise WorkerError(messages[0]) from None
        raise
    finally:
        shutil.rmtree(error_dir, ignore_errors=True)
        if store_dir is not None:
            shutil.rmtree(store_dir, ignore_errors=True)
    return None


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _run_torchrun_worker(fn, plan: LaunchPlan, *, process_group: bool):
    import torch.distributed as dist

    info = plan.torchrun
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    if not (process_group and info.distributed):
        return fn(info)
    dist.init_process_group(backend=_backend(info.device), init_method="env://", timeout=datetime.timedelta(minutes=30))
    try:
        return fn(info)
    finally:
        dist.destroy_process_group()


def _worker(
    local_rank: int,
    plan: LaunchPlan,
    rdv: Rendezvous,
    fn: Callable[[DistInfo], object],
    error_dir: str,
    process_group: bool,
) -> None:
    import torch.distributed as dist

    world = plan.num_nodes * plan.nproc
    rank = plan.node_rank * plan.nproc + local_rank
    # Libraries that read the env (and our own children) must see *global* values from here on.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
    os.environ.update(LOCAL_WORLD_SIZE=str(plan.nproc))
    for key, value in rdv.env.items():  # a user's explicit interface choice wins
        os.environ.setdefault(key, value)
    if plan.device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // plan.nproc))  # workers share the cores
    if process_group:
        dist.init_process_group(
            backend=_backend(device),
            init_method=rdv.init_method,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=30),
        )
    try:
        fn(DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device))
    except DeepSpecError as exc:
        with open(os.path.join(error_dir, f"rank{rank:05d}.txt"), "w") as fh:
            fh.write(str(exc))
        raise SystemExit(2) from None
    finally:
        if process_group:
            dist.destroy_process_group()
