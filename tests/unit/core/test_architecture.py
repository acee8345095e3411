"""Architecture rules: the services depend on gateway.interfaces.Host, not on the
composition root; every module imports alone; the runtime builders, config checks and
outbound stages are explicit tables built in one place and checked at startup."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import runtime
from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.validators import NAMES, Validator, build_validators, check_validators

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "gateway"

# The modules that may import gateway.app: the composition root itself, process
# supervision (which runs Gateways) and the CLI entry points.
MAY_IMPORT_APP = ("gateway/app.py", "gateway/supervise.py", "gateway/supervise_commit.py",
                  "gateway/cli/")
# Process supervision: its modules import each other; others but the CLI import none.
SUPERVISE = ("gateway.supervise", "gateway.supervise_commit", "gateway.supervise_fork")


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions, TYPE_CHECKING too."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def gateway_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


class TestImportRules:
    def test_only_the_composition_root_and_entry_points_import_app(self):
        """No module under gateway/ but app, supervise and the CLI imports gateway.app."""
        offenders = [str(p.relative_to(REPO)) for p in gateway_modules()
                     if "gateway.app" in imported_modules(p)
                     and not str(p.relative_to(REPO)).startswith(MAY_IMPORT_APP)]
        assert offenders == []

    def test_the_rule_sees_imports_inside_functions(self, tmp_path):
        """The scan finds a lazy import and a `from gateway import app` alike."""
        f = tmp_path / "m.py"
        f.write_text("def f():\n    from gateway import app\n    from gateway.app import x\n")
        assert {"gateway.app"} <= imported_modules(f)

    def test_supervise_is_imported_only_by_the_cli(self):
        """Process supervision is an entry point's business, not a service's."""
        offenders = [str(p.relative_to(REPO)) for p in gateway_modules()
                     if imported_modules(p) & set(SUPERVISE)
                     and module_name(p) not in SUPERVISE
                     and not str(p.relative_to(REPO)).startswith("gateway/cli/")]
        assert offenders == []

    def test_no_registration_functions_left(self):
        """No module defines or calls a register_builder/validator/outbound_stage."""
        names = {"register_builder", "register_validator", "register_outbound_stage",
                 "load_plugins"}
        found = [(str(p.relative_to(REPO)), n.id if isinstance(n, ast.Name) else n.name)
                 for p in gateway_modules()
                 for n in ast.walk(ast.parse(p.read_text()))
                 if (isinstance(n, ast.Name) and n.id in names)
                 or (isinstance(n, ast.FunctionDef) and n.name in names)]
        assert found == []

    def test_modules_the_readme_names_exist(self):
        """Every gateway/*.py path the README names (its code layout) is a real module."""
        import re

        named = set(re.findall(r"`(gateway/[\w/]+\.py)`", (REPO / "README.md").read_text()))
        assert {"gateway/interfaces.py", "gateway/validators.py"} <= named
        assert sorted(n for n in named if not (REPO / n).is_file()) == []

    @pytest.mark.slow
    def test_every_module_imports_alone(self):
        """Each gateway module imports in a process that imported no other gateway
        module first (third-party libraries preloaded, one forked child per module)."""
        modules = [module_name(p) for p in gateway_modules() if p.name != "__main__.py"]
        script = (
            "import json, os, sys\n"
            "import sqlalchemy, structlog, aiohttp, aiosmtpd, alembic, jinja2, cryptography\n"
            "failed = {}\n"
            "for name in json.loads(sys.argv[1]):\n"
            "    r, w = os.pipe()\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        os.close(r)\n"
            "        try:\n"
            "            __import__(name)\n"
            "            msg = b''\n"
            "        except BaseException as exc:\n"
            "            msg = repr(exc).encode()[:500] or b'?'\n"
            "        os.write(w, msg)\n"
            "        os._exit(0)\n"
            "    os.close(w)\n"
            "    with os.fdopen(r, 'rb') as fh:\n"
            "        out = fh.read()\n"
            "    os.waitpid(pid, 0)\n"
            "    if out:\n"
            "        failed[name] = out.decode(errors='replace')\n"
            "print(json.dumps(failed))\n"
        )
        proc = subprocess.run([sys.executable, "-c", script, json.dumps(modules)],
                              capture_output=True, text=True, cwd=REPO, timeout=600,
                              check=True)
        assert len(modules) > 100
        assert json.loads(proc.stdout.splitlines()[-1]) == {}


class TestValidatorTable:
    def test_production_table_complete(self):
        """The table holds one check of every kind in NAMES."""
        table = build_validators()
        assert [v.name for v in table] == list(NAMES)

    def test_missing_or_repeated_check_refused(self):
        """A table without the DKIM check, or with a check twice, is refused."""
        table = build_validators()
        with pytest.raises(RuntimeError, match="'dkim' missing"):
            check_validators(tuple(v for v in table if v.name != "dkim"))
        with pytest.raises(RuntimeError, match="'relay' present 2 times"):
            check_validators((*table, Validator("relay", table[0].fn)))


class TestBuilderTable:
    def test_one_builder_per_runtime_field(self):
        """The builders fill exactly the Runtime's fields other than config."""
        table = runtime.build_builders()
        assert sorted(b.field for b in table) == [
            "classifier", "clock", "crypto", "dkim", "filters", "retired"]

    def test_missing_or_unknown_builder_refused(self):
        """A table missing a field's builder, or building a field Runtime lacks, is refused."""
        table = runtime.build_builders()
        with pytest.raises(RuntimeError, match="'crypto' missing"):
            runtime.check_builders(tuple(b for b in table if b.field != "crypto"))
        with pytest.raises(RuntimeError, match="'extras' is no Runtime field"):
            runtime.check_builders((*table, runtime.Builder("extras", dict)))

    def test_built_runtime_is_typed(self, config):
        """build_runtime fills filters, crypto stores and DKIM keys as typed fields."""
        from gateway.crypto.keystore import CryptoStores
        from gateway.inbound.filters import FilterSet

        rt = runtime.build_runtime(config)
        assert isinstance(rt.filters, FilterSet)
        assert isinstance(rt.crypto, CryptoStores)
        assert rt.classifier is None and dict(rt.dkim) == {}
        rt.crypto.close()


# One error of each validator's kind: (file written, TOML, key, words of the reason).
BROKEN = {
    "database": ('[gateway]\ndatabase = "mysql://db/x"\n', "gateway.database",
                 "is not supported"),
    "dashboard": ('[dashboard]\nlisten = "nowhere"\n', "dashboard.listen", "not HOST:PORT"),
    "crypto": ('[crypto]\nsmime_crl_file = "missing-crl.pem"\n', "crypto.smime_crl_file",
               "cannot read"),
    "dkim": ('[[dkim]]\ndomain = "example.org"\nselector = "s1"\nkey_file = "missing.key"\n',
             "dkim[0].key_file", "cannot load"),
    "relay": ('[relay]\nmode = "smtp"\nhost = "relay.test"\nuser = "u"\nsecurity = "none"\n'
              'password = "p"\n', "relay.security", "sends the relay password in clear"),
    "submission-tls": ('[submission]\nlisten = ["127.0.0.1:8587"]\ntls_cert = "no.crt"\n'
                       'tls_key = "no.key"\n', "submission.tls_cert", "cannot read"),
    "accounts": ('[[account]]\nname = "a"\ntype = "imaps"\nhost = "imap.test"\n'
                 'login = "l"\npassword = "p"\ninterval = 0\n', "account[0].interval",
                 "at least 1s"),
    "lmtp": ('[lmtp]\nsocket_group = "no-such-group-here"\n', "lmtp.socket_group",
             "no group 'no-such-group-here'"),
}
BROKEN_POLICY = ('[[filter]]\nname = "bad"\n[[filter.match]]\nheader = "Subject"\n'
                 'value = "(["\n[filter.set]\n"X-Deskgate-Queue" = "Support"\n')


class TestCheckRunsEveryValidator:
    def test_check_reports_an_error_of_each_kind(self, make_confdir):
        """`deskgate check --json` in a fresh process reports one error of each
        validator's kind, each with the file that holds the key, the key and the reason."""
        conf = make_confdir({f"50-{i}-{name}.toml": toml
                             for i, (name, (toml, _, _)) in enumerate(BROKEN.items())},
                            policies={"100-bad.toml": BROKEN_POLICY})
        proc = subprocess.run([sys.executable, "-m", "gateway", "--config", str(conf),
                               "check", "--json"], capture_output=True, text=True,
                              cwd=REPO, timeout=120, check=False)
        assert proc.returncode == 1, proc.stderr
        report = json.loads(proc.stdout)
        assert report["ok"] is False
        errors = report["errors"]
        for i, (name, (_, key, words)) in enumerate(BROKEN.items()):
            hits = [e for e in errors if e["key"] == key and words in e["reason"]]
            assert hits, f"{name}: no error at {key} in {errors}"
            assert hits[0]["file"] == str(conf / f"50-{i}-{name}.toml"), (name, hits)
        policy = [e for e in errors if e["key"].startswith("filter[bad]")]
        assert policy and policy[0]["file"].endswith("100-bad.toml")
        assert set(BROKEN) | {"filters"} == set(NAMES)

    def test_load_config_alone_runs_every_check(self, make_confdir):
        """load_config reports a validator's error without anything imported first."""
        conf = make_confdir({"50-relay.toml": BROKEN["relay"][0]})
        with pytest.raises(ConfigErrors) as exc:
            load_config(conf)
        assert [e.key for e in exc.value.errors] == ["relay.security"]

    def test_section_checks_can_be_left_out(self, make_confdir):
        """section_checks=False (read-only commands, serve's early look at [lmtp]) skips
        the table's checks and imports none of their modules (prometheus_client must
        not be imported before serve picks its multi-process mode)."""
        conf = make_confdir({"50-relay.toml": BROKEN["relay"][0]})
        assert load_config(conf, section_checks=False).relay.user == "u"
        code = ("import sys\nfrom gateway.config import load_config\n"
                f"load_config({str(conf)!r}, section_checks=False)\n"
                "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', "
                "'gateway.validators', 'gateway.outbound', 'gateway.crypto'))))\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=REPO, timeout=120, check=True)
        assert proc.stdout.strip() == "[]"
