"""Command line: `python -m memlib {check,train,repair,report} PROFILE`."""

from __future__ import annotations

import argparse
import re
import sys

# memlib's modules are imported inside main(): a spawned worker imports this module (as the parent's main)
# before it arms its parent-death signal, so it must stay light (see memlib.lifeline).


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate a profile before any long work (writes nothing)")
    p_train = sub.add_parser("train", help="stage 1 without a notebook, e.g. one worker of many on a cluster")
    p_train.add_argument("--rows", default=None, help="START:STOP, the run indices this worker trains")
    p_repair = sub.add_parser("repair", help="clear the completed flags of stored rows that fail verification")
    p_report = sub.add_parser("report", help="render results/<profile>/report.html from executed notebooks")
    for p in (p_check, p_train, p_repair, p_report):
        p.add_argument("profile", help="a name in configs/ (e.g. digits) or a path to a YAML file")
    args = parser.parse_args(argv)

    from .config import ConfigError, load_profile
    from .data import DataError
    from .store import StoreError

    try:
        cfg = load_profile(args.profile)
        if args.command == "check":
            from .checks import check

            info = check(cfg)
            print(f"profile '{cfg.profile}' is ready:")
            for k, v in info.items():
                print(f"  {k:<38} {v}")
        elif args.command == "train":
            from .checks import check
            from .data import load_dataset
            from .runner import train_subsets

            rows = parse_rows(args.rows, cfg.num_models) if args.rows is not None else None
            data = load_dataset(cfg)
            check(cfg, data)
            store = train_subsets(cfg, data, rows=rows)
            print(f"{store.done()} of {store.rows} models finished in {store.path} ({store.trained} trained here)")
        elif args.command == "repair":
            from .data import load_dataset
            from .runner import repair_subset_store, subset_store_path
            from .store import Store, describe_rows

            repaired = {subset_store_path(cfg): repair_subset_store(cfg, load_dataset(cfg))}
            if (cfg.out_dir / "retrain").is_dir():  # stage 3's store: its own spec says what it holds
                repaired[cfg.out_dir / "retrain"] = Store.repair(cfg.out_dir / "retrain")
            for path, cleared in repaired.items():
                if cleared:
                    print(f"{path}: cleared {len(cleared)} rows that failed verification: {describe_rows(cleared)}")
                else:
                    print(f"{path}: every finished row verifies; nothing to clear")
            if any(repaired.values()):
                print(f"Rerun training (`python -m memlib train {args.profile}`, or the notebooks) to redo just those.")
        elif args.command == "report":
            from .report import render_report

            print(render_report(cfg.out_dir, title=f"Memorization and influence: profile '{cfg.profile}'"))
    except (ConfigError, DataError, StoreError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
