"""passwd — hash a password for [[submission.user]] or [[dashboard.user]]."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from gateway.passwords import hash_password


def register(sub: Any) -> None:
    p = sub.add_parser("passwd", help="hash a password (read from stdin, or prompted on a tty)")
    p.set_defaults(func=cmd_passwd)


def cmd_passwd(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != pw:
            print("passwd: the passwords differ", file=sys.stderr)
            return 1
    else:
        pw = sys.stdin.readline().rstrip("\r\n")
    if not pw:
        print("passwd: empty password", file=sys.stderr)
        return 1
    print(hash_password(pw))
    return 0
