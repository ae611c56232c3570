"""Study configuration: one flat record of literals, loaded from configs/<profile>.yaml.

The field defaults are the `digits` profile, and the only place a default is written: configs/digits.yaml
names the profile, and the notebooks' parameters cell holds just `profile` and `params` (a YAML file of
values). A profile YAML overrides any subset of the fields. `make` writes every field of the loaded profile
to <results_dir>/<profile>/parameters.yaml (`python -m memlib out-dir PROFILE --params FILE`) and hands the
notebooks that file as `params`; each builds its config with `load_profile(profile, params)`, so the
notebooks get exactly what `check` checked.

A new setting is one line in Config: its name, type, role and default (`epochs: int = trains(20)`), and a line of
RULES if its values have a range; no notebook or profile has to name it. Its role (ROLES) decides the rest: a field
that `trains` the models is in the store's fingerprint (TRAINING_KEYS) and the schedule's cache key, so a store made
under another value is refused, never reused; its type annotation picks its check in TYPE_CHECKS.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

AUTO = "auto"  # `epochs: auto` (memlib.stages.train.resolve_epochs)
EPOCHS_RECORD = "epochs.json"  # what `epochs: auto` chose, in the profile's results folder


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("onecycle", "cosine", "constant")
AUGMENTS = ("none", "flip_crop")
MASK_DESIGNS = ("random", "balanced")
ENGINES = ("auto", "stacked", "vmap", "single")
PRECISIONS = ("auto", "fp32", "bf16")
EXECUTORS = ("local", "slurm")
EXECUTOR_ENV = "MEMLIB_EXECUTOR"  # overrides a profile's `executor` (`make reproduce EXECUTOR=slurm` sets it)
SBATCH_OPTION = re.compile(r"[a-z][a-z0-9_-]*")
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")  # a profile: one folder name, no '/', '.' or '..'
# Inclusive upper bounds of the counts: far above any real run, low enough to refuse a typo before work.
MAXIMA = {
    "num_models": 1_000_000,
    "max_epochs": 100_000,
    "batch_size": 1_000_000,
    "workers": 1024,
    "retrain_models": 100_000,
    "min_out": 1_000_000,
    "group_size": 4096,
    "width": 1 << 20,
    "show_examples": 256,
    "slurm_gpus_per_task": 64,
    "slurm_cpus_per_task": 1024,
    "slurm_mem_gb": 1 << 20,
    "slurm_time_min": 525_600,
    "slurm_array_parallelism": 100_000,
    "slurm_retries": 100,
}


# What a field decides; each field of Config names one (tests/test_config.py fails on a field without one).
ROLES = {
    "trains": "decides what a trained model is: in the store's fingerprint, so a store of another value is refused",
    "reads_data": "where the data is found; what it holds is checked by its hashes, not by this value",
    "runs": "where and how the work runs (machine, processes, cluster, folders); no result depends on it",
    "reports": "only analysis or reporting: what is estimated, retrained, shown or checked from the models",
    "chooses": "bounds a training value stage 1 chooses (epochs: auto); the chosen value is fingerprinted, not this",
}


def _field(role: str, default: Any) -> Any:
    """A Config field of `role` (a key of ROLES) with its default (a list or dict is copied for each Config)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"role": role})
    return field(default=default, metadata={"role": role})


def trains(default: Any) -> Any:
    return _field("trains", default)


def reads_data(default: Any) -> Any:
    return _field("reads_data", default)


def runs(default: Any) -> Any:
    return _field("runs", default)


def reports(default: Any) -> Any:
    return _field("reports", default)


def chooses(default: Any) -> Any:
    return _field("chooses", default)


