"""Python-file configs with ``--opts dotted.key=value`` overrides.

A config is a Python file. Its public module-level names form the config
(``project_name``, ``exp_name``, ``seed``, ``model``, ``train``, ``logging``,
``data``); ALL_CAPS names, modules, classes and functions are helpers and are
left out, except ``finalize_cfg(cfg)``, which runs after the overrides so that
derived fields (checkpoint and tensorboard dirs) follow an overridden
``exp_name``.

    cfg = load_config("config/dspark/dspark_qwen3_4b.py", opts=["train.lr=3e-4"])
    cfg.train.lr            # 0.0003
    cfg.logging.checkpoint_dir

Override values are parsed as YAML scalars or lists (``null``, ``true``,
``[1, 9, 17]``). A key that does not exist fails before any work, naming the
closest valid keys; ``+a.b=v`` adds a key on purpose.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import inspect
import json
import os
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

import re

import yaml

from deepspec.draft_specs import ATTENTION_BACKENDS, UnknownAlgorithmError, get_spec
from deepspec.errors import DeepSpecError
from deepspec.layer_ids import check_layer_ids

REQUIRED_SECTIONS = ("model", "train", "logging", "data")
REQUIRED_TOP_LEVEL = ("project_name", "exp_name", "seed")


class _OverrideLoader(yaml.SafeLoader):
    """YAML for override values, minus the YAML 1.1 surprises: only true/false are
    booleans (not yes/no/on/off) and ``3e-4`` is a float."""


_OverrideLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_OverrideLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_OverrideLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class ConfigError(DeepSpecError, ValueError):
    """A config file or an override is wrong; the message says how to fix it."""


class ConfigNode(dict):
    """A dict whose keys are also attributes (``cfg.train.lr``), recursively."""

    def __init__(self, mapping: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__()
        for key, value in dict(mapping or {}, **kwargs).items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            near = difflib.get_close_matches(name, list(self.keys()), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise AttributeError(f"config has no key {name!r}{hint}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __deepcopy__(self, memo: dict) -> "ConfigNode":
        return ConfigNode({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def to_dict(self) -> dict:
        """Plain nested dicts/lists, for JSON and for writing next to checkpoints."""
        return _unwrap(self)


def _wrap(value: Any) -> Any:
    if isinstance(value, ConfigNode):
        return value
    if isinstance(value, Mapping):
        return ConfigNode(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unwrap(v) for v in value]
    if isinstance(value, type):
        return value.__name__
    return value


def add_opts_argument(parser, *, example: str = "train.lr=3e-4 logging.checkpointing_steps=500") -> None:
    """``--opts k=v [k=v ...]``, repeatable: ``--opts a=1 --opts b=2`` keeps both, in order."""
    parser.add_argument(
        "--opts",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"config overrides, applied in order; repeat the flag or list several (e.g. --opts {example})",
    )


def _is_config_name(name: str, value: Any) -> bool:
    if name.startswith("_") or name.isupper():
        return False
    return not isinstance(value, (types.ModuleType, types.FunctionType, type)) and not inspect.isbuiltin(value)


def _exec_config_file(path: Path) -> types.ModuleType:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass a path such as config/dspark/dspark_tiny.py)")
    if path.suffix != ".py":
        raise ConfigError(f"config must be a Python file (*.py), got {path}")
    spec = importlib.util.spec_from_file_location(f"deepspec_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # surface the config file as the culprit, keep the cause chained
        raise ConfigError(f"error while executing config {path}: {type(exc).__name__}: {exc}") from exc
    return module


def all_keys(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key in a config, sections included (``train``, ``train.lr``, ...)."""
    keys = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, Mapping):
            keys.extend(all_keys(value, prefix=f"{dotted}."))
    return keys


def parse_override(text: str) -> tuple[str, Any, bool]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003, False)``; a leading ``+`` allows a new key."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    add = key.startswith("+")
    key = key.lstrip("+")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.load(raw, Loader=_OverrideLoader) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse the value of override {text!r}: {exc}") from None
    return key, value, add


