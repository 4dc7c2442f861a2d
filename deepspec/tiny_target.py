"""The embedded default target: a tiny Qwen3 chat model built from the Python stdlib.

Everything here runs offline on CPU. The result is an ordinary Hugging Face
folder (``config.json``, ``model.safetensors``, tokenizer files,
``generation_config.json``), so every stage loads it exactly like a hub model.
A marker file written last, atomically, says the folder is complete. The model
configs of every family come from :mod:`deepspec.tiny_models`.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import math
import os
import pathlib
import platform
import shutil
import sysconfig
import textwrap
import time
import uuid
import zlib
from typing import Callable

from deepspec.errors import check_outputs_apart
from deepspec.tiny_models import (
    ENDOFTEXT_ID,
    IM_END_ID,
    MODEL_CONFIG,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    TinyTargetError,
    make_model,
    make_model_config,
    seeded_rng,
)

MARKER_NAME = "deepspec_tiny_target.json"
FORMAT_VERSION = 2  # 2: newlines are their own pre-tokens (see _trained_tokenizer_json)


# Qwen-style ChatML; extra kwargs such as ``enable_thinking`` are accepted and ignored.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Measured on a 2-core machine with native bf16: ~0.48 s/step best case (bf16 autocast, batch 16 x 256).
# Training stops on a step count, never on the clock, so builds are reproducible.
STEPS_PER_MINUTE = 120.0
TRAIN_THREADS = 2

TRAIN_CONFIG = dict(
    batch_size=16,
    seq_len=256,
    lr=2e-3,
    min_lr_ratio=0.1,
    warmup_steps=50,
    weight_decay=0.1,
    betas=(0.9, 0.95),
    grad_clip=1.0,
    val_blocks=64,
    prompt_max_lines=24,
    answer_lines=32,
)

# Path components left out of the corpus: third-party code, test suites (huge),
# codec charmap tables and doc dumps (trivially predictable).
EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "__pycache__",
        "test",
        "tests",
        "idlelib",
        "encodings",
        "pydoc_data",
        "turtledemo",
    }
)
VAL_EVERY = 20  # about 1 file in 20 is held out, chosen by a hash of its path

# Names a build writes; an unmarked folder holding anything else is not ours to delete.
_OWN_FILES = {
    MARKER_NAME,
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
}

Log = Callable[[str], None]


def default_tiny_target_dir() -> pathlib.Path:
    """``$DEEPSPEC_TINY_TARGET`` if set, else ``~/.cache/deepspec/tiny_target``."""
    env = os.environ.get("DEEPSPEC_TINY_TARGET")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "deepspec" / "tiny_target"


def steps_for_minutes(*, minutes: float) -> int:
    """Fixed optimizer-step count for a nominal CPU budget in minutes."""
    if minutes <= 0:
        raise TinyTargetError(f"minutes must be positive, got {minutes}")
    return max(1, round(minutes * STEPS_PER_MINUTE))


# ----------------------------------------------------------------------------- corpus


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _is_val_file(rel: str) -> bool:
    return zlib.crc32(rel.encode()) % VAL_EVERY == 0


@functools.lru_cache(maxsize=4)
def _load_corpus(root: str) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    base = pathlib.Path(root)
    if not base.is_dir():
        raise TinyTargetError(
            f"Python stdlib folder not found: {base}; the tiny target trains on the standard library's sources, "
            "so use a Python installed with them (not a stripped one)"
        )
    files = sorted(base.rglob("*.py"), key=lambda p: p.relative_to(base).as_posix())
    train, val = [], []
    for path in files:
        parts = path.relative_to(base).parts
        if EXCLUDED_DIRS.intersection(parts[:-1]) or parts[-1].startswith("test_"):
            continue
        rel = "/".join(parts)
        text = path.read_bytes().decode("utf-8", errors="replace")
        (val if _is_val_file(rel) else train).append((rel, text))
    if not train or not val:
        raise TinyTargetError(f"stdlib corpus under {base} is too small ({len(train)} train / {len(val)} val files)")
    return tuple(train), tuple(val)


def load_corpus(*, root: str | os.PathLike | None = None):
    """``(train, val)`` tuples of ``(relative_path, text)``, sorted, split by file."""
    return _load_corpus(str(root or stdlib_root()))


def code_chat_pairs(*, text: str, prompt_max_lines: int = 24, answer_lines: int = 20) -> list[tuple[str, str]]:
    """(user, assistant) pairs from one source file.

    User turn: a def/class header (signature plus the first docstring line);
    assistant turn: the next ``answer_lines`` lines of its body.
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines()
    pairs = []
    for node in ast.walk(tree):  # breadth-first, deterministic
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or not node.body:
            continue
        start, split = node.lineno - 1, node.body[0].lineno  # split includes the first body line
        end = min(node.end_lineno or split, split + answer_lines)
        if split - start > prompt_max_lines or end <= split:
            continue
        snippet = textwrap.dedent("\n".join(lines[start:end])).split("\n")
        user, answer = "\n".join(snippet[: split - start]), "\n".join(snippet[split - start :])
        if user.strip() and answer.strip():
            pairs.append((user, answer))
    return pairs