@dataclass(frozen=True)
class Config:
    """Every knob of the study, one line each: name, type, role (ROLES) and default (the `digits` profile)."""

    profile: str = runs("digits")
    results_dir: str = runs("results")
    # data
    dataset: str = trains("digits")
    data_dir: str | None = reads_data(None)  # folder of a named or torchvision dataset (an explicit folder must exist)
    data_path: str | None = trains(None)  # your own data: the .npz file (dataset: npz) or folder (dataset: imagefolder)
    image_size: int | None = trains(None)  # images resized to this square (area averaging for the built-in image sets)
    train_size: int | None = trains(None)
    download: bool = reads_data(False)
    label_noise: float = trains(0.0)  # fraction of the training pool whose label is flipped to another class (seeded)
    # subset training (stage 1)
    arch: str = trains("mem_mlp")
    model_module: str | None = trains(None)  # a Python file whose @register_model functions add architectures to timm
    width: int | None = trains(256)  # passed to architectures that take `width`; null for those that do not
    num_models: int = trains(2000)
    subset_ratio: float = trains(0.7)
    mask_design: str = trains("random")
    min_out: int = reports(400)
    seed: int = trains(0)
    # passes over each subset; auto: the fewest of 20, 40, 80, ... (up to max_epochs) at which a pilot group of models
    # fits what it trains on (the paper's regime, fit_target), chosen once and recorded in <out_dir>/epochs.json
    epochs: int | str = trains(AUTO)
    max_epochs: int = chooses(160)
    batch_size: int = trains(64)
    lr: float = trains(0.1)
    momentum: float = trains(0.9)
    nesterov: bool = trains(True)  # Nesterov momentum (SGD with momentum > 0 only)
    weight_decay: float = trains(5e-4)
    optimizer: str = trains("sgd")
    schedule: str = trains("onecycle")
    label_smoothing: float = trains(0.0)
    grad_clip: float | None = trains(None)  # each model's gradient norm clipped here before its step; null: off
    augment: str = trains("none")
    device: str = runs("auto")
    precision: str = trains("auto")  # bf16 autocast where the device runs it fast (AVX-512 bf16 / AMX CPUs, GPUs)
    engine: str = trains("auto")  # how a group of models trains: stacked (MLPs), vmap, single (one at a time)
    group_size: int = trains(8)  # models trained in lockstep per group (rows [g K, (g + 1) K) form group g)
    workers: int = runs(2)
    # where stages 1 and 3 train: `local` (this machine) or `slurm` (job arrays through submitit; README)
    executor: str = runs("local")
    slurm_partition: str | None = runs(None)  # null: the cluster's default partition
    slurm_gpus_per_task: int = runs(0)  # GPUs per array task (one task trains one group of models)
    slurm_cpus_per_task: int = runs(2)
    slurm_mem_gb: int | None = runs(None)  # memory per task; null: the partition's default
    slurm_time_min: int = runs(60)  # time limit per task; a task signalled before it is requeued, its group redone
    slurm_array_parallelism: int = runs(64)  # array tasks running at once
    slurm_retries: int = runs(2)  # resubmissions of a failed, cancelled or pre-empted group before the run stops
    slurm_sbatch: dict[str, str] = runs({})  # more sbatch options, e.g. {account: lab}
    # estimation (stage 2)
    infl_threshold: float = reports(0.15)
    mem_threshold: float = reports(0.25)
    published_pairs: str | None = reports(None)
    published_cscores: str | None = reports(None)
    pair_fdr: float = reports(0.05)  # false discovery rate of the statistically controlled pair set
    fit_target: float = reports(0.99)  # in-sample accuracy below which a report says the models miss the paper's regime
    # filtering and retraining (stage 3)
    utility_thresholds: list[float] = reports([0.05, 0.1, 0.2, 0.3, 0.5, 0.75])
    retrain_models: int = reports(8)
    # figures (stage 4)
    show_examples: int = reports(24)
    # validation (stage 5)
    compare_arch: str | None = reports(None)  # a second architecture (at its default width) trained on the same design

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """Names of all fields, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the parameters") -> Config:
        """Build and validate a Config; unknown keys are an error that suggests the closest known key."""
        _refuse_unknown_keys(values, source)
        cfg = cls(**_numbers_from_strings(values))
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        """A validated copy with some fields changed."""
        return Config.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------------------------------------
    @property
    def out_dir(self) -> Path:
        """Where this profile's results go: <results_dir>/<profile>, relative paths from the project root."""
        return resolve(self.results_dir) / self.profile

    def training_fingerprint(self) -> str:
        """Hash of the fields that decide what the subset models are; a store remembers it."""
        return _fingerprint({k: getattr(self, k) for k in TRAINING_KEYS})

    def validate(self) -> None:
        """Check types and ranges of every field; raise ConfigError naming the field and the fix.

        The types first, then each of RULES in order (the first that fails is the message), then CROSS_CHECKS.
        """
        _check_types(self)
        for key, ok, message in RULES:
            value = getattr(self, key)
            if not ok(value):
                raise ConfigError(message(value) if callable(message) else message.format(value=Shown(value)))
        for check in CROSS_CHECKS:
            check(self)


