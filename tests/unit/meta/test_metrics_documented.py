"""docs/operations.md's metrics table is the list of what /metrics exports: every
metric of the registry is there with its labels, every metric it names exists, and
only gateway/metrics.py defines metrics."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from gateway import metrics

REPO = Path(__file__).resolve().parents[3]
OPERATIONS = REPO / "docs" / "operations.md"
METRIC_CLASSES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}


def _top_level(cell: str) -> str:
    """`cell` without what stands in (possibly nested) parentheses."""
    out, depth = [], 0
    for ch in cell:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def documented(text: str) -> dict[str, tuple[str, ...] | None]:
    """Name (or `*` pattern) → label names of each row of the table under
    `## Metrics`; None for a pattern row, whose labels are not compared."""
    section = text.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, ...] | None] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 3:
            continue
        labels = tuple(re.findall(r"`([a-z_]+)`", _top_level(cells[1])))
        for name in re.findall(r"`([a-z_*]+)`", cells[0]):
            rows[name] = None if "*" in name else labels
    return rows


def exported() -> dict[str, tuple[str, ...]]:
    """Name as /metrics shows it (a counter with `_total`) → label names, of every
    metric in the registry."""
    out: dict[str, tuple[str, ...]] = {}
    collectors = set(metrics.REGISTRY._collector_to_names)
    for c in collectors:
        if isinstance(c, MetricWrapperBase):
            name = c._name + ("_total" if c._type == "counter" else "")
            out[name] = tuple(c._labelnames)
        else:       # prometheus_client's process and platform collectors
            for fam in c.collect():
                name = fam.name + ("_total" if fam.type == "counter" else "")
                out[name] = tuple(dict.fromkeys(k for s in fam.samples for k in s.labels))
    return out


def exposition_families() -> set[str]:
    """Every metric family name in a scrape of the registry (`# TYPE` lines)."""
    body, _ = metrics.render()
    return set(re.findall(r"^# TYPE (\S+) ", body.decode(), re.M))


class TestParser:
    def test_reads_labels_outside_parentheses_only(self):
        """Label names are the top-level backticked words of the labels cell; values
        and notes in (nested) parentheses are not labels."""
        text = ("\n## Metrics\n\n| metric | labels | meaning |\n|---|---|---|\n"
                "| `a_total` | `door` (lmtp, `x` (y `z`)), `result` (new) | m |\n"
                "| `b` | | m |\n| `process_*`, `python_info` | | m |\n\n## Next\n"
                "| `c` | `q` | m |\n")
        assert documented(text) == {"a_total": ("door", "result"), "b": (),
                                    "process_*": None, "python_info": ()}


class TestMetricsDocumented:
    def test_every_metric_documented_with_its_labels(self):
        """Each metric of the registry has a row in docs/operations.md naming exactly
        its labels, in order (or is covered by a pattern row)."""
        docs = documented(OPERATIONS.read_text())
        problems = []
        for name, labels in sorted(exported().items()):
            if name not in docs and any(fnmatch.fnmatch(name, p) for p, ls in docs.items()
                                        if ls is None):
                continue
            if name not in docs:
                problems.append(f"{name}: not in docs/operations.md's metrics table")
            elif docs[name] != labels:
                problems.append(f"{name}: docs list labels {docs[name]}, code has {labels}")
        assert not problems, "\n".join(problems)

    def test_every_documented_metric_exists(self):
        """Each name of the table is a metric of the registry or, for a pattern, matches
        a family a scrape shows."""
        docs = documented(OPERATIONS.read_text())
        known = set(exported())
        families = exposition_families()
        stale = [n for n, labels in docs.items()
                 if (labels is not None and n not in known)
                 or (labels is None and not fnmatch.filter(families, n))]
        assert not stale, f"documented but not exported: {stale}"

    def test_every_family_of_a_scrape_is_covered(self):
        """What a scrape shows besides the metric objects (prometheus_client's process
        and platform collectors, the `_created` series of counters and histograms) is
        covered by a row or a pattern of the table."""
        docs = documented(OPERATIONS.read_text())
        names = {n for n, labels in docs.items() if labels is not None}
        patterns = [n for n, labels in docs.items() if labels is None]
        missing = sorted(f for f in exposition_families()
                         if f not in names and not any(fnmatch.fnmatch(f, p) for p in patterns))
        assert not missing, f"exported but not documented: {missing}"


def _defines_metrics(tree: ast.AST) -> list[int]:
    """Lines that create a metric object of prometheus_client (`Counter(...)` of an
    imported class, `prometheus_client.Gauge(...)`); an import used for type hints
    only is no definition."""
    classes: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None \
                and node.module.split(".")[0] == "prometheus_client":
            classes |= {a.asname or a.name for a in node.names if a.name in METRIC_CLASSES}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names
                        if a.name.split(".")[0] == "prometheus_client"}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Name) and f.id in classes) or (
                isinstance(f, ast.Attribute) and f.attr in METRIC_CLASSES
                and ast.unparse(f.value) in modules):
            lines.append(node.lineno)
    return lines


class TestMetricsDefinedInOnePlace:
    def test_detector_sees_a_definition(self):
        """A metric created from an imported class or through the module is found; an
        import for type hints only is not a definition."""
        for src in ('from prometheus_client import Counter\nC = Counter("a", "b")',
                    'from prometheus_client.metrics import Gauge as G\ng = G("a", "b")',
                    'import prometheus_client\nh = prometheus_client.Histogram("a", "b")'):
            assert _defines_metrics(ast.parse(src)), src
        for src in ("from prometheus_client import Counter\nx: Counter | None = None",
                    'from prometheus_client import generate_latest\ngenerate_latest(r)',
                    'from collections import Counter\nCounter("abc")'):
            assert not _defines_metrics(ast.parse(src)), src

    def test_only_gateway_metrics_defines_metrics(self):
        """No other module of gateway/ imports a metric class, so the registry checked
        above holds every metric deskgate exports."""
        offenders = []
        for path in sorted((REPO / "gateway").rglob("*.py")):
            if path == REPO / "gateway" / "metrics.py":
                continue
            lines = _defines_metrics(ast.parse(path.read_text(), str(path)))
            offenders += [f"{path.relative_to(REPO)}:{n}" for n in lines]
        assert not offenders, offenders