def format_chat(*, user: str, assistant: str) -> str:
    """The chat template's rendering of a two-turn conversation (used for training text)."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"


# ----------------------------------------------------------------------------- tokenizer


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(root: str, vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    train, _ = _load_corpus(root)
    tok = Tokenizer(models.BPE())
    # Newlines are isolated before the byte-level split: otherwise "\n" merges with the next line's
    # indentation, and the generation prompt's lone "\n" after "assistant" never occurs in training,
    # which made the model end most indented answers at once.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Special tokens listed first get ids 0..3, in order.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((text for _, text in train), trainer=trainer, length=len(train))
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"special token {name!r} got id {tok.token_to_id(name)}, expected {i}")
    return tok.to_str()


def build_tokenizer(*, root: str | os.PathLike | None = None, vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE trained on the stdlib, wrapped as a ``PreTrainedTokenizerFast``.

    The trained tokenizer is cached per process, so repeated calls are cheap.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_str(_trained_tokenizer_json(str(root or stdlib_root()), vocab_size))
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        mask_token="<|mask|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


# ----------------------------------------------------------------------------- folder (the model: deepspec.tiny_models)


def _generation_config():
    from transformers import GenerationConfig

    # Either turn end or document end stops generation; greedy by default.
    return GenerationConfig(eos_token_id=[IM_END_ID, ENDOFTEXT_ID], pad_token_id=ENDOFTEXT_ID, do_sample=False)


def _save_folder(model, tokenizer, folder: pathlib.Path) -> None:
    model.generation_config = _generation_config()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _write_marker(folder: pathlib.Path, info: dict) -> None:
    tmp = folder / f".{MARKER_NAME}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / MARKER_NAME)  # atomic: the marker is either whole or absent


def read_marker(*, folder: str | os.PathLike) -> dict | None:
    """The marker of a complete target folder, or None if the folder is incomplete."""
    path = pathlib.Path(folder) / MARKER_NAME
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    needed = ("config.json", "model.safetensors", "tokenizer.json")
    if not all((path.parent / name).is_file() for name in needed):
        return None
    return info


def is_complete_tiny_target(
    *,
    folder: str | os.PathLike,
    seed: int | None = None,
    steps: int | None = None,
    family: str | None = None,
    config_overrides: dict | None = None,
) -> bool:
    """True if ``folder`` holds a finished trained build (matching seed/steps, and the architecture when
    ``family`` is given: ``family`` with ``config_overrides``; builds older than the field were Qwen3)."""
    info = read_marker(folder=folder)
    built = info and {"family": info.get("family", "qwen3"), "config_overrides": info.get("config_overrides", {})}
    return bool(
        info
        and info.get("kind") == "trained"
        and info.get("format") == FORMAT_VERSION
        and (seed is None or info.get("seed") == seed)
        and (steps is None or info.get("steps") == steps)
        and (family is None or built == _architecture(family, config_overrides or {}))
    )


def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "python_version": platform.python_version(),
    }


def build_random_tiny_target(
    *, output_dir: str | os.PathLike, seed: int = 0, family: str = "qwen3", **config_overrides
) -> pathlib.Path:
    """Save an untrained (random) tiny target with the real tokenizer, in seconds.

    ``family``: a name in :data:`deepspec.targets.FAMILIES` (qwen3 by default); ``config_overrides`` go to its
    tiny config (:func:`deepspec.tiny_models.make_model_config`; e.g. ``num_hidden_layers=2``).
    """
    import torch

    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_NAME).unlink(missing_ok=True)
    tokenizer = build_tokenizer()
    model = make_model(family=family, seed=seed, dtype=torch.float32, **config_overrides)
    _save_folder(model, tokenizer, out)
    _write_marker(
        out,
        {
            "format": FORMAT_VERSION,
            "kind": "random",
            "seed": seed,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            **_architecture(family, config_overrides),
            **_versions(),
        },
    )
    return out


# ----------------------------------------------------------------------------- training


def _pack(tokenizer, texts: list[str], seq_len: int):
    import torch

    ids = [t for row in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in row]
    n = len(ids) // seq_len
    if n == 0:
        raise RuntimeError(f"corpus too small: {len(ids)} tokens < one block of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len), len(ids)


@functools.lru_cache(maxsize=2)
def _packed_data(root: str):
    """Chat-formatted train/val text, tokenized and packed into fixed blocks (cached per process)."""
    import torch

    cfg = TRAIN_CONFIG
    train_files, val_files = _load_corpus(root)
    tokenizer = build_tokenizer(root=root)

    def chats(files):
        return [
            format_chat(user=u, assistant=a)
            for _, text in files
            for u, a in code_chat_pairs(
                text=text, prompt_max_lines=cfg["prompt_max_lines"], answer_lines=cfg["answer_lines"]
            )
        ]

    train_blocks, train_tokens = _pack(tokenizer, chats(train_files), cfg["seq_len"])
    val_blocks, val_tokens = _pack(tokenizer, chats(val_files), cfg["seq_len"])
    # A fixed, seed-independent subset keeps validation cheap and comparable across builds.
    pick = torch.randperm(len(val_blocks), generator=torch.Generator().manual_seed(1234))
    val_blocks = val_blocks[pick[: cfg["val_blocks"]].sort().values]
    return train_blocks, train_tokens, val_blocks, val_tokens


def _lr_at(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then cosine from 1 down to ``min_ratio`` (a multiplier on lr)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _evaluate(model, blocks, batch_size: int) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():  # fp32: the saved model is fp32, so report its own loss
        for i in range(0, len(blocks), batch_size):
            batch = blocks[i : i + batch_size]
            loss = model(input_ids=batch, labels=batch).loss
            n = batch.numel() - batch.shape[0]  # positions with a next-token label
            total, count = total + loss.item() * n, count + n
    model.train()
    return total / count


def _architecture(family: str, overrides: dict) -> dict:
    """What a build's marker records of its architecture (a reused build must match it)."""
    return {"family": family, "config_overrides": {k: repr(v) for k, v in overrides.items()}}


