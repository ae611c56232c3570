"""Command line: `python -m memlib {check,train,report} PROFILE`."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_profile
from .data import DataError
from .store import StoreError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate a profile before any long work (writes nothing)")
    p_train = sub.add_parser("train", help="stage 1 without a notebook, e.g. one worker of many on a cluster")
    p_train.add_argument("--rows", default=None, help="START:STOP, the run indices this worker trains")
    p_report = sub.add_parser("report", help="render results/<profile>/report.html from executed notebooks")
    for p in (p_check, p_train, p_report):
        p.add_argument("profile", help="a name in configs/ (e.g. digits) or a path to a YAML file")
    args = parser.parse_args(argv)
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

            data = load_dataset(cfg)
            check(cfg, data)
            rows = None
            if args.rows:
                start, stop = (int(x) if x else None for x in args.rows.split(":"))
                rows = range(cfg.num_models)[slice(start, stop)]
            store = train_subsets(cfg, data, rows=rows)
            print(f"{store.done()} of {store.rows} models finished in {store.path}")
        elif args.command == "report":
            from .report import render_report

            print(render_report(cfg.out_dir, title=f"Memorization and influence: profile '{cfg.profile}'"))
    except (ConfigError, DataError, StoreError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
