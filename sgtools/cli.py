"""The `shardgate` console script: `shardgate dev` (local cluster) and `shardgate bench` (load)."""

from __future__ import annotations

import argparse
import logging
import sys

from sgtools import bench, dev, schedules_cli


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the `dev` and `bench` subcommands."""
    parser = argparse.ArgumentParser(prog="shardgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{dev,bench,schedules}")
    dev.add_arguments(sub.add_parser(
        "dev", help="run Redis, partition workers and an ingress node in the foreground",
        description=dev.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    bench.add_arguments(sub.add_parser(
        "bench", help="load-test a running ingress (loopback only by default)",
        description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    schedules_cli.add_arguments(sub.add_parser("schedules", help="list, get, set, pause, resume, delete schedules",
                                               description=schedules_cli.__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def configure_logging(level: str) -> None:
    """Supervisor/bench diagnostics go to stderr; stdout carries only the command's result."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s shardgate %(levelname)s %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", "INFO"))
    if args.command == "dev":
        return dev.main(args)
    if args.command == "schedules":
        return schedules_cli.main(args)
    return bench.main(args)


if __name__ == "__main__":
    sys.exit(main())