def _coerce(key: str, old: Any, new: Any) -> Any:
    """Accept the override if it has the old value's kind; fail clearly on a clash."""
    if old is None or new is None:
        return new
    if isinstance(old, Mapping) != isinstance(new, Mapping):
        kind_old = "a section (dict)" if isinstance(old, Mapping) else type(old).__name__
        kind_new = "a section (dict)" if isinstance(new, Mapping) else type(new).__name__
        raise ConfigError(
            f"override {key}={new!r} replaces {kind_old} with {kind_new}; "
            f"override the keys inside it instead (e.g. {key}.<name>=...)"
            if isinstance(old, Mapping)
            else f"override {key}={new!r}: {key} is {kind_old}, not a section"
        )
    if isinstance(old, bool) != isinstance(new, bool):
        raise ConfigError(f"override {key}={new!r}: expected true or false (current value {old!r})")
    if isinstance(old, float) and isinstance(new, int):
        return float(new)
    if isinstance(old, int) and isinstance(new, float):
        if not new.is_integer():
            raise ConfigError(f"override {key}={new!r}: expected an integer (current value {old!r})")
        return int(new)
    if isinstance(old, str) and isinstance(new, (int, float)):
        return str(new)  # e.g. exp_name=2024 parses as a number
    if isinstance(old, (list, tuple)) and not isinstance(new, (list, tuple)):
        raise ConfigError(f"override {key}={new!r}: expected a list such as [1, 2, 3] (current value {old!r})")
    if (
        isinstance(old, (int, float, str, list, tuple))
        and type(new) is not type(old)
        and not (isinstance(old, (int, float)) and isinstance(new, (int, float)))
    ):
        raise ConfigError(f"override {key}={new!r}: expected {type(old).__name__} (current value {old!r})")
    return new


def apply_overrides(cfg: ConfigNode, overrides: Iterable[str]) -> ConfigNode:
    """Apply ``key.path=value`` overrides in order; unknown keys fail with suggestions."""
    for text in overrides:
        key, value, add = parse_override(text)
        parts = key.split(".")
        node: Any = cfg
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, Mapping) or part not in node:
                _unknown_key(cfg, key, ".".join(parts[: depth + 1]))
            node = node[part]
        last = parts[-1]
        if not isinstance(node, Mapping):
            raise ConfigError(f"override {key}: {'.'.join(parts[:-1])} is not a section")
        if last not in node:
            if not add:
                _unknown_key(cfg, key, key)
            node[last] = value
        else:
            node[last] = _coerce(key, node[last], value)
    return cfg


def _unknown_key(cfg: ConfigNode, key: str, missing: str) -> None:
    known = all_keys(cfg)
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    if not near:  # fall back to keys sharing the last part, e.g. "lr" -> "train.lr"
        tail = key.split(".")[-1]
        near = [k for k in known if k.split(".")[-1] == tail][:3]
    hint = f" Closest valid keys: {', '.join(near)}." if near else ""
    raise ConfigError(
        f"unknown config key {key!r} ({missing!r} does not exist).{hint} Use +{key}=... to add a new key on purpose."
    )


def load_config(path: str | os.PathLike, *, opts: Iterable[str] = ()) -> ConfigNode:
    """Load a Python-file config, apply ``--opts`` overrides, run ``finalize_cfg``, validate."""
    path = Path(path)
    module = _exec_config_file(path)
    names = {k: v for k, v in vars(module).items() if _is_config_name(k, v)}
    cfg = ConfigNode(copy.deepcopy(names))
    missing = [k for k in REQUIRED_TOP_LEVEL + REQUIRED_SECTIONS if k not in cfg]
    if missing:
        raise ConfigError(f"config {path} lacks required names: {', '.join(missing)}")
    apply_overrides(cfg, opts)
    finalize = getattr(module, "finalize_cfg", None)
    if finalize is not None:
        result = finalize(cfg)
        cfg = ConfigNode(result if result is not None else cfg)
    cfg["config_path"] = str(path.resolve())
    validate_config(cfg)
    return cfg


