"""`python -m midflight.trainer` arguments -> a validated TrainConfig plus how to start.

Named flags cover what people change every run; `--config FILE` and
`--section.key=value` reach everything else (see trainer/config.py).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from midflight.logbook.record import interventions

from . import config

SHORTCUTS = {  # flag dest -> config key
    "model": "model.preset",
    "steps": "steps",
    "run_dir": "run_dir",
    "device": "device",
    "fsdp": "parallel.fsdp",
    "precision": "precision.dtype",
    "name": "name",
}


@dataclass
class Launch:
    cfg: config.TrainConfig
    resume: str | None = None  # None = fresh start; "latest" or a step number
    changes: dict = field(default_factory=dict)  # knob changes applied on resume (recorded as the reason)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m midflight.trainer",
        description="midflight's instrumented OPT-recipe trainer. Any config key can also be set with "
        "--section.key=value (e.g. --optim.clip=0.3, --data.batch_size=16); see trainer/config.py.",
    )
    p.add_argument("--model", help="preset: tiny, 125m, 350m, 1.3b, 2.7b, 6.7b, 13b, 30b, 66b, 175b")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--run-dir", help="the run directory (logbook, checkpoints, control channel)")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--fsdp", choices=["fsdp2", "fairscale", "none"])
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--name", help="display name of the run")
    p.add_argument("--config", help="TOML or JSON file of settings ([optim] clip = 0.3 ...)")
    p.add_argument("--presets", action="store_true", help="list the model presets with their sizes, and exit")
    p.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="KIND@STEP",
        help="fault: spike|nan|overflow|crash|slow-rank|disk-full|diverge",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="STEP",
        help="continue from the latest checkpoint (or the one of STEP); a new segment in the logbook",
    )
    p.add_argument(
        "--change",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help=f"with --resume: change a knob on the way back ({', '.join(interventions.rewind_changes())})",
    )
    return p


def parse(argv=None) -> Launch | None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.presets:
        return None
    overrides: list[tuple[str, object]] = []
    if args.config:
        overrides += list(config.load_file(args.config).items())
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            raise ValueError(f"unrecognised argument {item!r} (settings are --section.key=value)")
        key, value = item[2:].split("=", 1)
        overrides.append((key.replace("-", "_"), value))
    for dest, key in SHORTCUTS.items():
        if getattr(args, dest) is not None:
            overrides.append((key, getattr(args, dest)))
    if args.inject:
        overrides.append(("inject", list(args.inject)))
    cfg = config.resolve(overrides)
    if args.change and args.resume is None:
        raise ValueError("--change only applies with --resume")
    if args.resume not in (None, "latest") and not args.resume.isdigit():
        raise ValueError(f"--resume takes a step number, not {args.resume!r}")
    return Launch(cfg, args.resume, _changes(args.change))


def _changes(items: list[str]) -> dict:
    knobs = interventions.rewind_changes()  # what a rewind may change is what a resume may change
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or name not in knobs:
            raise ValueError(f"--change {item!r}: expected KNOB=VALUE with KNOB one of {', '.join(knobs)}")
        try:
            out[name] = knobs[name].params[0].type(raw)
        except ValueError:
            raise ValueError(f"--change {item!r}: {raw!r} is not a number") from None
    return out