MAX_IMAGE_SIZE = 4096  # image_size: a 4096 x 4096 RGB image is 200 MB as float32; larger is surely a typo
# The data keys each kind of dataset reads (a user's function gets the whole config, so it may read any).
DATA_KEYS = ("data_dir", "data_path", "image_size", "download")
READS = {
    "digits": (),
    "fashion-mnist": ("data_dir", "download", "image_size"),
    "mnist": ("data_dir", "download", "image_size"),
    "cifar10": ("data_dir", "download", "image_size"),
    "cifar100": ("data_dir", "download", "image_size"),
    "npz": ("data_path",),
    "imagefolder": ("data_path", "image_size"),
    "torchvision": ("data_dir", "download", "image_size"),
}


def _check_dataset_keys(cfg: Config) -> None:
    """ConfigError for a data key the chosen dataset would silently ignore (e.g. data_path with digits)."""
    kind = "torchvision" if cfg.dataset.startswith("torchvision:") else cfg.dataset
    if kind not in READS:
        return  # a user's function (it gets the config), or an unknown name (refused when it is loaded)
    unused = [k for k in DATA_KEYS if getattr(cfg, k) not in (None, False) and k not in READS[kind]]
    if unused:
        readers = {k: [d for d, keys in READS.items() if k in keys] for k in unused}
        said = "; ".join(
            f"{k}: {Shown(getattr(cfg, k))!r} is read only by dataset: {', '.join(readers[k])}" for k in unused
        )
        raise ConfigError(
            f"dataset: {cfg.dataset} does not use {', '.join(unused)}, so the profile's value would be ignored "
            f"({said}). Remove {', '.join(unused)} from the profile (or set it to null), or choose the dataset "
            "that reads it."
        )


def _is_filesystem_root(results_dir: str) -> bool:
    path = Path(results_dir).expanduser()
    return path.is_absolute() and Path(os.path.normpath(path)) == Path(path.anchor)


def _climbs_out(results_dir: str) -> bool:
    path = Path(results_dir).expanduser()
    return not path.is_absolute() and os.path.normpath(path).split(os.sep)[0] == ".."


def _finite(value: Any) -> bool:
    return not any(
        isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])
    )


