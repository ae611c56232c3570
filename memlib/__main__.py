"""Command line: `python -m memlib COMMAND PROFILE`, PROFILE a name in configs/ or a path to a YAML file.

check, train, repair, report, submit and status are for people; out-dir, kept and clean serve the Makefile,
so that every target writes where memlib does and nothing is removed outside <results_dir>/<profile>.
submit and status are for a SLURM cluster (see memlib.runs.slurm and the README).
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# memlib's modules are imported inside main(): a spawned worker imports this module (as the parent's main)
# before it arms its parent-death signal, so it must stay light (see memlib.runs.lifeline).


def parse_rows(text: str, num_models: int) -> range:
    """`START:STOP` with 0 <= START < STOP <= num_models; ConfigError otherwise."""
    from .config import ConfigError

    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--rows must be START:STOP (two whole numbers, e.g. 0:{num_models}), got {text!r}")
    start, stop = int(match[1]), int(match[2])
    if not start < stop <= num_models:
        raise ConfigError(f"--rows {text}: need START < STOP <= num_models ({num_models}), e.g. 0:{num_models}")
    return range(start, stop)


def models_kept(cfg) -> int:
    """Finished models in the profile's stores (stage 1 and stage 3), read from their completed-masks."""
    import numpy as np

    from .runs.store import COMPLETED

    kept = 0
    for store in ("store", "retrain"):
        file = cfg.out_dir / store / f"{COMPLETED}.npy"
        if file.exists():
            try:
                kept += int(np.count_nonzero(np.load(file, mmap_mode="r")))
            except (OSError, ValueError):
                pass
    return kept


def write_params(cfg, path: Path) -> Path:
    """Every key of the config as plain YAML (numbers as numbers): the notebooks' `params` file (an output of
    memlib.report.artifacts.OUTPUTS: parameters.yaml or lab/parameters.yaml), written atomically."""
    import yaml

    from .report.artifacts import write_output

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    return write_output(Path(path), lambda f: f.write(text.encode()))


def clean(cfg) -> str:
    """Remove from <results_dir>/<profile> what memlib wrote there, by its own record, and nothing else.

    Removed: the files the folder's list of outputs records (memlib.report.artifacts.MANIFEST), the files of each
    store its spec.json names, and the stages' executed notebooks (papermill's record in them); the folder goes
    if nothing else is left. Anything else (your own files) is kept, and the message names it.
    """
    from .config import ConfigError, display_path, project_root, resolve
    from .stages.clean import remove_outputs

    out = cfg.out_dir
    results = resolve(cfg.results_dir).resolve()
    if out.is_symlink():
        raise ConfigError(f"{out} is a symbolic link; remove it by hand if you mean to")
    out = out.resolve()
    root = project_root().resolve()
    if out.parent != results or out.name != cfg.profile or out == root or root.is_relative_to(out):
        raise ConfigError(f"refusing to remove {out}: it is not <results_dir>/<profile> ({results}/{cfg.profile})")
    if not out.exists():
        return f"nothing to remove: {display_path(out)} does not exist"
    removed, kept = remove_outputs(out)
    if not kept:
        return f"removed {display_path(out)}"
    shown = ", ".join(str(p.relative_to(out)) for p in kept[:5])
    shown += f" and {len(kept) - 5} more" if len(kept) > 5 else ""
    return (
        f"removed the {removed} files memlib wrote in {display_path(out)}; kept {shown}, which memlib did not "
        "write (remove them by hand if you mean to)"
    )


def check_command(cfg, args) -> None:
    from .stages.check import check

    info = check(cfg)
    print(f"profile '{cfg.profile}' is ready:")
    width = max(map(len, info)) + 2
    for k, v in info.items():
        print(f"  {k:<{width}} {v}")


def train_command(cfg, args) -> None:
    from .config import display_path
    from .data.datasets import load_dataset
    from .stages.check import check
    from .stages.train import train_subsets

    rows = parse_rows(args.rows, cfg.num_models) if args.rows is not None else None
    data = load_dataset(cfg)
    check(cfg, data)
    store = train_subsets(cfg, data, rows=rows)
    where = "by SLURM tasks while this ran" if cfg.executor == "slurm" else "here"
    print(
        f"{store.done()} of {store.rows} models finished in {display_path(store.path)} "
        f"({store.trained} trained {where})"
    )


def submit_command(cfg, args) -> None:
    from .config import display_path
    from .data.datasets import load_dataset
    from .runs.slurm import submit_array
    from .runs.subsets import open_subset_store
    from .stages.check import check
    from .train.design import check_out_counts, subset_jobs

    data = load_dataset(cfg)
    check(cfg, data)
    check_out_counts(cfg, data.n_train)
    store = open_subset_store(cfg, data)
    new, live = submit_array(store, subset_jobs(cfg, data.n_train, store.pending()), cfg)
    jobs = sorted({t.job.split("_")[0] for t in new})
    print(
        f"{display_path(store.path)}: {store.done()} of {store.rows} models finished; submitted {len(new)} "
        f"array tasks" + (f" (SLURM job {', '.join(jobs)})" if jobs else "") + f"; {len(live)} queued or "
        "running already (not submitted again)."
    )
    print(
        f"Follow it with `python -m memlib status {args.profile}`. `make reproduce` (or `python -m memlib "
        "train`) with executor: slurm reattaches to these tasks, resubmits failed ones and goes on."
    )


def status_command(cfg, args) -> None:
    from .config import display_path
    from .runs.slurm import open_store, status_text
    from .runs.store import SPEC_FILE

    paths = [p for p in (cfg.out_dir / "store", cfg.out_dir / "retrain") if (p / SPEC_FILE).exists()]
    if not paths:
        print(f"no store yet in {display_path(cfg.out_dir)}: nothing trained or submitted")
    for path in paths:
        print(status_text(open_store(path, writable=False)))


