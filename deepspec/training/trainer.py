"""The trainer, top to bottom: pre-flight checks, data, model, optimizer, resume, then the step loop.

One optimizer step consumes one global batch = ``world_size x local_batch_size x grad_accum``
samples. Losses are *sums* (``deepspec.models.losses``): each micro-batch back-propagates its
``loss_sum``; after the last micro-batch the weight sums of all ranks are all-reduced and the
gradients are scaled so the update is ``d(Σ loss_sum) / Σ weight_sum`` over the whole global
batch, independent of how tokens fall across ranks and micro-batches.

How a micro-batch becomes loss sums, and how sums become metrics, is the algorithm's
(:mod:`deepspec.algorithms`, picked by ``model.algorithm``); the loop here is the same for all.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from typing import Callable

import torch

from deepspec.algorithms import ALGORITHMS, get_algorithm
from deepspec.models import DraftLoadError, build_draft, draft_config_from_target, load_state_strict
from deepspec.models.blocks import resolve_backend
from deepspec.precision import describe_choice
from deepspec.targets import load_target_config
from deepspec.target_files import load_frozen_target_pieces
from deepspec.training import checkpoint as ckpt
from deepspec.training.data import StepSampler, build_loader
from deepspec.training.data_source import TrainingError, check_dataset_size, open_data_source
from deepspec.training.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_sums,
    barrier,
    broadcast_object,
    has_process_group,
    resolve_sharding,
    wrap_model,
)
from deepspec.training.fast_paths import StepPaths, fallback, mark_sequence_dynamic, say
from deepspec.training.metrics import MetricsLogger
from deepspec.training.schedule import build_scheduler


def grad_accumulation(*, global_batch_size: int, world_size: int, local_batch_size: int) -> int:
    per_pass = world_size * local_batch_size
    if global_batch_size % per_pass:
        raise TrainingError(
            f"train.global_batch_size={global_batch_size} is not a multiple of world size ({world_size}) x "
            f"train.local_batch_size ({local_batch_size}) = {per_pass}; set train.global_batch_size to a multiple of "
            f"{per_pass}, or change train.local_batch_size / the number of workers (--nproc, CUDA_VISIBLE_DEVICES)"
        )
    return global_batch_size // per_pass


def anchor_generator(*, seed: int, step: int, chunk: int) -> torch.Generator:
    """Random draws of a micro-batch depend only on (seed, step, its chunk of the global batch).

    So a resumed run replays them, and the same global batch split over more workers draws the same anchors.
    """
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 65_537 + chunk)


class Trainer:
    def __init__(
        self,
        *,
        cfg,
        cache_dir: str | None = None,
        info: DistInfo,
        train_data_paths: list[str] | None = None,
        on_step_end: Callable[[int], None] | None = None,
        stop_after_step: int | None = None,
        progress: bool = True,
    ):
        self.cfg, self.info, self.device = cfg, info, info.device
        self.on_step_end, self.stop_after_step = on_step_end, stop_after_step
        check_trainer_name(cfg)
        self.algorithm = get_algorithm(cfg.model.algorithm)
        # Pre-flight: everything that can be wrong is checked before any work.
        t = cfg.train
        self.grad_accum = grad_accumulation(
            global_batch_size=t.global_batch_size, world_size=info.world_size, local_batch_size=t.local_batch_size
        )
        target_config = load_target_config(cfg.model.target_model_name_or_path)
        self._build_data(cache_dir=cache_dir, train_data_paths=train_data_paths, target_config=target_config)
        self._build_draft(target_config)
        self.cfg_dict = cfg.to_dict()
        self.ckpt_dir = cfg.logging.checkpoint_dir
        resume = self._load_resume_weights()
        self._wrap_model()
        self._build_optimizer()
        self.step = 0
        self._saved_step = -1
        if resume is not None:
            self._restore(*resume)
        self._start_logging(progress=progress)

    # -- the steps of __init__ ---------------------------------------------------------------------
    def _build_data(self, *, cache_dir: str | None, train_data_paths: list[str] | None, target_config) -> None:
        """The data source (cache or online), checked; the step sampler, the loader and the run's length."""
        t = self.cfg.train
        dataset, self.collate_fn, source = open_data_source(
            cfg=self.cfg,
            info=self.info,
            cache_dir=cache_dir,
            train_data_paths=train_data_paths,
            target_config=target_config,
        )
        self.data_identity = dataset.identity  # recorded with each checkpoint, checked on resume
        check_dataset_size(dataset=dataset, source=source, global_batch_size=t.global_batch_size)
        self.sampler = StepSampler(
            num_samples=len(dataset),
            seed=int(self.cfg.seed),
            rank=self.info.rank,
            world_size=self.info.world_size,
            local_batch_size=t.local_batch_size,
            grad_accum=self.grad_accum,
        )
        # Online, the target runs in this process inside collate (loader workers would each hold a copy), and its
        # states may already be on the GPU: data.num_workers and pinning apply to the cache only.
        offline = cache_dir is not None
        self.loader = build_loader(
            dataset,
            self.sampler,
            collate_fn=self.collate_fn,
            num_workers=int(self.cfg.data.num_workers) if offline else 0,
            pin_memory=offline and self.device.type == "cuda",
        )
        spe = self.sampler.steps_per_epoch
        self.total_steps = int(t.max_train_steps) if t.max_train_steps else int(t.num_train_epochs) * spe

    def _build_draft(self, target_config) -> None:
        """The draft, fp32 master weights (bf16 only inside autocast), with the target's frozen embedding and head."""
        torch.manual_seed(int(self.cfg.seed))  # identical init on every rank
        self.draft = build_draft(draft_config_from_target(target_config, self.cfg.model))
        embed, lm_head = load_frozen_target_pieces(self.cfg.model.target_model_name_or_path, config=target_config)
        self.draft.load_frozen_weights(embed=embed, lm_head=lm_head)

    def _load_resume_weights(self) -> tuple[dict, str] | None:
        """Load the newest checkpoint's weights into the draft; its training state and folder, or None.

        Rank 0 picks the newest readable checkpoint (an unreadable one falls back to the previous step, said on
        stderr); the other ranks read the folder it picked.
        """
        found = ckpt.resume_point(self.ckpt_dir) if self.info.is_main else None
        latest = broadcast_object(str(found[0]) if found else "", self.info)
        if not latest:
            return None
        state, tensors = found[1:] if found else ckpt.read_checkpoint(latest)
        ckpt.check_resume_config(saved=state["config"], current=self.cfg_dict, folder=latest)
        ckpt.check_resume_data(saved=state.get("data"), current=self.data_identity, folder=latest)
        try:
            load_state_strict(self.draft, tensors, source=str(latest))
        except DraftLoadError as exc:
            raise TrainingError(f"cannot resume: {exc}") from None
        return state, latest  # the weights now live in the draft; the loaded copy is dropped here

    def _wrap_model(self) -> None:
        """The draft on its device, wrapped for DDP or FSDP, and compiled if asked."""
        t, m = self.cfg.train, self.cfg.model
        self.draft.to(self.device).train()
        self.strategy = resolve_sharding(t.sharding_strategy, sharded_world=has_process_group())
        self.wrapped = wrap_model(self.draft, strategy=self.strategy, info=self.info)
        # torch.compile and flex attention run wherever torch has them (CPU too); the first step proves them
        # and falls back once if they fail (deepspec.training.fast_paths).
        self.paths = StepPaths(
            compiled=bool(t.torch_compile), attention_backend=resolve_backend(m.attention_backend, self.device)
        )
        self.paths_proven = False
        self.model = torch.compile(self.wrapped) if self.paths.compiled else self.wrapped

    def _build_optimizer(self) -> None:
        """AdamW over the trainable parameters, and its learning-rate schedule."""
        t = self.cfg.train
        self.params = self.draft.trainable_parameters()
        self.optimizer = torch.optim.AdamW(
            self.params, lr=float(t.lr), betas=tuple(t.adam_betas), weight_decay=float(t.weight_decay)
        )
        self.scheduler = build_scheduler(
            self.optimizer, total_steps=self.total_steps, warmup_ratio=float(t.warmup_ratio)
        )

    def _start_logging(self, *, progress: bool) -> None:
        """Say the compute dtype and open the metrics log at the current step.

        bf16 autocast only where it is fast (GPUs, CPUs with bf16 units); said once, recorded per log line.
        """
        choice = describe_choice(self.cfg.train.precision, self.device)
        self.precision = choice["compute_dtype"]
        if self.info.is_main:
            print(f"[train] compute dtype {self.precision}: {choice['reason']}", file=sys.stderr)
        self.metrics = MetricsLogger(
            checkpoint_dir=self.ckpt_dir,
            tensorboard_dir=self.cfg.logging.tensorboard_dir,
            total_steps=self.total_steps,
            start_step=self.step,
            enabled=self.info.is_main,
            progress=progress,
        )

    # -- one micro-batch -> loss sums (per algorithm) ----------------------------------------------
    def compute_sums(self, batch: dict, *, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.algorithm.compute_sums(
            model=self.model,
            draft=self.draft,
            batch=batch,
            model_cfg=self.cfg.model,
            generator=generator,
            target_logits=self._target_logits,
            attention_backend=self.paths.attention_backend,
        )

    def _target_logits(self, fn):
        """Target logits use the draft's frozen LM head; under FSDP it must be gathered first."""
        unshard = getattr(self.draft, "unshard", None) if self.strategy != "no_shard" else None
        with torch.no_grad():
            if unshard is None:
                return fn()
            unshard()
            try:
                return fn()
            finally:
                self.draft.reshard()

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        info = self.info
        spe, log_every = self.sampler.steps_per_epoch, max(1, int(self.cfg.logging.logging_steps))
        ckpt_every = int(self.cfg.logging.checkpointing_steps or 0)
        last: dict = {}
        if self.step >= self.total_steps and info.is_main:
            print(
                f"training already complete: {self.ckpt_dir}/step_{self.step} (raise train.max_train_steps or "
                "use a new exp_name to train more)"
            )
        window_t0, window_wait, window_tokens = time.perf_counter(), 0.0, 0
        window_fwd = self._target_forward_s()
        while self.step < self.total_steps:
            epoch, in_epoch = divmod(self.step, spe)
            self.sampler.set_position(epoch=epoch, step_in_epoch=in_epoch)
            batches = iter(self.loader)
            for _ in range(in_epoch, spe):
                record, wait = self.train_step(batches)
                self.step += 1
                window_wait += wait
                window_tokens += int(record.pop("num_tokens"))
                self.metrics.step(loss=record["loss"], lr=record["lr"])
                if self.step % log_every == 0 or self.step == self.total_steps:
                    elapsed = max(time.perf_counter() - window_t0, 1e-9)
                    last = {
                        "step": self.step,
                        "epoch": epoch,
                        **record,
                        "tokens_per_s": window_tokens / elapsed,
                        "data_wait_fraction": min(1.0, window_wait / elapsed),
                        "target_forward_s": self._target_forward_s() - window_fwd,
                        "target_forward_fraction": min(1.0, (self._target_forward_s() - window_fwd) / elapsed),
                        "precision": self.precision,
                    }
                    self.metrics.log(last)
                    window_t0, window_wait, window_tokens = time.perf_counter(), 0.0, 0
                    window_fwd = self._target_forward_s()
                if (ckpt_every and self.step % ckpt_every == 0) or self.step == self.total_steps:
                    self.save()
                if self.on_step_end is not None:
                    self.on_step_end(self.step)  # test hook (e.g. simulate a crash)
                if self.step >= self.total_steps or self.step == self.stop_after_step:
                    break
            if self.step == self.stop_after_step:
                if self._saved_step != self.step:
                    self.save()  # a planned stop keeps its progress; the next run resumes here
                break
        self.metrics.close()
        barrier(info)
        return last

    def _target_forward_s(self) -> float:
        """Seconds the live target has run in this process (0 offline; online it is part of the data wait)."""
        return float(getattr(self.collate_fn, "forward_s", 0.0))

    def train_step(self, batches) -> tuple[dict, float]:
        t = self.cfg.train
        fetched: list[dict] = []  # this step's micro-batches, kept so that a failed first step can run again
        wait = 0.0

        def micro_batch(i: int) -> dict:
            nonlocal wait
            if i == len(fetched):
                t0 = time.perf_counter()
                fetched.append(next(batches))
                wait += time.perf_counter() - t0
            return fetched[i]

        totals = self._accumulate(micro_batch) if self.paths_proven else self._first_step(micro_batch)
        totals["num_tokens"] = torch.tensor(float(sum(b["num_tokens"] for b in fetched)))
        reduced = all_reduce_sums(totals, self.info)
        weight = float(reduced["weight_sum"])
        # DDP/FSDP averaged gradients over ranks; turn that mean of sums into (sum of sums) / global weight.
        scale = self.info.world_size / weight if weight > 0 else 0.0
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(scale)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, float(t.max_grad_norm or float("inf")))
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        record = {
            **self.algorithm.summarize(reduced),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "num_tokens": float(reduced["num_tokens"]),
            "attention_backend": self.paths.attention_backend,
            "compiled": self.paths.compiled,
        }
        return record, wait

    def _accumulate(self, micro_batch: Callable[[int], dict]) -> dict[str, torch.Tensor]:
        """Forward + backward over the step's micro-batches; their loss sums, added up on the CPU."""
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        totals: dict[str, torch.Tensor] = {}
        for micro in range(self.grad_accum):
            fetched = micro_batch(micro)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in fetched.items() if k != "num_tokens"}
            if self.paths.compiled:
                mark_sequence_dynamic(batch)
            last_micro = micro == self.grad_accum - 1
            # DDP: all-reduce gradients once, on the last micro-batch.
            sync = (
                contextlib.nullcontext() if last_micro or not hasattr(self.model, "no_sync") else self.model.no_sync()
            )
            with sync:
                with autocast:
                    sums = self.compute_sums(
                        batch,
                        generator=anchor_generator(
                            seed=int(self.cfg.seed), step=self.step, chunk=micro * self.info.world_size + self.info.rank
                        ),
                    )
                sums["loss_sum"].backward()
            for k, v in sums.items():
                totals[k] = totals[k] + v.detach().float().cpu() if k in totals else v.detach().float().cpu()
        return totals

    def _first_step(self, micro_batch: Callable[[int], dict]) -> dict[str, torch.Tensor]:
        """The first step builds the compiled graphs and kernels; if that fails, fall back once and run it again."""
        for i in range(self.grad_accum):
            micro_batch(i)  # read up front: a data error is never taken for a kernel failure
        while True:
            try:
                totals = self._accumulate(micro_batch)
            except Exception as exc:  # noqa: BLE001 - compile and kernel failures share no exception type
                switch = fallback(self.paths, exc)
                if switch is None:
                    raise
            else:
                self.paths_proven = True
                return totals
            if self.info.is_main:
                say(switch.message)
            self._switch_paths(switch.paths)

    def _switch_paths(self, paths: StepPaths) -> None:
        """Drop the failed attempt: its partial gradients, DDP's pending reduction, FSDP's gathered weights."""
        self.optimizer.zero_grad(set_to_none=True)
        self.paths = paths
        if self.strategy == "no_shard":
            self.wrapped = wrap_model(self.draft, strategy=self.strategy, info=self.info)  # a fresh DDP reducer
        else:
            from torch.distributed.fsdp import FSDPModule

            for module in self.draft.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()
        self.model = torch.compile(self.wrapped) if paths.compiled else self.wrapped

    # -- checkpoints ---------------------------------------------------------------------------------
    def _model_and_optim_state(self) -> tuple[dict | None, dict | None]:
        if self.strategy == "no_shard":
            return self.draft.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)  # collective: every rank calls it
        model_state = get_model_state_dict(self.draft, options=opts)
        optim_state = get_optimizer_state_dict(self.draft, self.optimizer, options=opts)  # keyed by name
        if not self.info.is_main:
            return model_state, optim_state  # empty: only rank 0 holds (and saves) the full state
        return model_state, ckpt.optimizer_state_by_index(optim_state, self._param_names())

    def _param_names(self) -> list[str]:
        """The trainable parameters' names, in the optimizer's order (``trainable_parameters``)."""
        return [name for name, p in self.draft.named_parameters() if p.requires_grad]

    def save(self) -> None:
        model_state, optim_state = self._model_and_optim_state()
        rng = all_gather_object(ckpt.capture_rng(), self.info)
        if self.info.is_main:
            epoch, in_epoch = divmod(self.step, self.sampler.steps_per_epoch)
            state = {
                "step": self.step,
                "epoch": epoch,
                "step_in_epoch": in_epoch,
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "rng": rng,
                "world_size": self.info.world_size,
                "global_batch_size": int(self.cfg.train.global_batch_size),
                "data": self.data_identity,
            }
            ckpt.save_checkpoint(
                root=self.ckpt_dir,
                step=self.step,
                model=self.draft,
                model_state=model_state,
                training_state=state,
                config=self.cfg_dict,
                keep_last=self.cfg.logging.get("keep_last_checkpoints"),
            )
        self._saved_step = self.step
        barrier(self.info)

    def _restore(self, state: dict, folder: str) -> None:
        if state["global_batch_size"] != int(self.cfg.train.global_batch_size):
            raise TrainingError(
                f"cannot resume from {folder}: train.global_batch_size was {state['global_batch_size']} "
                f"there, {self.cfg.train.global_batch_size} now (the data position counts global "
                "batches); restore it or start a fresh run with a new exp_name"
            )
        # One saved layout (keyed by position) for DDP and FSDP: either resumes what the other saved.
        if self.strategy == "no_shard":
            self.optimizer.load_state_dict(ckpt.optimizer_state_by_index(state["optimizer"], self._param_names()))
        else:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.draft,
                self.optimizer,
                optim_state_dict=ckpt.optimizer_state_by_name(state["optimizer"], self._param_names()),
                options=StateDictOptions(full_state_dict=True),
            )
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            ckpt.restore_rng(rngs[self.info.rank])
        elif self.info.is_main:
            warnings.warn(
                f"resuming on {self.info.world_size} workers from a {len(rngs)}-worker checkpoint: global RNG "
                "states are not restored (data order and anchors are unaffected)",
                stacklevel=2,
            )


def check_trainer_name(cfg) -> None:
    """``train.trainer_cls`` is optional (the trainer follows from ``model.algorithm``); if set it must agree."""
    name = cfg.train.get("trainer_cls")
    if name is None:
        return
    known = sorted({a.trainer_name for a in ALGORITHMS.values()})
    if name not in known:
        raise TrainingError(
            f"train.trainer_cls={name!r} is unknown; choose one of {known}, or drop it: the trainer follows "
            "from model.algorithm"
        )
    algorithm = get_algorithm(cfg.model.algorithm)
    if algorithm.trainer_name != name:
        trains = "/".join(a.name for a in ALGORITHMS.values() if a.trainer_name == name)
        raise TrainingError(
            f"train.trainer_cls={name} trains {trains}, not model.algorithm={algorithm.name}; drop train.trainer_cls "
            f"(the trainer follows from model.algorithm) or set it to {algorithm.trainer_name}"
        )
