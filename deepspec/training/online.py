"""Online training data: the frozen target runs live and yields exactly what the cache reader would.

Sample ``i`` here is sample ``i`` of a cache built from the same files: both come from
``tokenize_training_data`` (same tokenisation, truncation, ``min_loss_tokens`` filter, same order) and
both capture through ``capture_states`` (same family adapter, same bf16 rounding). The StepSampler,
collate and loss code are the offline ones, unchanged.

This version runs the target per sample (one forward per ``__getitem__``), which on the CPU equals a
cache built with batch size 1 bit for bit; a batched forward per micro-batch is future work.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch.utils.data import Dataset

from deepspec.data.capture import capture_states


class OnlineDataset(Dataset):
    """Tokenized samples plus a frozen target; ``__getitem__`` returns the cache reader's sample dict."""

    def __init__(self, *, samples: list, target, layer_ids: Sequence[int], device):
        self.samples, self.target, self.layer_ids, self.device = samples, target, list(layer_ids), device
        self.forward_s = 0.0  # target forward time so far (the trainer reports it as target_forward_s)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        t0 = time.perf_counter()
        (hidden, last), = capture_states(self.target, [s.input_ids], layer_ids=self.layer_ids, device=self.device)
        self.forward_s += time.perf_counter() - t0
        return {"input_ids": torch.tensor(s.input_ids, dtype=torch.int32).long(),
                "loss_mask": torch.tensor(s.loss_mask, dtype=torch.uint8).bool(),
                "hidden_states": hidden, "last_hidden_state": last}


def build_online_dataset(*, cfg, train_data_paths: Sequence[str], device: torch.device) -> OnlineDataset:
    """Tokenize like the cache builder, load the frozen target (eval, no grad; bf16 on GPU, fp32 on CPU)."""
    from transformers import AutoTokenizer

    from deepspec.data.cache_build import check_build_request, tokenize_training_data
    from deepspec.targets import family_of, load_target, load_target_config, validate_layer_ids

    path = cfg.model.target_model_name_or_path
    check_build_request(train_data_paths=list(train_data_paths), output_dir=cfg.logging.checkpoint_dir)
    hf_config = load_target_config(path)
    num_layers = family_of(hf_config).text_config(hf_config).num_hidden_layers
    layer_ids = validate_layer_ids(cfg.model.target_layer_ids, num_layers=num_layers)
    tokenizer = AutoTokenizer.from_pretrained(path)
    plan = tokenize_training_data(list(train_data_paths), tokenizer=tokenizer, chat_template=cfg.data.chat_template,
                                  max_length=int(cfg.data.max_length), min_loss_tokens=int(cfg.data.min_loss_tokens))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the cache builder's choice
    target = load_target(path, dtype=dtype, device=device, with_tokenizer=False)
    # deepspec.targets.Target holds its model in eval mode with requires_grad off; capture runs under no_grad.
    return OnlineDataset(samples=plan.samples, target=target, layer_ids=layer_ids, device=device)