def repair_command(cfg, args) -> None:
    from .config import display_path
    from .data.datasets import load_dataset
    from .runs.store import Store, describe_rows
    from .runs.subsets import repair_subset_store, subset_store_path

    repaired = {subset_store_path(cfg): repair_subset_store(cfg, load_dataset(cfg))}
    if (cfg.out_dir / "retrain").is_dir():  # stage 3's store: its own spec says what it holds
        repaired[cfg.out_dir / "retrain"] = Store.repair(cfg.out_dir / "retrain")
    for path, cleared in repaired.items():
        if cleared:
            print(
                f"{display_path(path)}: cleared {len(cleared)} rows that failed verification: {describe_rows(cleared)}"
            )
        else:
            print(f"{display_path(path)}: every finished row verifies; nothing to clear")
    if any(repaired.values()):
        print(f"Rerun training (`python -m memlib train {args.profile}`, or the notebooks) to redo just those.")


def report_command(cfg, args) -> None:
    from .config import display_path
    from .report.html import render_report

    path = render_report(cfg.out_dir, title=f"Memorization and influence: profile '{cfg.profile}'")
    print(display_path(path))


def out_dir_command(cfg, args) -> None:
    if args.params:
        write_params(cfg, cfg.out_dir / args.params)
    print(cfg.out_dir)


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, the function that runs it on the loaded profile, and its options.

    Every command takes the profile as its last argument; `run(cfg, args)` prints its result and raises the
    errors main() turns into exit code 2. Its imports of memlib's modules stay inside it (see above).
    """

    help: str
    run: Callable[[Any, argparse.Namespace], None]
    options: tuple[tuple[str, dict[str, Any]], ...] = ()


COMMANDS = {
    "check": Command("validate a profile, its data and every stage's store (writes nothing)", check_command),
    "train": Command(
        "stage 1 without a notebook, e.g. one worker of many on a cluster",
        train_command,
        (("--rows", {"default": None, "help": "START:STOP, the run indices this worker trains"}),),
    ),
    "submit": Command("submit stage 1 to SLURM as a job array and return at once", submit_command),
    "status": Command("finished, running, pending and failed rows of the profile's stores", status_command),
    "repair": Command("clear the completed flags of stored rows that fail verification", repair_command),
    "report": Command("render <results_dir>/<profile>/report.html from executed notebooks", report_command),
    "out-dir": Command(
        "print the folder this profile's results go to",
        out_dir_command,
        (("--params", {"metavar": "FILE", "help": "also write every parameter as YAML to FILE in that folder"}),),
    ),
    "kept": Command(
        "print how many finished models the profile's stores hold", lambda cfg, args: print(models_kept(cfg))
    ),
    "clean": Command(
        "delete <results_dir>/<profile> (finished models too) and nothing else", lambda cfg, args: print(clean(cfg))
    ),
}


def parser() -> argparse.ArgumentParser:
    """`python -m memlib COMMAND [options] PROFILE`, one subcommand per entry of COMMANDS."""
    top = argparse.ArgumentParser(prog="python -m memlib", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help)
        for flag, options in command.options:
            p.add_argument(flag, **options)
        p.add_argument("profile", help="a name in configs/ (e.g. digits) or a path to a YAML file")
    return top


def _joined_options(argv: list[str]) -> list[str]:
    """`--rows -1:5` as `--rows=-1:5`: argparse takes a value that starts with '-' for an option and says only
    "expected one argument"; joined, the value reaches parse_rows, which says what is wrong with it."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--rows" and out[i + 1].startswith("-"):
            out[i : i + 2] = [f"--rows={out[i + 1]}"]
            break
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(_joined_options(sys.argv[1:] if argv is None else argv))

    from .config import ConfigError, load_profile
    from .data.dataset import DataError
    from .runs.group import DivergedError
    from .runs.slurm import SlurmError
    from .runs.store import StoreError

    cfg = None
    try:
        cfg = load_profile(args.profile)
        COMMANDS[args.command].run(cfg, args)
    except KeyboardInterrupt:
        kept = models_kept(cfg) if cfg is not None else 0
        print(f"\ninterrupted: rerun to resume ({kept} models kept)", file=sys.stderr)
        return 130
    except StoreError as exc:  # its commands name the profile as it was given here
        print(f"error: {exc.message(args.profile)}", file=sys.stderr)
        return 2
    except (ConfigError, DataError, SlurmError, DivergedError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk: full, read-only, or not ours
        if exc.errno not in DISK_ERRORS:
            raise
        kept = models_kept(cfg) if cfg is not None else 0
        print(f"error: {disk_message(exc, args.profile, kept)}", file=sys.stderr)
        return 2
    return 0


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def disk_message(exc: OSError, profile: str, kept: int) -> str:
    """One paragraph for a write the disk refused: what happened, that finished models are kept, how to go on."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = f"the disk is full ({exc.strerror}) writing{where}"
        fix = "Free some space (or choose a results_dir on a larger disk) and rerun the same command"
    else:
        what = f"cannot write{where} ({exc.strerror}: a read-only folder or mount, or no permission)"
        fix = "Make the results folder writable (or choose another results_dir) and rerun the same command"
    return (
        f"{what}. Nothing finished was lost ({kept} models kept): {fix}; it resumes where it stopped "
        f"(`python -m memlib check {profile}` says what is finished)."
    )


if __name__ == "__main__":
    sys.exit(main())
