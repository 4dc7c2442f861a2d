"""The vLLM half of ``scripts/eval/engine_check.py``, run with vLLM's own interpreter (``.venv-vllm``).

    <vllm python> deepspec/eval/vllm_side.py JOB.json OUT.json

It imports the standard library and vLLM only (never ``deepspec``, which lives in the other environment).
``JOB.json`` (written by :mod:`deepspec.eval.engine_check`)::

    {"target": str, "dtype": "float32" | "bfloat16", "max_model_len": int, "max_num_seqs": int, "seed": int,
     "chat_template_kwargs": {...}, "sampling": {"temperature", "max_tokens", "stop_token_ids", "seed"},
     "prompts": [{"task", "prompt_index", "messages": [{"role", "content"}, ...]}, ...],
     "runs": [{"name", "method", "draft", "num_speculative_tokens"}, ...]}

For each run one ``vllm.LLM`` decodes every prompt with ``LLM.chat`` (the target's own chat template, the
job's ``chat_template_kwargs``, e.g. thinking off), top-k / top-p off, the given stop token ids, and
``per_request_spec_decode_metrics="detailed"``. ``OUT.json``::

    {"vllm_version": str, "runs": {name: {"seconds", "num_spec_tokens", "requests": [{"task",
     "prompt_index", "prompt_token_ids", "token_ids", "finish_reason", "per_step_accepted",
     "per_step_drafted"}, ...]} | {"error": str}}}

A run vLLM refuses (e.g. "Model Runner V1 does not support: dspark" on a CPU) records its error and the
next run goes on. The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time


def _llm(job: dict, run: dict):
    from vllm import LLM

    spec = None
    if run.get("draft"):
        spec = {"method": run["method"], "model": run["draft"], "num_speculative_tokens": run["num_speculative_tokens"]}
    return LLM(
        model=job["target"],
        dtype=job["dtype"],
        max_model_len=job["max_model_len"],
        max_num_seqs=job["max_num_seqs"],
        enforce_eager=True,
        seed=job["seed"],
        speculative_config=spec,
        per_request_spec_decode_metrics="detailed",
        generation_config="vllm",  # the job's sampling, not generation_config.json's defaults (top_k, top_p)
    )


def decode(job: dict, run: dict) -> dict:
    from vllm import SamplingParams

    llm = _llm(job, run)
    s = job["sampling"]
    params = SamplingParams(
        temperature=s["temperature"],
        top_k=-1,
        top_p=1.0,
        max_tokens=s["max_tokens"],
        stop_token_ids=s["stop_token_ids"],
        seed=s.get("seed"),
    )
    start = time.perf_counter()
    outputs = llm.chat(
        [p["messages"] for p in job["prompts"]],
        params,
        chat_template_kwargs=job["chat_template_kwargs"],
        use_tqdm=False,
    )
    seconds = time.perf_counter() - start
    requests = []
    for prompt, out in zip(job["prompts"], outputs):
        completion = out.outputs[0]
        metrics = completion.spec_decode_metrics
        requests.append(
            {
                "task": prompt["task"],
                "prompt_index": prompt["prompt_index"],
                "prompt_token_ids": list(out.prompt_token_ids),
                "token_ids": list(completion.token_ids),
                "finish_reason": completion.finish_reason,
                "per_step_accepted": list(metrics.per_step_accepted) if metrics is not None else [],
                "per_step_drafted": list(metrics.per_step_drafted) if metrics is not None else [],
            }
        )
    del llm
    gc.collect()
    return {"seconds": seconds, "num_spec_tokens": run.get("num_speculative_tokens") or 0, "requests": requests}


def main() -> None:
    job_file, out_file = sys.argv[1:3]
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with open(job_file) as fh:
        job = json.load(fh)
    import vllm

    result = {"vllm_version": vllm.__version__, "runs": {}}
    for run in job["runs"]:
        try:
            result["runs"][run["name"]] = decode(job, run)
        except Exception as exc:  # reported per run; the caller says what it means
            result["runs"][run["name"]] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        with open(out_file, "w") as fh:  # after every run: a crash later keeps what was decoded
            json.dump(result, fh)


if __name__ == "__main__":
    main()
