"""The ``hf`` backend: transformers ``generate``, batched with left padding."""

from __future__ import annotations

from typing import Sequence

from deepspec.data.regenerate.common import (
    BackendUnavailable,
    Log,
    Messages,
    RegenerationError,
    SamplingSettings,
    TurnResult,
)

DTYPES = ("auto", "float32", "bfloat16", "float16")  # --dtype: auto is bf16 on GPU, fp32 on CPU


class HFBackend:
    """transformers ``generate``, batched with left padding. For machines without vLLM."""

    name = "hf"
    default_batch_size = 8

    def __init__(
        self,
        *,
        model: str,
        sampling: SamplingSettings,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str = "auto",
        log: Log = print,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.sampling = sampling
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            # bf16 halves memory on GPU; on CPU fp32 keeps greedy outputs stable and is not slower here.
            torch_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        elif dtype in DTYPES:
            torch_dtype = getattr(torch, dtype)
        else:
            raise RegenerationError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        except (OSError, ValueError, KeyError, ImportError) as e:
            # transformers words a missing or broken folder many ways, often over many lines; keep the first.
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BackendUnavailable(
                f"cannot load the target model {model} with transformers: {first}. Pass a "
                "Hugging Face model folder (config.json, weights, tokenizer) or hub name"
            ) from None
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly

        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else []
        eos = [eos] if isinstance(eos, int) else list(eos)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        if not eos:
            raise RegenerationError(
                f"{model}: neither generation_config.json nor the tokenizer names an end-of-turn "
                "token; set eos_token_id in generation_config.json"
            )
        self.eos_ids = eos
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else gen.pad_token_id
        self.pad_id = pad if pad is not None else eos[0]
        self.max_len = getattr(self.model.config, "max_position_embeddings", None)
        self.generation_config = self._generation_config(gen)
        torch.manual_seed(sampling.seed if sampling.seed is not None else 0)
        log(
            f"[regenerate] hf backend: {model} on {self.device} ({torch_dtype}), batch {self.batch_size}, "
            f"sampling {self._describe()}"
        )

    def _generation_config(self, base):
        import copy

        cfg = copy.deepcopy(base)
        o = self.sampling.overrides()
        if "temperature" in o:
            cfg.do_sample = o["temperature"] > 0
            cfg.temperature = o["temperature"] if o["temperature"] > 0 else None
        for key in ("top_p", "top_k", "min_p"):
            if key in o:
                setattr(cfg, key, o[key] if o[key] else None)
        if not cfg.do_sample:  # greedy: sampling knobs would only trigger warnings
            cfg.temperature = cfg.top_p = cfg.top_k = cfg.min_p = None
        cfg.max_new_tokens = self.sampling.max_tokens
        cfg.max_length = None
        cfg.eos_token_id = self.eos_ids
        cfg.pad_token_id = self.pad_id
        return cfg

    def _describe(self) -> str:
        c = self.generation_config
        if not c.do_sample:
            return f"greedy, max_tokens {self.sampling.max_tokens}"
        return (
            f"temperature {c.temperature}, top_p {c.top_p}, top_k {c.top_k}, min_p {c.min_p}, "
            f"max_tokens {self.sampling.max_tokens}"
        )

    def generate(self, batch: Sequence[Messages]) -> list[TurnResult]:
        import torch

        results: list[TurnResult | None] = [None] * len(batch)
        prompts: list[tuple[int, list[int]]] = []
        for i, messages in enumerate(batch):
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **self.sampling.chat_template_kwargs
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if self.max_len and len(ids) + self.sampling.max_tokens > self.max_len:
                results[i] = TurnResult(
                    error=f"prompt of {len(ids)} tokens + max_tokens {self.sampling.max_tokens} exceeds the "
                    f"model's context length {self.max_len}; lower --max-tokens or shorten the conversation",
                    reason="prompt_too_long",
                )
            else:
                prompts.append((i, ids))
        prompts.sort(key=lambda p: len(p[1]))  # similar lengths together: less padding
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            width = max(len(ids) for _, ids in chunk)
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (_, ids) in enumerate(chunk):
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids) :] = 1
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    generation_config=self.generation_config,
                )
            new = out[:, width:].tolist()
            for row, (i, _) in enumerate(chunk):
                tokens = new[row]
                stop = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
                if stop is not None:
                    tokens, finish = tokens[:stop], "stop"
                else:
                    finish = "length"
                results[i] = TurnResult(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True), finish_reason=finish
                )
        return results  # type: ignore[return-value]

    def close(self) -> None:
        pass
