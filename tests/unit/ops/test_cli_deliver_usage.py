"""`deskgate deliver` is run by an MTA's pipe transport, which reads its exit status
as sysexits.h: every usage error is 64 (EX_USAGE) with one line naming the problem,
not argparse's 2 with a usage block (Postfix bounces a status outside sysexits.h as
"Command died with status 2"). The other commands keep argparse's 2."""

from __future__ import annotations

import pytest

from gateway.cli import main


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        main(list(argv))
    captured = capsys.readouterr()
    code = ei.value.code
    assert isinstance(code, int)
    return code, captured.out, captured.err


class TestDeliverUsageErrors:
    @pytest.mark.parametrize(("argv", "named"), [
        (("deliver", "--bogus", "-r", "support@example.org"), "--bogus"),
        (("deliver", "-r", "support@example.org", "extra-word"), "extra-word"),
        (("deliver", "-r"), "-r/--recipient"),
        (("deliver", "-r", "support@example.org", "-f"), "-f/--from"),
        (("deliver", "--account"), "--account"),
        (("deliver", "-r", "support@example.org", "-c"), "-c"),
        (("deliver", "--trusted=yes"), "--trusted"),
        (("--bogus", "deliver", "-r", "support@example.org"), "--bogus"),
        (("-c", "/nonexistent", "deliver", "--via-sock", "-x"), "-x"),
    ])
    def test_exit_64_with_one_line(self, capsys: pytest.CaptureFixture[str],
                                   argv: tuple[str, ...], named: str) -> None:
        """An unknown option, a stray word or an option without its value is exit 64
        and one stderr line `deliver: ...` naming it."""
        code, out, err = usage_error(capsys, *argv)
        assert (code, out) == (64, ""), err
        assert err.startswith("deliver: ") and err.endswith("\n"), err
        assert err.count("\n") == 1, err
        assert named in err, err

    def test_help_is_not_an_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`deliver -h` still prints the usage and exits 0."""
        code, out, _ = usage_error(capsys, "deliver", "-h")
        assert code == 0
        assert out.startswith("usage: deskgate deliver"), out


class TestOtherCommandsKeepArgparse:
    @pytest.mark.parametrize("argv", [
        ("tickets", "show"),
        ("reload", "--bogus"),
        ("check", "--wait", "3"),
        ("--bogus", "check"),
    ])
    def test_exit_2_with_the_usage(self, capsys: pytest.CaptureFixture[str],
                                   argv: tuple[str, ...]) -> None:
        """A usage error of a command people and scripts run is argparse's exit 2 with
        the usage line, as docs/cli.md says."""
        code, _, err = usage_error(capsys, *argv)
        assert code == 2, err
        assert "usage: deskgate" in err and "error: " in err, err