AT_LEAST_ONE = (
    "num_models",
    "max_epochs",
    "batch_size",
    "workers",
    "retrain_models",
    "min_out",
    "group_size",
    "slurm_cpus_per_task",
    "slurm_time_min",
    "slurm_array_parallelism",
)
CHOICES = {
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "augment": AUGMENTS,
    "mask_design": MASK_DESIGNS,
    "engine": ENGINES,
    "precision": PRECISIONS,
    "executor": EXECUTORS,
}
# The checks of one field each, in the order Config.validate tries them (after the types): (key, ok(value), message).
# A message is formatted with the value, or is a function of it. A field with a new range is one line here.
RULES: list[tuple[str, Callable[[Any], Any], str | Callable[[Any], str]]] = [
    (
        "profile",
        PLAIN_NAME.fullmatch,
        "profile must be a plain name (letters, digits, '_', '-'; no '/', '.' or '..'), got {value!r}",
    ),
    *((key, _finite, f"{key} must be a finite number, got {{value!r}}") for key in Config.keys()),
    *(
        (key, lambda v, top=top: v is None or v <= top, f"{key} must be at most {top:,}, got {{value:,}}")
        for key, top in MAXIMA.items()
    ),
    (
        "epochs",
        lambda v: v == AUTO if isinstance(v, str) else 1 <= v <= MAXIMA["max_epochs"],
        f"epochs must be auto or a whole number from 1 to {MAXIMA['max_epochs']:,}, got {{value!r}}",
    ),
    ("seed", lambda v: 0 <= v < 2**63, "seed must be a whole number in [0, 2**63), got {value}"),
    ("show_examples", lambda v: v >= 1, "show_examples must be at least 1 (examples in the figures), got {value}"),
    (
        "subset_ratio",
        lambda v: 0.0 < v < 1.0,
        "subset_ratio must lie strictly between 0 and 1 (the paper uses 0.7), got {value}",
    ),
    *((key, lambda v: v >= 1, f"{key} must be at least 1, got {{value}}") for key in AT_LEAST_ONE),
    (
        "retrain_models",
        lambda v: v >= 2,
        "retrain_models must be at least 2 so that confidence intervals exist, got {value}",
    ),
    (
        "train_size",
        lambda v: v is None or 10 <= v <= 100_000_000,
        "train_size must be null (the whole training set) or in [10, 100,000,000], got {value}",
    ),
    *(
        (key, lambda v: v >= 0, f"{key} must be at least 0, got {{value}}")
        for key in ("slurm_gpus_per_task", "slurm_retries")
    ),
    (
        "slurm_mem_gb",
        lambda v: v is None or v >= 1,
        "slurm_mem_gb must be null (the partition's default) or at least 1, got {value}",
    ),
    (
        "slurm_sbatch",
        lambda v: all(SBATCH_OPTION.fullmatch(k) for k in v),
        lambda v: (
            "slurm_sbatch keys are sbatch option names without the dashes (e.g. account, qos), got "
            f"{[k for k in v if not SBATCH_OPTION.fullmatch(k)]}"
        ),
    ),
    ("width", lambda v: v is None or v >= 1, "width must be at least 1, got {value}"),
    (
        "image_size",
        lambda v: v is None or 1 <= v <= MAX_IMAGE_SIZE,
        "image_size must be null (keep the images' own size) or a side length in pixels in "
        f"[1, {MAX_IMAGE_SIZE}] (e.g. 32), got {{value}}",
    ),
    (
        "results_dir",
        lambda v: str(v).strip(),
        "results_dir is empty: give a folder, e.g. results (relative to the project root)",
    ),
    (
        "results_dir",
        lambda v: not _is_filesystem_root(v),
        "results_dir: {value!r} is the root of the filesystem; results go to <results_dir>/<profile>, so choose a "
        "folder of your own, e.g. results or /scratch/$USER/memlib",
    ),
    (
        "results_dir",
        lambda v: not _climbs_out(v),
        "results_dir: {value!r} climbs out of the project (relative paths are taken from the project root). Give a "
        "folder inside it (e.g. results), or an absolute path if you mean a folder elsewhere.",
    ),
    ("lr", lambda v: 0 < v <= 10, "lr must lie in (0, 10] (the profiles use 0.01-0.4), got {value}"),
    ("momentum", lambda v: 0 <= v < 1, "momentum must lie in [0, 1), got {value}"),
    ("weight_decay", lambda v: 0 <= v < 1, "weight_decay must lie in [0, 1), got {value}"),
    ("label_smoothing", lambda v: 0 <= v < 1, "label_smoothing must lie in [0, 1), got {value}"),
    (
        "grad_clip",
        lambda v: v is None or 0 < v < math.inf,
        "grad_clip must be null (no clipping) or a positive gradient norm (e.g. 1.0), got {value}",
    ),
    *(
        (key, lambda v, allowed=allowed: v in allowed, f"{key} must be one of {', '.join(allowed)}; got {{value!r}}")
        for key, allowed in CHOICES.items()
    ),
    (
        "device",
        lambda v: v in ("auto", "cpu") or v.startswith("cuda"),
        "device must be 'auto', 'cpu' or 'cuda[:N]', got {value!r}",
    ),
    *(
        (key, lambda v: 0.0 < v <= 1.0, f"{key} must lie in (0, 1] (the paper uses 0.15 and 0.25), got {{value}}")
        for key in ("infl_threshold", "mem_threshold")
    ),
    (
        "label_noise",
        lambda v: 0.0 <= v < 1.0,
        "label_noise must lie in [0, 1) (a fraction of the training pool): {value}",
    ),
    (
        "fit_target",
        lambda v: 0.5 <= v <= 1.0,
        "fit_target must lie in [0.5, 1] (the in-sample accuracy of the paper's regime; default 0.99), got {value}",
    ),
    (
        "pair_fdr",
        lambda v: 0.0 < v < 1.0,
        "pair_fdr must lie strictly between 0 and 1 (for example 0.05), got {value}",
    ),
    (
        "utility_thresholds",
        lambda v: len(v) > 0,
        "utility_thresholds must list at least one memorization threshold",
    ),
    (
        "utility_thresholds",
        lambda v: all(0.0 < t <= 1.0 for t in v),
        lambda v: f"utility_thresholds must each lie in (0, 1]; out of range: {[t for t in v if not 0.0 < t <= 1.0]}",
    ),
    ("utility_thresholds", lambda v: len(set(v)) == len(v), "utility_thresholds has repeats: {value}"),
]