def _train(
    *, folder: pathlib.Path, steps: int, seed: int, log: Log | None, family: str, config_overrides: dict
) -> dict:
    import torch
    from tqdm.auto import tqdm

    cfg = TRAIN_CONFIG
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    train_files, val_files = load_corpus()
    say(
        f"[tiny-target] corpus: {len(train_files)} train / {len(val_files)} val stdlib files, "
        f"{sum(len(t) for _, t in train_files) / 1e6:.1f} / {sum(len(t) for _, t in val_files) / 1e6:.2f} MB"
    )
    tokenizer = build_tokenizer()
    tok_seconds = time.perf_counter() - t0
    say(f"[tiny-target] tokenizer: vocab {len(tokenizer)} in {tok_seconds:.1f}s")

    train_blocks, train_tokens, val_blocks, val_tokens = _packed_data(str(stdlib_root()))
    say(
        f"[tiny-target] chat tokens: {train_tokens} train ({len(train_blocks)} blocks), {val_tokens} val; "
        f"{steps} steps x {cfg['batch_size']} x {cfg['seq_len']} = "
        f"{steps * cfg['batch_size'] * cfg['seq_len'] / 1e6:.2f}M tokens"
    )

    with seeded_rng(seed, TRAIN_THREADS):
        model = make_model(family=family, seed=seed, dtype=torch.float32, **config_overrides)
        n_params = sum(p.numel() for p in model.parameters())
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]  # norms
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg["lr"],
            betas=cfg["betas"],
        )
        warmup = min(cfg["warmup_steps"], max(1, steps // 10))
        gen = torch.Generator().manual_seed(seed)
        order, cursor = torch.randperm(len(train_blocks), generator=gen), 0
        loss_ema = None
        from deepspec.precision import describe_choice

        precision = describe_choice("auto", "cpu")
        autocast_bf16 = precision["compute_dtype"] == "bf16"
        say(
            f"[tiny-target] compute dtype {'bfloat16 (autocast)' if autocast_bf16 else 'float32'}: "
            f"{precision['reason']} (DEEPSPEC_CPU_BF16=0/1 overrides)"
        )
        t_train = time.perf_counter()
        bar = tqdm(range(steps), desc="tiny-target", unit="step", disable=log is None, dynamic_ncols=True)
        model.train()
        for step in bar:
            if cursor + cfg["batch_size"] > len(order):  # next epoch, new deterministic order
                order, cursor = torch.randperm(len(train_blocks), generator=gen), 0
            batch = train_blocks[order[cursor : cursor + cfg["batch_size"]]]
            cursor += cfg["batch_size"]
            for group in opt.param_groups:
                group["lr"] = cfg["lr"] * _lr_at(step, steps, warmup, cfg["min_lr_ratio"])
            # bf16 autocast only where the CPU has bf16 units (see deepspec.precision); master weights fp32.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            opt.zero_grad(set_to_none=True)
            value = loss.item()
            loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
            bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
        bar.close()
        train_seconds = time.perf_counter() - t_train
        val_loss = _evaluate(model, val_blocks, cfg["batch_size"])
    ppl = math.exp(val_loss)
    say(
        f"[tiny-target] trained {steps} steps in {train_seconds:.0f}s; "
        f"val loss {val_loss:.4f}, perplexity {ppl:.2f} (random ~ {math.log(VOCAB_SIZE):.2f})"
    )
    _save_folder(model, tokenizer, folder)
    return {
        "val_loss": val_loss,
        "val_perplexity": ppl,
        "train_loss_ema": loss_ema,
        "num_parameters": n_params,
        "tokenizer_seconds": tok_seconds,
        "train_seconds": train_seconds,
        "corpus": {
            "source": "Python standard library *.py (sysconfig stdlib path)",
            "root": str(stdlib_root()),
            "excluded_dirs": sorted(EXCLUDED_DIRS),
            "excluded_files": "test_*.py",
            "split": f"by file: crc32(path) % {VAL_EVERY} == 0 is validation",
            "format": "chat: user = def/class header + first body line, assistant = next lines",
            "loss": "all tokens (packed blocks)",
            "train_files": len(train_files),
            "val_files": len(val_files),
            "train_tokens": train_tokens,
            "val_tokens": val_tokens,
            "val_tokens_scored": int(val_blocks.numel()),
        },
        "training": {
            **cfg,
            "betas": list(cfg["betas"]),
            "warmup_steps": warmup,
            "threads": TRAIN_THREADS,
            "autocast": "bfloat16" if autocast_bf16 else "none",
            "saved_dtype": "float32",
            "precision": precision,
        },
    }


@contextlib.contextmanager
def _build_lock(out: pathlib.Path):
    """Serialise builds of one folder across processes (POSIX only; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(out.parent / f".{out.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _holds_our_tokenizer(folder: pathlib.Path) -> bool:
    """Whether ``folder/tokenizer.json`` is the tiny tokenizer (our four special tokens at ids 0..3): what an
    interrupted build without its marker still has, and no other model's tokenizer does."""
    try:
        added = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens") or []
        return [(t["id"], t["content"]) for t in added[: len(SPECIAL_TOKENS)]] == list(enumerate(SPECIAL_TOKENS))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return False


def _check_replaceable(out: pathlib.Path) -> None:
    """A rebuild replaces an earlier tiny target only: a folder with our marker (or, interrupted before the marker,
    our tokenizer) and nothing a build does not write. Any other folder (a real target, an export) is never deleted."""
    if not out.exists() or not any(out.iterdir()):
        return
    strangers = sorted(p.name for p in out.iterdir() if p.name not in _OWN_FILES)
    if not (out / MARKER_NAME).is_file() and not _holds_our_tokenizer(out):
        raise TinyTargetError(
            f"refusing to replace {out}: it is not a tiny-target folder (no {MARKER_NAME}; it holds "
            f"{', '.join(sorted(p.name for p in out.iterdir())[:5])}); choose another --output-dir"
        )
    if strangers:
        raise TinyTargetError(
            f"refusing to replace {out}: it holds {', '.join(strangers[:5])}, which no tiny-target build writes; "
            "move them away, or choose another --output-dir"
        )


def build_tiny_target(
    *,
    output_dir: str | os.PathLike | None = None,
    minutes: float = 5.0,
    steps: int | None = None,
    seed: int = 0,
    force: bool = False,
    log: Log | None = print,
    family: str = "qwen3",
    config_overrides: dict | None = None,
) -> pathlib.Path:
    """Train the tiny target into ``output_dir`` unless a matching complete build is there.

    ``steps`` overrides ``minutes`` (which maps to ``round(minutes * STEPS_PER_MINUTE)``).
    Same (seed, steps) on the same machine gives bit-identical weights. ``family`` and
    ``config_overrides`` pick another architecture (:func:`make_model_config`; e.g. a deeper Qwen3.5 hybrid
    for bench/bench_hybrid_layer_ids.py); the quickstart's target is the default.
    """
    overrides = dict(config_overrides or {})
    make_model_config(family=family, **overrides)  # an unknown family or bad override fails before any work
    out = pathlib.Path(output_dir) if output_dir is not None else default_tiny_target_dir()
    out = out.expanduser().absolute()
    steps = int(steps) if steps is not None else steps_for_minutes(minutes=minutes)
    if steps < 1:
        raise TinyTargetError(f"steps must be >= 1, got {steps}")
    say = log or (lambda _msg: None)
    if out.exists() and not out.is_dir():  # before the lock, which would leave a file beside the user's
        raise TinyTargetError(f"output path exists and is not a folder: {out}; pass a new folder with --output-dir")
    # Never into a checkpoint root, a target cache or an eval run; a rebuild replaces only its own model folder.
    check_outputs_apart(inputs=[], output_dirs=[out], what="--output-dir", may_write_into=("model folder",))
    out.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        if not force and is_complete_tiny_target(
            folder=out, seed=seed, steps=steps, family=family, config_overrides=overrides
        ):
            info = read_marker(folder=out)
            say(f"[tiny-target] reused {out} (seed {seed}, {steps} steps, val ppl {info['val_perplexity']:.2f})")
            return out
        _check_replaceable(out)
        t0 = time.perf_counter()
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            info = _train(folder=tmp, steps=steps, seed=seed, log=log, family=family, config_overrides=overrides)
            info.update(_architecture(family, overrides))
            info.update(
                {
                    "format": FORMAT_VERSION,
                    "kind": "trained",
                    "seed": seed,
                    "steps": steps,
                    "minutes": steps / STEPS_PER_MINUTE,
                    "build_seconds": time.perf_counter() - t0,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    **_versions(),
                }
            )
            _write_marker(tmp, info)  # last file written
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            if out.exists():
                os.rename(out, old)
            os.rename(tmp, out)  # the complete folder appears in one step
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    say(f"[tiny-target] saved {out} in {info['build_seconds']:.0f}s")
    return out
