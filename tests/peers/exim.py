"""A throwaway Exim from Debian's exim4-daemon-light package, never installed.

The .deb files are fetched by `make exim-debs` into .cache/debs (Debian's exim4
conflicts with the installed Postfix, so it cannot be installed). The binary has
its paths, its user (Debian-exim) and its own path compiled in, so each run
happens in a private mount namespace (`unshare -m`, root only) where
/etc/passwd and /etc/group gain a Debian-exim entry (mapped to `mail`) and
/usr/sbin and the library directory are overlays that add the extracted exim4
and its libidn. Nothing outside the namespace changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

DEBS = Path(__file__).resolve().parents[2] / ".cache" / "debs"
LIBDIR = "/usr/lib/x86_64-linux-gnu"

_RUN = """set -e
W="$1"; shift
mount --bind "$W/passwd" /etc/passwd
mount --bind "$W/group" /etc/group
O="$W/ovl"
mount -t overlay overlay -o lowerdir="$W/root{lib}:{lib},upperdir=$O/lu,workdir=$O/lw" {lib}
mount -t overlay overlay \
  -o lowerdir="$W/root/usr/sbin:/usr/sbin,upperdir=$O/su,workdir=$O/sw" /usr/sbin
exec /usr/sbin/exim4 "$@"
"""


def unavailable() -> str | None:
    """Why this machine cannot run the throwaway Exim, or None."""
    if os.geteuid() != 0:
        return "needs root (a private mount namespace)"
    if not shutil.which("unshare") or not shutil.which("dpkg-deb"):
        return "needs unshare and dpkg-deb"
    if not list(DEBS.glob("exim4-daemon-light_*.deb")):
        return f"no exim4-daemon-light .deb in {DEBS} (run `make exim-debs`)"
    if not Path(LIBDIR).is_dir():
        return f"{LIBDIR} missing (not amd64 Debian)"
    return None


class Exim:
    """Exim with a config whose router sends `domains` to deskgate's LMTP socket."""

    __test__ = False

    def __init__(self, work: Path, socket_path: Path, domains: str = "example.org") -> None:
        self.work = work
        root = work / "root"
        root.mkdir(parents=True, exist_ok=True)
        for deb in [*DEBS.glob("exim4-daemon-light_*.deb"), *DEBS.glob("libidn12_*.deb")]:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
        for d in ("spool", "log", "ovl/lu", "ovl/lw", "ovl/su", "ovl/sw"):
            (work / d).mkdir(parents=True, exist_ok=True)
        shutil.chown(work / "spool", "mail", "mail")
        shutil.chown(work / "log", "mail", "mail")
        mail_uid = int(subprocess.run(["id", "-u", "mail"], capture_output=True, text=True,
                                      check=True).stdout)
        mail_gid = int(subprocess.run(["id", "-g", "mail"], capture_output=True, text=True,
                                      check=True).stdout)
        (work / "passwd").write_text(Path("/etc/passwd").read_text()
                                     + f"Debian-exim:x:{mail_uid}:{mail_gid}::/nonexistent:"
                                     "/usr/sbin/nologin\n")
        (work / "group").write_text(Path("/etc/group").read_text()
                                    + f"Debian-exim:x:{mail_gid}:\n")
        (work / "run.sh").write_text(_RUN.format(lib=LIBDIR))
        self.conf = work / "exim.conf"
        self.conf.write_text(f"""\
exim_user = mail
exim_group = mail
primary_hostname = exim.test
spool_directory = {work}/spool
log_file_path = {work}/log/%slog
keep_environment =
domainlist deskgate_domains = {domains}
acl_smtp_rcpt = acl_check_rcpt

begin acl
acl_check_rcpt:
  accept

begin routers
deskgate:
  driver = accept
  domains = +deskgate_domains
  transport = deskgate_lmtp
  no_more

begin transports
deskgate_lmtp:
  driver = lmtp
  socket = {socket_path}
  batch_max = 50
  user = mail

begin retry
* * F,1h,10m
""")

    def send(self, sender: str, rcpts: list[str], message: bytes
             ) -> subprocess.CompletedProcess[bytes]:
        """Submit on stdin and deliver at once (-odi), like a local MTA client would."""
        return subprocess.run(["unshare", "-m", "sh", str(self.work / "run.sh"), str(self.work),
                               "-C", str(self.conf), "-odi", "-f", sender, *rcpts],
                              input=message, capture_output=True, timeout=120, check=False)

    def mainlog(self) -> str:
        p = self.work / "log" / "mainlog"
        return p.read_text() if p.exists() else ""
