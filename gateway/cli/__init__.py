"""deskgate command line. Each module in COMMANDS adds its subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

# Modules of gateway.cli that define register(subparsers). Add yours here.
COMMANDS: tuple[str, ...] = ("core", "tickets", "inventory", "filter", "log", "passwd", "keys",
                             "fetch", "outbound", "handoff", "classify")


# Commands run once per message by an MTA: only their module's parser is built
# (building all of them costs more than the rest of `deliver --via-socket`).
HOT_COMMANDS: dict[str, str] = {"deliver": "core"}

# Commands an MTA's pipe transport runs (deliver), or applications run as sendmail(1)
# (send): the caller reads the exit status as sysexits.h, where argparse's 2 means
# nothing (Postfix's pipe(8) bounces it as "Command died with status 2"). Their usage
# errors are one line and EX_USAGE.
SYSEXITS_COMMANDS = frozenset({"deliver", "send"})
EX_USAGE = 64


class _Parser(argparse.ArgumentParser):
    """argparse's parser; with `sysexits_name` set, a usage error is one stderr line
    `NAME: problem` and exit 64 (EX_USAGE) instead of the usage block and exit 2."""

    sysexits_name: str | None = None

    def error(self, message: str) -> NoReturn:
        if self.sysexits_name is None:
            super().error(message)
        self.exit(EX_USAGE, f"{self.sysexits_name}: {' '.join(message.split())}\n")


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, before or after its name. After it (`top`
    False) they default to SUPPRESS: a command's parser sets `config` only when it is
    given there, and then it wins over the value parsed before the command name."""
    parser.add_argument(
        "--config", "-c", metavar="DIR", default=None if top else argparse.SUPPRESS,
        help=("configuration directory (default: $DESKGATE_CONFIG, ./conf.d, "
              "/etc/deskgate/conf.d); also accepted after the command, where it wins "
              "over one given before it") if top else argparse.SUPPRESS)


class DashValue(argparse.Action):
    """Stores the one value of an option that may begin with "-" (`log list --sort
    -duration`, `--search -ERR`): a command's parser takes it after a space as well as
    after "=", where argparse alone would read the word as an unknown option."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)


class _CommandParser(_Parser):
    """The parser of a command (and of its actions): it takes the global options too,
    as `postconf -c DIR` and `doveconf -c FILE` do; `deskgate -h` documents them once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Filled by add_argument, which the base class calls already (for -h).
        self._option_names: set[str] = set()
        self._dash_value_options: set[str] = set()
        super().__init__(*args, **kwargs)
        _add_global_options(self, top=False)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self._option_names.update(action.option_strings)
        if isinstance(action, DashValue):
            self._dash_value_options.update(action.option_strings)
        return action

    def _takes_dash_value(self, arg: str) -> bool:
        """Whether `arg` names a DashValue option, also abbreviated as argparse allows."""
        if arg in self._dash_value_options:
            return True
        if not arg.startswith("--") or "=" in arg or arg in self._option_names:
            return False
        named = [o for o in self._option_names if o.startswith(arg)]
        return self.allow_abbrev and len(named) == 1 and named[0] in self._dash_value_options

    def _join_dash_values(self, args: Sequence[str]) -> list[str]:
        """`--sort -duration` as `--sort=-duration`. A following word that begins with
        "--" stays an option (`--sort --json` is still a missing value); nothing after
        the "--" terminator is touched."""
        out: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                out.extend(args[i:])
                break
            nxt = args[i + 1] if i + 1 < len(args) else ""
            if nxt.startswith("-") and not nxt.startswith("--") and self._takes_dash_value(arg):
                out.append(f"{arg}={nxt}")
                i += 2
                continue
            out.append(arg)
            i += 1
        return out

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        if args is not None and self._dash_value_options:
            args = self._join_dash_values(args)
        return super().parse_known_args(args, namespace)


def build_parser(modules: Sequence[str] = COMMANDS) -> _Parser:
    parser = _Parser(prog="deskgate", description="Mail gateway for helpdesks.")
    _add_global_options(parser, top=True)
    # An action's subparsers inherit parser_class from their parent: every level has them.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    sub.required = True
    for name in modules:
        importlib.import_module(f"gateway.cli.{name}").register(sub)
    for name in SYSEXITS_COMMANDS & sub.choices.keys():
        sub.choices[name].sysexits_name = name
    return parser


def _without_config(argv: Sequence[str]) -> Iterator[str]:
    """argv without the global -c/--config option and its value, in any of its forms."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--config"):
            i += 2
            continue
        if not (arg.startswith("--config=") or (arg.startswith("-c") and len(arg) > 2)):
            yield arg
        i += 1


def _command_word(argv: Sequence[str]) -> str | None:
    """The first word of argv that is no option nor -c's value: the command's name,
    also after an option the top-level parser does not know."""
    return next((a for a in _without_config(argv) if not a.startswith("-")), None)


def _hot_module(argv: Sequence[str]) -> str | None:
    """The module of a hot command named in argv (after the global options), if any."""
    first = next(_without_config(argv), None)
    return None if first is None or first.startswith("-") else HOT_COMMANDS.get(first)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    hot = _hot_module(argv)
    parser = build_parser((hot,) if hot else COMMANDS)
    command = _command_word(argv)
    if command in SYSEXITS_COMMANDS:
        # An unknown option or a stray word is reported by the top-level parser.
        parser.sysexits_name = command
    args = parser.parse_args(argv)
    # Before any module imports prometheus_client: `serve` with pre-forked LMTP
    # workers needs its multi-process mode chosen first.
    if getattr(args, "command", None) == "serve":
        from gateway.cli.core import prepare_serve_process

        prepare_serve_process(args)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        from gateway.cli.common import EX_TEMPFAIL, configured_database_url, database_failure

        line = database_failure(configured_database_url(args), exc)
        if line is None:
            raise
        print(f"deskgate {args.command}: {line}", file=sys.stderr)
        return EX_TEMPFAIL
    sys.stdout.flush()
    return int(rc or 0)
