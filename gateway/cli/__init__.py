"""deskgate command line. Each module in COMMANDS adds its subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules of gateway.cli that define register(subparsers). Add yours here.
COMMANDS: tuple[str, ...] = ("core", "tickets", "inventory", "filter", "log", "passwd", "keys",
                             "fetch", "outbound", "handoff", "classify")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deskgate", description="Mail gateway for helpdesks.")
    parser.add_argument("--config", "-c", metavar="DIR",
                        help="configuration directory (default: $DESKGATE_CONFIG, ./conf.d, "
                             "/etc/deskgate/conf.d)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"gateway.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Before any plugin imports prometheus_client: `serve` with pre-forked LMTP
    # workers needs its multi-process mode chosen first.
    if getattr(args, "command", None) == "serve":
        from gateway.cli.core import prepare_serve_process

        prepare_serve_process(args)
    from gateway.app import load_plugins

    load_plugins()   # plugins register config validators that `check` must run
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    sys.stdout.flush()
    return int(rc or 0)
