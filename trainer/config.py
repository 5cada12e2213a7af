"""The trainer's config: plain dataclasses, one per concern, composed into `TrainConfig`.

Resolution order: defaults < `--config FILE` (TOML or JSON) < `--section.key=value` flags
< the named shortcuts (`--steps`, `--fsdp`, ...). An unknown key or a value of the wrong
type is an error naming the dotted key. The resolved config is the first thing every
segment records and is stored in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .model import PRESETS


@dataclass
class ModelConfig:
    preset: str = "tiny"  # a key of trainer.model.PRESETS (tiny, 125m, ..., 175b)
    dropout: float = 0.1  # residual and attention dropout; none on embeddings (OPT)
    meta_init: str = "auto"  # on | off | auto (on above 2B parameters): build on the meta device, shard, then init


@dataclass
class DataConfig:
    path: str = ""  # flat uint16/uint32 token file (nanoGPT .bin); "" = the built-in offline byte corpus
    dtype: str = "uint16"  # uint16 | uint32: the token file's element type
    seq_len: int = 0  # tokens per sequence; 0 = the preset's max_seq_len
    batch_size: int = 8  # sequences per rank per step
    seed: int = 1234  # data order is a function of (seed, batch index, rank) only


@dataclass
class OptimConfig:
    lr: float = 0.0  # peak LR; 0 = the preset's (OPT Table 1)
    lr_multiplier: float = 1.0  # scales the whole schedule; what an "LR x0.5" intervention changes
    warmup_steps: int = -1  # linear warm-up steps; -1 = the preset's
    decay_steps: int = 0  # steps of linear decay after warm-up; 0 = until --steps
    min_lr_ratio: float = 0.1  # decay ends at this fraction of the peak (OPT: 10%)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip: float = 1.0  # max global grad norm; changeable in mid-flight (OPT went 1.0 -> 0.3)


@dataclass
class PrecisionConfig:
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses dynamic loss scaling)
    init_scale: float = 4.0  # initial fp16 loss scale (metaseq's final OPT-175B config)
    scale_floor: float = 0.25  # the loss scale never goes below this (OPT-175B final config: floor 0.25)
    growth_interval: int = 256  # good steps before the scale doubles


@dataclass
class ParallelConfig:
    fsdp: str = "fsdp2"  # fsdp2 | fairscale | none (fsdp2 in a 1-process world is plain training)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~30% more compute


@dataclass
class CheckpointConfig:
    every: int = 100  # steps between checkpoints; 0 = only on demand and at the end
    keep_latest: int = 3  # complete checkpoints kept (>= 2: the newest may still be mid-save)
    at_end: bool = True  # save one when the run finishes


@dataclass
class LogConfig:
    enabled: bool = True  # False: record nothing (the baseline of benchmarks/bench_trainer_overhead.py)
    every: int = 1  # steps between metric records (each one is a cross-rank loss reduction)
    print_every: int = 10  # steps between progress lines on stdout (rank 0); 0 = quiet
    param_norm_every: int = 50  # steps between parameter-norm and memory records (a full pass over weights)
    peak_tflops: float = 0.0  # per-device peak for MFU; 0 = known GPUs only, no MFU on CPU


@dataclass
class TelemetryConfig:
    enabled: bool = True
    devices: str = "auto"  # auto | gpu | cpu: what to sample; auto = the GPUs of a CUDA run, else the CPU
    hz: float = 1.0  # samples per second, on a background thread of local rank 0
    cpu_tdp_w: float = 0.0  # nameplate CPU power for the labelled estimate; 0 = the sampler's default


@dataclass
class ControlConfig:
    poll_every: int = 0  # steps between intervention polls; 0 = auto: every step alone, every 10 with >1 rank
    # (alone a poll is one stat(); with several ranks it is also a small broadcast from rank 0)


@dataclass
class FaultConfig:
    nan_tolerance: int = 3  # consecutive non-finite losses before the run crashes (and restarts)
    spike_lr_factor: float = 30.0  # spike@N: LR x this for 3 steps, plus a corrupted batch at N
    slow_rank_s: float = 0.05  # slow-rank@N: extra seconds per step on the last rank


@dataclass
class TrainConfig:
    run_dir: str = "runs/demo"
    name: str = ""  # display name; "" = the run directory's name
    steps: int = 200  # total optimizer steps (the schedule's length)
    device: str = "cpu"  # cpu | cuda
    seed: int = 0  # model init and dropout
    inject: list = field(default_factory=list)  # faults, "KIND@STEP" or "KIND@FIRST-LAST"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        checks = [
            ("steps", self.steps >= 1, "must be >= 1"),
            ("device", self.device in ("cpu", "cuda"), "must be cpu or cuda"),
            ("model.preset", self.model.preset in PRESETS, f"must be one of {', '.join(PRESETS)}"),
            ("model.dropout", 0 <= self.model.dropout < 1, "must be in [0, 1)"),
            ("model.meta_init", self.model.meta_init in ("on", "off", "auto"), "must be on, off or auto"),
            ("data.dtype", self.data.dtype in ("uint16", "uint32"), "must be uint16 or uint32"),
            ("data.seq_len", self.data.seq_len >= 0, "must be >= 0"),
            ("data.batch_size", self.data.batch_size >= 1, "must be >= 1"),
            ("optim.lr", self.optim.lr >= 0, "must be >= 0"),
            ("optim.lr_multiplier", self.optim.lr_multiplier > 0, "must be > 0"),
            ("optim.min_lr_ratio", 0 <= self.optim.min_lr_ratio <= 1, "must be in [0, 1]"),
            ("optim.beta2", 0 < self.optim.beta2 < 1, "must be in (0, 1)"),
            ("optim.clip", self.optim.clip > 0, "must be > 0"),
            ("precision.dtype", self.precision.dtype in ("fp32", "bf16", "fp16"), "must be fp32, bf16 or fp16"),
            ("precision.init_scale", self.precision.init_scale > 0, "must be > 0"),
            ("precision.scale_floor", self.precision.scale_floor > 0, "must be > 0"),
            ("parallel.fsdp", self.parallel.fsdp in ("fsdp2", "fairscale", "none"), "must be fsdp2, fairscale or none"),
            ("checkpoint.every", self.checkpoint.every >= 0, "must be >= 0"),
            ("checkpoint.keep_latest", self.checkpoint.keep_latest >= 2, "must be >= 2 (the newest may be mid-save)"),
            ("log.every", self.log.every >= 1, "must be >= 1"),
            ("log.param_norm_every", self.log.param_norm_every >= 1, "must be >= 1"),
            ("telemetry.hz", self.telemetry.hz > 0, "must be > 0"),
            ("telemetry.devices", self.telemetry.devices in ("auto", "gpu", "cpu"), "must be auto, gpu or cpu"),
            ("log.print_every", self.log.print_every >= 0, "must be >= 0"),
            ("control.poll_every", self.control.poll_every >= 0, "must be >= 0"),
            ("faults.nan_tolerance", self.faults.nan_tolerance >= 1, "must be >= 1"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ValueError(f"{key} {what} (got {get(self, key)!r})")
        if self.parallel.fsdp == "fairscale" and self.device != "cuda":
            raise ValueError("parallel.fsdp=fairscale needs --device cuda: fairscale FSDP does not run on CPU")
        from .faults import parse_injections

        kinds = {inj.kind for inj in parse_injections(self.inject)}  # raises ValueError on a malformed KIND@STEP
        if "overflow" in kinds and self.precision.dtype != "fp16":
            raise ValueError("--inject overflow@N needs --precision fp16: only fp16 has a loss scale to overflow")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _coerce(key: str, current, raw):
    """`raw` (text from a flag, or a value from a file) as the type of the field's current value."""
    kind = type(current)
    if isinstance(raw, str) and kind is not str:
        text = raw.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return text.lower() in ("true", "1", "yes")
            if kind is list:
                return [s for s in text.split(",") if s]
            return kind(float(text)) if kind is int and text.replace(".", "", 1).isdigit() else kind(text)
        except ValueError:
            raise ValueError(f"{key} must be {kind.__name__}, not {raw!r}") from None
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if kind is int and isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if not isinstance(raw, kind) or (kind is int and isinstance(raw, bool)):
        raise ValueError(f"{key} must be {kind.__name__}, not {raw!r}")
    return raw


def set_value(cfg: TrainConfig, dotted: str, raw) -> None:
    """Set `section.key` (or a top-level key), typed like its default; unknown keys are errors."""
    *parents, leaf = dotted.split(".")
    obj = cfg
    for i, part in enumerate(parents):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise ValueError(f"unknown config section {'.'.join(parents[: i + 1])!r}")
        obj = getattr(obj, part)
    names = {f.name for f in dataclasses.fields(obj)}
    if leaf not in names or dataclasses.is_dataclass(getattr(obj, leaf)):
        raise ValueError(f"unknown config key {dotted!r}")
    setattr(obj, leaf, _coerce(dotted, getattr(obj, leaf), raw))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_file(path: str) -> dict:
    """A TOML or JSON config file as {dotted.key: value}."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read config file {path!r}: {exc.strerror}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if p.suffix == ".json" else "TOML"
        raise ValueError(f"config file {path!r} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a table of settings")
    return _flatten(data)


def resolve(overrides: list[tuple[str, object]]) -> TrainConfig:
    """Defaults with `overrides` applied in order, then validated once."""
    cfg = TrainConfig()
    for key, value in overrides:
        set_value(cfg, key, value)
    cfg.validate()
    return cfg
