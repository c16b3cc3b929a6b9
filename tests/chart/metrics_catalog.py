"""Which metrics the code exports, read from the code itself; which metrics dashboards and alerts query.

The catalog is built from the prometheus-client definitions in operator/ and workers/ (every `Counter(...)`,
`Gauge(...)`, `Histogram(...)`, `Summary(...)`, `Info(...)`, `Enum(...)` and `*MetricFamily(...)` call, found
by parsing the source, so metrics created inside classes with their own registry count too), plus the default
registry's standard collectors (process_*, python_*), which the operator serves with its own metrics. There is
no hand-maintained list: a metric renamed in the code makes the dashboards and alerts that use the old name fail.

Queries are parsed with a real PromQL parser (promql-parser); every vector selector's metric name must be a
series the code exports, and every label it matches on, groups by or joins on must be one the metric (or the
scrape target) carries.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser

from tests.chart.helm import ROOT

SOURCES = (ROOT / "operator", ROOT / "workers")
CONSTRUCTORS = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "Info": "info",
    "Enum": "stateset",
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary",
    "InfoMetricFamily": "info",
    "StateSetMetricFamily": "stateset",
    "GaugeHistogramMetricFamily": "gaugehistogram",
    "UnknownMetricFamily": "unknown",
}
# Stands for "any label" where a metric's labels are unknown (unknown metric, or labels not literal).
ANY = "*"
# Labels Prometheus adds to every series from the scrape target (ServiceMonitor/PodMonitor defaults).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "service", "endpoint"})


@dataclass
class Metric:
    name: str  # the family name (a counter without its _total)
    kind: str
    labels: frozenset[str] | None  # None: not statically known (labels given by a variable)
    where: str

    def series(self) -> dict[str, frozenset[str]]:
        """Exported series name -> the extra labels that series has (le, quantile, the enum's own label)."""
        none: frozenset[str] = frozenset()
        if self.kind == "counter":
            return {f"{self.name}_total": none, f"{self.name}_created": none}
        if self.kind in {"histogram", "gaugehistogram"}:
            return {
                f"{self.name}_bucket": frozenset({"le"}),
                f"{self.name}_sum": none,
                f"{self.name}_count": none,
                f"{self.name}_created": none,
                f"{self.name}_gsum": none,
                f"{self.name}_gcount": none,
            }
        if self.kind == "summary":
            return {
                self.name: frozenset({"quantile"}),
                f"{self.name}_sum": none,
                f"{self.name}_count": none,
                f"{self.name}_created": none,
            }
        if self.kind == "info":
            return {f"{self.name}_info": none}
        if self.kind == "stateset":
            return {self.name: frozenset({self.name})}
        return {self.name: none}


@dataclass
class Catalog:
    metrics: dict[str, Metric] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def series(self) -> dict[str, tuple[Metric, frozenset[str]]]:
        out: dict[str, tuple[Metric, frozenset[str]]] = {}
        for metric in self.metrics.values():
            for name, extra in metric.series().items():
                out[name] = (metric, extra)
        return out


def _literal_strings(node: ast.expr | None, constants: dict[str, Any]) -> list[str] | None:
    if node is None:
        return []
    if isinstance(node, ast.Name) and node.id in constants:
        value = constants[node.id]
        return list(value) if isinstance(value, list | tuple) else None
    if isinstance(node, ast.List | ast.Tuple):
        out: list[str] = []
        for elt in node.elts:
            if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                out.append(elt.value)
            elif isinstance(elt, ast.Starred):
                inner = _literal_strings(elt.value, constants)
                if inner is None:
                    return None
                out.extend(inner)
            else:
                return None
        return out
    return None


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    """Module-level NAME = <literal list/tuple/str>, so `labels=_TRAINING_LABELS` resolves."""
    out: dict[str, Any] = {}
    for stmt in tree.body:
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
        if isinstance(stmt, ast.AnnAssign):
            target = stmt.target
        value = stmt.value if isinstance(stmt, ast.Assign | ast.AnnAssign) else None
        if isinstance(target, ast.Name) and value is not None:
            try:
                out[target.id] = ast.literal_eval(value)
            except ValueError:
                strings = _literal_strings(value, out)
                if strings is not None:
                    out[target.id] = strings
    return out


def _prometheus_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> constructor name, for names imported from prometheus_client (aliases included)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prometheus_client"):
            for alias in node.names:
                if alias.name in CONSTRUCTORS:
                    names[alias.asname or alias.name] = alias.name
    return names


def _calls(tree: ast.Module, imported: dict[str, str]) -> Iterator[tuple[str, ast.Call]]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in imported:
            yield imported[func.id], node
        elif (
            isinstance(func, ast.Attribute)
            and func.attr in CONSTRUCTORS
            and isinstance(func.value, ast.Name)
            and func.value.id in {"prometheus_client", "metrics_core", "core"}
        ):
            yield func.attr, node


def scan_sources(paths: tuple[Path, ...] = SOURCES) -> Catalog:
    catalog = Catalog()
    for root in paths:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            imported = _prometheus_names(tree)
            constants = _module_constants(tree)
            for ctor, call in _calls(tree, imported):
                where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{call.lineno}"
                kwargs = {k.arg: k.value for k in call.keywords if k.arg}
                name_node = call.args[0] if call.args else kwargs.get("name")
                if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
                    catalog.problems.append(f"{where}: {ctor} name is not a string literal")
                    continue
                prefix = [
                    kwargs[k].value
                    for k in ("namespace", "subsystem")
                    if isinstance(kwargs.get(k), ast.Constant) and kwargs[k].value
                ]
                name = "_".join([*prefix, name_node.value])
                kind = CONSTRUCTORS[ctor]
                if kind == "counter" and name.endswith("_total"):
                    name = name[: -len("_total")]
                if kind == "info" and name.endswith("_info"):
                    name = name[: -len("_info")]
                if ctor.endswith("MetricFamily"):
                    labels_node = kwargs.get("labels")
                else:
                    labels_node = call.args[2] if len(call.args) > 2 else kwargs.get("labelnames")
                labels = _literal_strings(labels_node, constants)
                catalog.metrics[name] = Metric(name, kind, frozenset(labels) if labels is not None else None, where)
    return catalog


def default_registry_metrics() -> dict[str, Metric]:
    """What prometheus-client's default registry serves besides our own definitions (process_*, python_*):
    the operator serves that registry (start_http_server)."""
    from prometheus_client import REGISTRY

    out: dict[str, Metric] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith(("process_", "python_")):
            continue  # anything else in it was registered by code or tests this scan already covers
        labels: set[str] = set()
        for sample in family.samples:
            labels.update(sample.labels)
        labels -= {"le", "quantile"}
        out[family.name] = Metric(family.name, family.type, frozenset(labels), "prometheus_client default registry")
    return out


def code_catalog() -> Catalog:
    catalog = scan_sources()
    for name, metric in default_registry_metrics().items():
        catalog.metrics.setdefault(name, metric)
    # Prometheus' own per-target series.
    catalog.metrics["up"] = Metric("up", "gauge", frozenset(), "Prometheus (one per scrape target)")
    return catalog


# ------------------------------------------------------------------------------------------------ queries

GRAFANA_INTERVALS = re.compile(r"\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?")
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(:\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def grafana_to_promql(expr: str) -> str:
    """Substitute Grafana's built-in intervals and template variables so the query parses as PromQL
    (variables may only stand inside label values, where any text is valid)."""
    return GRAFANA_VARIABLE.sub("x", GRAFANA_INTERVALS.sub("5m", expr))


LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")


@dataclass(frozen=True)
class Query:
    source: str
    expr: str


def dashboard_queries(path: Path) -> list[Query]:
    board = json.loads(path.read_text())
    out: list[Query] = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for panel in panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append(Query(f"{path.name} panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var.get("query"), dict) else var.get("query", "")
        out.append(Query(f"{path.name} variable {var['name']}", query))
    return out


@dataclass
class Checker:
    catalog: Catalog
    target_labels: frozenset[str] = TARGET_LABELS

    def check(self, query: Query) -> list[str]:
        text = query.expr
        m = LABEL_VALUES.match(text)
        label_values_label = None
        if m:
            if not m.group("selector"):
                return [f"{query.source}: label_values() without a metric scans every series"]
            text, label_values_label = m.group("selector"), m.group("label")
        try:
            ast_ = promql_parser.parse(grafana_to_promql(text))
        except Exception as err:
            return [f"{query.source}: does not parse as PromQL: {err}: {text}"]
        problems: list[str] = []
        labels = self._walk(ast_, query.source, problems)
        if label_values_label and label_values_label not in labels and ANY not in labels:
            problems.append(f"{query.source}: label_values() asks for {label_values_label!r}, not a label of it")
        return problems

    def labels_of(self, name: str) -> frozenset[str] | None:
        found = self.catalog.series().get(name)
        if found is None:
            return None
        metric, extra = found
        if metric.labels is None:
            return None
        return metric.labels | extra | self.target_labels

    def _walk(self, node: Any, source: str, problems: list[str]) -> frozenset[str]:
        """Check `node`; return the labels its result can carry (for by/on/ignoring checks)."""
        kind = type(node).__name__
        if kind == "VectorSelector":
            return self._selector(node, source, problems)
        if kind == "MatrixSelector":
            return self._walk(node.vector_selector, source, problems)
        if kind in {"ParenExpr", "UnaryExpr", "SubqueryExpr"}:
            return self._walk(node.expr, source, problems)
        if kind == "Call":
            result: frozenset[str] = frozenset()
            for arg in node.args:
                result |= self._walk(arg, source, problems)
            if node.func.name == "label_replace" and len(node.args) >= 2:
                result |= {str(node.args[1]).strip('"')}
            if node.func.name in {"absent", "absent_over_time", "vector", "time", "scalar"}:
                return result
            return result
        if kind == "AggregateExpr":
            inner = self._walk(node.expr, source, problems)
            if node.param is not None:
                self._walk(node.param, source, problems)
            modifier = node.modifier
            if modifier is not None:
                wanted = set(modifier.labels)
                missing = wanted - inner
                if missing and ANY not in inner:
                    problems.append(
                        f"{source}: {node.op} by/without {sorted(missing)}: no such label on {sorted(inner)}"
                    )
                if "By" in str(modifier.type):
                    return frozenset(wanted)
            return inner
        if kind == "BinaryExpr":
            left = self._walk(node.lhs, source, problems)
            right = self._walk(node.rhs, source, problems)
            modifier = node.modifier
            if modifier is not None and modifier.matching is not None:
                wanted = set(modifier.matching.labels)
                for side, got in (("left", left), ("right", right)):
                    if got and ANY not in got and wanted - got:
                        problems.append(f"{source}: on/ignoring {sorted(wanted - got)} not on the {side} side")
            return left | right
        return frozenset()  # number and string literals

    def _selector(self, node: Any, source: str, problems: list[str]) -> frozenset[str]:
        name = node.name
        matchers = list(node.matchers.matchers) if node.matchers is not None else []
        if not name:
            names = [m.value for m in matchers if m.name == "__name__"]
            name = names[0] if names else ""
        if not name:
            problems.append(f"{source}: a selector without a metric name")
            return frozenset()
        labels = self.labels_of(name)
        if name not in self.catalog.series():
            problems.append(f"{source}: metric {name!r} is not exported by the code")
            return frozenset({ANY})
        if labels is None:
            return frozenset({ANY})  # labels not statically known: accept any
        for matcher in matchers:
            if matcher.name != "__name__" and matcher.name not in labels:
                problems.append(f"{source}: {name} has no label {matcher.name!r} (has {sorted(labels)})")
        return labels
