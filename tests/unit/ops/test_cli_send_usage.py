"""`deskgate send` is run by applications as they run sendmail(1), which exits with
sysexits.h: every usage error is 64 (EX_USAGE) with one line naming the problem, as
its bad addresses are, not argparse's 2 with a usage block."""

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


class TestSendUsageErrors:
    @pytest.mark.parametrize(("argv", "named"), [
        (("send", "--bogus", "-r", "jane@customer.test"), "--bogus"),
        (("send", "-t", "-i"), "-t"),
        (("send", "jane@customer.test"), "jane@customer.test"),
        (("send", "-r"), "-r/--recipient"),
        (("send", "-r", "jane@customer.test", "-f"), "-f/--from"),
        (("send", "--queue"), "--queue"),
        (("send", "-r", "jane@customer.test", "-c"), "-c"),
        (("--bogus", "send", "-r", "jane@customer.test"), "--bogus"),
        (("-c", "/nonexistent", "send", "--jso", "-x"), "-x"),
    ])
    def test_exit_64_with_one_line(self, capsys: pytest.CaptureFixture[str],
                                   argv: tuple[str, ...], named: str) -> None:
        """An unknown option, a stray word or an option without its value is exit 64
        and one stderr line `send: ...` naming it; nothing is read or queued."""
        code, out, err = usage_error(capsys, *argv)
        assert (code, out) == (64, ""), err
        assert err.startswith("send: ") and err.endswith("\n"), err
        assert err.count("\n") == 1, err
        assert named in err, err

    def test_help_is_not_an_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`send -h` still prints the usage and exits 0."""
        code, out, _ = usage_error(capsys, "send", "-h")
        assert code == 0
        assert out.startswith("usage: deskgate send"), out

    def test_outqueue_keeps_argparse(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The commands next to send that people run keep argparse's exit 2 and usage."""
        code, _, err = usage_error(capsys, "outqueue", "show", "--bogus")
        assert code == 2, err
        assert "usage: deskgate outqueue show" in err, err
