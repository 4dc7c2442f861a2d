#!/usr/bin/env python
"""One-command device check: correctness, training throughput, decoding costs and cache I/O, as one JSON.

    bash bench/gpu_check.sh                           # GPU node: Qwen3-4B shapes, sized for < 5 min on one H200
    bash bench/gpu_check.sh --device cpu --small      # everywhere (CI): tiny shapes, CUDA-only checks skipped

Writes ``gpu_check.json`` (every section, every check with a status), ``cost_table.json`` (the target's
verification cost table, the format ``scripts/eval/simulate_serving.py --cost-table`` reads) and
``gpu_check.log`` into ``--out`` (default ``$OUT``, else ``./gpu_check_out``). Exit status 1 when a check
failed or a section stopped on an error.

Sections (``--sections``):

checks   correctness, the same functions as tests/test_gpu_check.py (pytest -m gpu): the DSpark block-sparse
         flex attention forward / backward against the eager path (fp32 and bf16 autocast); Eagle3's TTT
         on the device against the CPU; one training step of each algorithm with the trainer (bf16 autocast);
         the same under FSDP (NCCL, world size 1) with train.torch_compile=True and no recompilation after
         step 2 (CUDA only); greedy speculative decoding equal to ``generate`` for a tiny random target.
         A check is "pass", "fail: why" or "skipped: why".
train    the trainer's step time, tokens/s, MFU, peak memory and data-wait share for a 5-layer DSpark and
         a 1-layer Eagle3 (TTT 7) over a synthetic target cache of Qwen3-4B shape; eager, and compiled on
         CUDA. FLOPs per step are counted by torch.utils.flop_counter.FlopCounterMode over one step with
         dense-mask attention (the formula is written into the JSON).
decode   target verification time for requests x tokens per request (profile_engine.measure), the
         cost table, and the DSpark draft's round time at batch 1 / 8 / 32 with the Markov loop's share.
cache    TargetCacheWriter fed from device tensors (and from host tensors) vs a raw sequential write of
         the same bytes to the same disk (bench/bench_target_cache.py's helpers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from gpu_check_common import FULL, SECTIONS, SMALL
from gpu_check_correctness import correctness_checks, run_check
from gpu_check_perf import cache_section, decode_section, train_section

# ---------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    from deepspec.cli import add_output_dir

    p = argparse.ArgumentParser(
        prog="bench/gpu_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="where to run (default: cuda when a GPU is visible, else cpu); CUDA-only checks are skipped on cpu",
    )
    p.add_argument(
        "--small",
        action="store_true",
        help="tiny shapes everywhere (hidden 64, vocab 512, 256-token samples, 16 anchors; small cache I/O) "
        "instead of Qwen3-4B's (hidden 2560, 36 layers, vocab 151936, 4096 tokens, 512 anchors x 7)",
    )
    add_output_dir(
        p,
        aliases=("--out",),
        type=Path,
        default=None,
        help="folder for gpu_check.json, cost_table.json and gpu_check.log (default: $OUT, else ./gpu_check_out)",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="sections to run (default: all); the others are recorded as skipped",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="scratch folder for the synthetic caches and the cache I/O files, i.e. the disk measured "
        "(default: a temp folder under $TMPDIR, removed at the end)",
    )
    p.add_argument(
        "--cache-gb", type=float, default=None, help="GiB written per cache I/O measurement (default: 2, --small 0.01)"
    )
    p.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="timed training steps per run after warm-up (default: 4, --small 2)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.train_steps is not None and args.train_steps < 1:
        p.error("--train-steps must be >= 1")
    if args.cache_gb is not None and not args.cache_gb > 0:
        p.error("--cache-gb must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda but no CUDA device is visible; use --device cpu", file=sys.stderr)
        return 2
    if device == "cuda":
        torch.cuda.set_device(0)
        device = "cuda:0"
    sizes = SMALL if args.small else FULL
    if args.train_steps:
        sizes = dataclasses.replace(sizes, train_steps=args.train_steps)
    caller = Path(os.environ.get("GPU_CHECK_CWD") or ".")  # set by gpu_check.sh (env.sh changes directory)
    out_dir = caller / (args.output_dir or Path(os.environ.get("OUT") or "gpu_check_out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "gpu_check.log"
    log_file = open(log_path, "w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    class Tee:  # what the trainer and torch say on stderr goes into the log too
        def __init__(self, stream):
            self.stream = stream

        def write(self, text):
            log_file.write(text)
            return self.stream.write(text)

        def flush(self):
            log_file.flush()
            self.stream.flush()

        def __getattr__(self, name):
            return getattr(self.stream, name)

    stderr, sys.stderr = sys.stderr, Tee(sys.stderr)

    own_work = args.work_dir is None
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_")) if own_work else caller / args.work_dir
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report = {
        "command": " ".join(["bench/gpu_check.sh", *(sys.argv[1:] if argv is None else argv)]),
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "small": bool(args.small),
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
        },
        "torch_threads": torch.get_num_threads(),
        "sections": {},
    }
    failed = False
    try:
        for section in SECTIONS:
            if section not in args.sections:
                report["sections"][section] = {"status": "skipped: not in --sections"}
                continue
            log(f"[gpu_check] {section}")
            t0 = time.perf_counter()
            try:
                if section == "checks":
                    body = {}
                    for name, (fn, kwargs) in correctness_checks(device, workdir=workdir).items():
                        log(f" check {name}")
                        body[name] = run_check(fn, kwargs, log)
                    failed |= any(c["status"].startswith("fail") for c in body.values())
                    body = {"checks": body}
                elif section == "train":
                    body = train_section(device, sizes=sizes, workdir=workdir, log=log)
                    failed |= any(
                        str(body[a][m].get("status", "")).startswith("error")
                        for a in ("dspark", "eagle3")
                        for m in ("eager", "compiled", "flops_per_step")
                    )
                elif section == "decode":
                    body = decode_section(device, sizes=sizes, out_dir=out_dir, log=log)
                else:
                    gb = args.cache_gb if args.cache_gb is not None else sizes.cache_gb
                    body = cache_section(device, sizes=sizes, workdir=workdir, gb=gb, log=log)
                body["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - one broken section does not hide the others
                failed = True
                body = {"status": f"error: {type(exc).__name__}: {exc}"[:600], "traceback": traceback.format_exc()}
                log(f"  {body['status']}")
            body["seconds"] = time.perf_counter() - t0
            report["sections"][section] = body
    finally:
        if own_work:
            shutil.rmtree(workdir, ignore_errors=True)
        report["total_seconds"] = time.perf_counter() - t_start
        report["failed"] = failed
        path = out_dir / "gpu_check.json"
        path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        log(f"[gpu_check] {'FAILED' if failed else 'ok'} in {report['total_seconds']:.1f} s -> {path}")
        sys.stderr = stderr
        log_file.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