def _check_compare_arch(cfg: Config) -> None:
    if cfg.compare_arch is not None and cfg.compare_arch == cfg.arch:
        raise ConfigError(f"compare_arch must differ from arch ({cfg.arch}), or be null")


def _check_models_leave_out_enough(cfg: Config) -> None:
    expected_out = cfg.num_models * (1 - cfg.subset_ratio)
    if expected_out < cfg.min_out:
        need = math.ceil(cfg.min_out / (1 - cfg.subset_ratio))
        raise ConfigError(
            f"num_models={cfg.num_models} at subset_ratio={cfg.subset_ratio} leaves each example out of "
            f"only about {expected_out:.0f} models, fewer than min_out={cfg.min_out}. Raise num_models to "
            f"well above {need} (random subsets scatter around the mean), or lower min_out."
        )


# Checks of several fields together, after RULES.
CROSS_CHECKS: tuple[Callable[[Config], None], ...] = (
    _check_dataset_keys,
    _check_compare_arch,
    _check_models_leave_out_enough,
)


def role_keys(role: str) -> tuple[str, ...]:
    """The fields of Config whose role (ROLES) is `role`, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("role") == role)


# Fields that decide the subset models (and so the contents of the stage-1 store): those that `trains`.
TRAINING_KEYS = role_keys("trains")


def _fingerprint(values: dict[str, Any]) -> str:
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _numbers_from_strings(values: dict[str, Any]) -> dict[str, Any]:
    """Numbers that YAML 1.1 reads as strings (`1e-3`, `5e4`) for number fields; other values unchanged."""
    hints = {f.name: str(f.type) for f in dataclasses.fields(Config)}
    out = dict(values)
    for name, value in values.items():
        kind = hints.get(name, "")
        if kind in ("float", "float | None", "list[float]"):
            items = value if kind == "list[float]" and isinstance(value, list) else [value]
            items = [float(v) if isinstance(v, str) and NUMBER.fullmatch(v.strip()) else v for v in items]
            out[name] = items if kind == "list[float]" and isinstance(value, list) else items[0]
        elif kind in ("int", "int | None") and isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            number = float(value)
            if math.isfinite(number) and number == int(number):
                out[name] = int(number)
        elif kind in ("int", "int | None") and isinstance(value, float) and value.is_integer():
            out[name] = int(value)  # 4e1, which YAML 1.2 (and memlib's loader) reads as a float
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The check of each type annotation a Config field has (tests/test_config.py fails on a field whose type has none).
TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "str | None": lambda v: v is None or isinstance(v, str),
    "int": _whole,
    "int | None": lambda v: v is None or _whole(v),
    "int | str": lambda v: isinstance(v, str) or _whole(v),  # epochs: a number or auto (its rule says which str)
    "bool": lambda v: isinstance(v, bool),
    "float": _number,
    "float | None": lambda v: v is None or _number(v),
    "dict[str, str]": lambda v: (
        isinstance(v, dict) and all(isinstance(k, str) and (isinstance(x, str) or _number(x)) for k, x in v.items())
    ),
    "list[float]": lambda v: isinstance(v, (list, tuple)) and all(_number(x) for x in v),
}


def _check_types(cfg: Config) -> None:
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), str(f.type)
        if hint not in TYPE_CHECKS:
            raise TypeError(f"Config.{f.name} is annotated {hint}, which TYPE_CHECKS has no check for: add one")
        if not TYPE_CHECKS[hint](value):
            raise ConfigError(f"{f.name} must be of type {hint}, got {Shown(value)!r} ({type(value).__name__})")


def project_root() -> Path:
    """The checkout that holds configs/ and notebooks/ (searched upwards from the working directory)."""
    here = Path.cwd().resolve()
    package_parent = Path(__file__).resolve().parent.parent  # an editable install sits in the checkout
    for candidate in (here, *here.parents, package_parent):
        if (candidate / "configs").is_dir() and (candidate / "notebooks").is_dir():
            return candidate
    return here


def configs_dir() -> Path:
    """Where the named profiles are: the checkout's configs/, else the copy an installed wheel ships (memlib/configs
    links to configs/, and pyproject.toml packages it)."""
    checkout = project_root() / "configs"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parent / "configs"


def resolve(path: str | Path) -> Path:
    """A user path: `~` expanded, relative paths taken from the project root (notebooks run in notebooks/)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def profile_path(profile: str) -> Path:
    """Path of configs/<profile>.yaml, or a ConfigError that lists the profiles there are."""
    path = Path(profile).expanduser()
    if path.is_dir():
        raise ConfigError(f"profile {profile} is a folder: give a YAML file (a name in configs/ or a .yaml path)")
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"profile file {path} does not exist: give a name in configs/ or a path to a YAML file")
        return path.resolve()
    if path.is_file() or "/" in profile or os.sep in profile:
        raise ConfigError(
            f"profile {profile} is not a .yaml file: a profile is a name in configs/ (e.g. digits) or a path to a "
            "YAML file ending in .yaml"
        )
    configs = configs_dir()
    path = configs / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in configs.glob("*.yaml"))
        raise ConfigError(f"no profile '{profile}': {path} does not exist. Known profiles: {', '.join(known)}")
    return path


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that numbers such as 1e-3 (no dot) are floats, as in YAML 1.2."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _unique_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are all different (YAML would silently keep the last of a repeated key)."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key (a list or a mapping): SafeLoader says so itself
            continue
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice (lines {first} and {key_node.start_mark.line + 1}); keep one of them",
                key_node.start_mark,
            )
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path) -> Any:
    """A YAML file's contents, with 1e-3 read as a number; a file that is not text, or repeats a key, is refused."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError as exc:
        raise ConfigError(f"{path} is a folder, not a YAML file") from exc
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8")
        if "\0" in text:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "a NUL byte")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not a text file (byte {exc.start} is not UTF-8 text: {exc.reason}). A profile is a YAML text "
            "file of `name: value` lines; check that the right file was given"
        ) from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None


KINDS = {int: "a number", float: "a number", bool: "true or false", type(None): "empty", tuple: "a list"}


def profile_argument(profile: str) -> str:
    """How to name a profile on the command line: its name if configs/ holds it, else a path to its file.

    The command line says it as the user gave it instead (StoreError.message)."""
    if (configs_dir() / f"{profile}.yaml").is_file():
        return profile
    return f"path/to/{profile}.yaml"


class Shown:
    """A value as a message shows it: its repr, cut to its start and end when it is long (a 100,000-character
    value is not echoed in full)."""

    LIMIT = 80

    def __init__(self, value: Any):
        self.value = value

    def _cut(self, text: str) -> str:
        if len(text) <= self.LIMIT:
            return text
        size = f"{len(self.value):,} characters" if isinstance(self.value, str) else f"{len(text):,} characters shown"
        return f"{text[:50]}...{text[-12:]} ({size})"

    def __repr__(self) -> str:
        return self._cut(repr(self.value))

    def __str__(self) -> str:
        return self._cut(str(self.value))

    def __format__(self, spec: str) -> str:
        return format(self.value, spec) if spec else str(self)


def _lookalikes(key: str) -> str:
    """For a key with characters that are not plain ASCII (a zero-width space, a Cyrillic letter that looks Latin):
    which, where, and their Unicode names; '' for a plain key."""
    odd = [(i, c) for i, c in enumerate(key) if not (c.isascii() and c.isprintable())]
    named = ", ".join(f"{f'U+{ord(c):04X}'} {unicodedata.name(c, 'unnamed')} at position {i}" for i, c in odd[:3])
    return f": it holds {named}, which looks like (or hides between) plain letters; retype the key" if odd else ""


def _refuse_unknown_keys(values: dict[str, Any], source: str) -> None:
    """ConfigError for keys that are not fields of Config, each with the closest known key (and any character
    that only looks like a plain letter)."""
    unknown = [k for k in values if k not in Config.keys()]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, Config.keys(), n=1) if isinstance(k, str) else []
            odd = _lookalikes(k) if isinstance(k, str) else ""
            hint = odd or (f" (did you mean '{close[0]}'?)" if close else "")
            hints.append(f"{Shown(k)!r}" + hint)
        raise ConfigError(f"unknown key {', '.join(hints)} in {source}. Known keys: {', '.join(Config.keys())}.")


def _read_values(path: Path) -> dict[str, Any]:
    """A YAML file of `name: value` lines as a dict ({} for an empty file); anything else is a ConfigError."""
    values = read_yaml(path)
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path} must be a mapping of parameter names to values (`name: value` lines), not a "
            f"{type(values).__name__}"
        )
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        raise ConfigError(
            f"{path}: key {odd[0]!r} is not a name (YAML reads it as {KINDS.get(type(odd[0]), 'a value')}); every key "
            f"is a parameter name such as epochs (known keys: {', '.join(Config.keys())})"
        )
    return values


def load_profile(profile: str, params: str | Path | None = None) -> Config:
    """Read configs/<profile>.yaml (or a YAML path) on top of the defaults, then `params`, and validate it.

    params, a YAML file of values laid over the profile's, is how the notebooks get theirs: `make` writes every
    value of the loaded profile to <results_dir>/<profile>/parameters.yaml (`python -m memlib out-dir PROFILE
    --params parameters.yaml`) and hands papermill that path as the notebooks' `params`.
    """
    path = profile_path(profile)
    values = _read_values(path)
    if not PLAIN_NAME.fullmatch(path.stem):
        raise ConfigError(f"{path}: a profile file's name must be plain (no '/', '.' or '..'), got {path.stem!r}")
    if values.get("profile", path.stem) != path.stem:
        raise ConfigError(f"{path} says profile: {values['profile']!r}; it must match the file name ({path.stem!r})")
    values["profile"] = path.stem
    override = os.environ.get(EXECUTOR_ENV)
    if override:
        if override not in EXECUTORS:
            raise ConfigError(f"{EXECUTOR_ENV} must be one of {', '.join(EXECUTORS)} (or unset), got {override!r}")
        values["executor"] = override
    if params is not None:
        params = Path(params).expanduser()
        extra = _read_values(params)
        _refuse_unknown_keys(extra, str(params))
        if extra.get("profile", path.stem) != path.stem:
            raise ConfigError(f"{params} says profile: {extra['profile']!r}; it is given for profile {path.stem!r}")
        values.update(extra)
    return with_recorded_epochs(Config.from_dict(values, source=str(path)))


def auto_epochs_key(cfg: Config) -> str:
    """What an `epochs: auto` choice depends on: the training fields (epochs: auto), max_epochs and fit_target."""
    values = {k: getattr(cfg, k) for k in TRAINING_KEYS}
    return _fingerprint({**values, "epochs": AUTO, "max_epochs": cfg.max_epochs, "fit_target": cfg.fit_target})


def with_recorded_epochs(cfg: Config) -> Config:
    """`epochs: auto` as stage 1 chose it for this profile and these settings (EPOCHS_RECORD), once it has."""
    if cfg.epochs != AUTO:
        return cfg
    path = cfg.out_dir / EPOCHS_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return cfg
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}): delete it, and stage 1 chooses the epochs again") from exc
    if not isinstance(record, dict) or record.get("key") != auto_epochs_key(cfg):
        return cfg  # chosen for other settings: stage 1 chooses again (and writes the record anew)
    return cfg.replace(epochs=record["epochs"])


def display_path(path: str | Path) -> str:
    """A path as a report shows it: relative to the project root, or under ~, never the machine's home folder."""
    path = Path(path).expanduser().resolve()
    for base, prefix in ((project_root().resolve(), ""), (Path.home().resolve(), "~/")):
        try:
            rel = path.relative_to(base)
        except ValueError:
            continue
        return prefix + (str(rel) if str(rel) != "." else "") or "."
    return str(path)