# (dotted key, kind, lower bound, bound inclusive?, may be null) for the numeric run settings; checked once here.
_NUMERIC_FIELDS = (
    ("train.lr", float, 0, False, False),
    ("train.warmup_ratio", float, 0, True, False),
    ("train.weight_decay", float, 0, True, False),
    ("train.local_batch_size", int, 1, True, False),
    ("train.global_batch_size", int, 1, True, False),
    ("train.num_train_epochs", int, 0, True, True),
    ("train.max_train_steps", int, 1, True, True),
    ("train.max_grad_norm", float, 0, False, True),
    ("data.max_length", int, 2, True, False),
    ("data.min_loss_tokens", int, 1, True, False),
    ("data.num_workers", int, 0, True, False),
    ("logging.logging_steps", int, 1, True, False),
    ("logging.checkpointing_steps", int, 0, True, True),
)  # the model.* fields are the algorithm's (deepspec.draft_specs): its spec checks them


def _lookup(cfg: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_numbers(cfg: ConfigNode) -> None:
    for key, kind, low, inclusive, nullable in _NUMERIC_FIELDS:
        present, value = _lookup(cfg, key)
        if not present or (value is None and nullable):
            continue
        number_ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (kind is float or float(value).is_integer())
        )
        if not number_ok or value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key} must be a finite {'integer' if kind is int else 'number'}, got {value!r}")
        if value < low or (value == low and not inclusive):
            raise ConfigError(f"{key} must be {'>=' if inclusive else '>'} {low}, got {value!r}")
    ratio = cfg.train.get("warmup_ratio")
    if isinstance(ratio, (int, float)) and ratio > 1:
        raise ConfigError(f"train.warmup_ratio is a fraction of all steps in [0, 1], got {ratio!r}")
    for key in _BOOL_FIELDS:
        present, value = _lookup(cfg, key)
        if present and not isinstance(value, bool):
            raise ConfigError(f"{key} must be True or False, got {value!r}")


_BOOL_FIELDS = ("data.online_target", "train.target_sharding", "train.torch_compile")


def validate_config(cfg: ConfigNode) -> None:
    """Checks that need no target model; the target-dependent ones live in targets.py."""
    _check_numbers(cfg)
    model, train = cfg.model, cfg.train
    try:
        algorithm = get_spec(model.get("algorithm"))
    except UnknownAlgorithmError as exc:
        raise ConfigError(str(exc)) from None
    check_layer_ids(model.get("target_layer_ids"), error=ConfigError, key="model.target_layer_ids")
    algorithm.check(model, prefix="model.", error=ConfigError)
    backend = model.get("attention_backend", "auto")
    if backend not in ATTENTION_BACKENDS:
        raise ConfigError(
            f"model.attention_backend must be one of {ATTENTION_BACKENDS}, got {backend!r} "
            "(auto: flex attention on CUDA, sdpa on CPU)"
        )
    if model.num_draft_layers < 1:
        raise ConfigError(f"model.num_draft_layers must be >= 1, got {model.num_draft_layers}")
    if train.global_batch_size % train.local_batch_size:
        raise ConfigError(
            f"train.global_batch_size ({train.global_batch_size}) must be a multiple of "
            f"train.local_batch_size ({train.local_batch_size})"
        )
    if train.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(
            f"train.precision must be auto, bf16 or fp32, got {train.precision!r} "
            "(auto: bf16 on GPUs and on CPUs with native bf16, else fp32)"
        )
    if train.sharding_strategy not in ("no_shard", "full_shard", "shard_grad_op"):
        raise ConfigError(
            f"train.sharding_strategy must be no_shard (DDP), full_shard or shard_grad_op (FSDP), "
            f"got {train.sharding_strategy!r}"
        )
    betas = train.get("adam_betas")
    if betas is not None and (
        isinstance(betas, (str, bytes))
        or not hasattr(betas, "__len__")
        or len(betas) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    ):
        raise ConfigError(f"train.adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.95], got {betas!r}")
    if train.max_train_steps is None and not train.num_train_epochs:
        raise ConfigError("set train.num_train_epochs or train.max_train_steps")


def dump_config(cfg: ConfigNode, path: str | os.PathLike) -> None:
    """Write the resolved config as JSON (kept next to checkpoints for resume checks)."""
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
