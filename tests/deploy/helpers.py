"""Shared readers for the deployment tests: the metrics contract, PromQL, Dockerfiles, manifests.

Nothing here runs a tool; the tests decide what to run and when to skip.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
RULES = DEPLOY / "prometheus" / "rules" / "attnserve.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "attnserve.rules.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "attnserve.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "attnserve.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
K8S = DEPLOY / "k8s"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
INFERENCESERVICE = DEPLOY / "kserve" / "inferenceservice.yaml"

# Values the synthetic series use for each label the contract names.
LABEL_VALUES = {
    "model": ["sagan_generator", "se_cnn_classifier", "transformer_encoder", "cbam_classifier", "stn_classifier",
              "sasa_classifier", "langid_dot", "langid_additive", "langid_mha", "langid_pair"],
    "version": ["1"],
    "surface": ["v2", "api"],
    "protocol": ["grpc", "http"],
    "code": ["OK", "UNAVAILABLE", "INVALID_ARGUMENT"],
    "reason": ["queue_full", "deadline", "cancelled", "invalid_input", "shutting_down"],
    "gpu": ["0"],
}
# Labels Prometheus (or the operator) adds to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}

RUNTIME_STAGES = ("runtime-cpu", "runtime-gpu")
EXIT_TIMEOUT_S = 30  # ATTNSERVE_EXIT_TIMEOUT_S in every deployment file


def tool(name: str) -> str | None:
    """A command on PATH, or installed next to this interpreter (a venv's bin/)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else None


# --------------------------------------------------------------------------- metrics contract


@dataclass(frozen=True)
class Metric:
    name: str
    type: str  # counter | gauge | histogram
    labels: tuple[str, ...]

    def series_names(self) -> set[str]:
        if self.type == "histogram":
            return {f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count"}
        return {self.name}


def contract_metrics() -> dict[str, Metric]:
    """The Metrics table of docs/architecture.md, as name -> Metric."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    metrics: dict[str, Metric] = {}
    for line in section.splitlines():
        if not line.startswith("| `attnserve_"):
            continue
        name_cell, type_cell, labels_cell = (c.strip() for c in line.strip().strip("|").split("|"))
        kind = type_cell.split()[0].strip(",")
        assert kind in {"counter", "gauge", "histogram"}, f"unknown metric type in {line!r}"
        extra = [
            token
            for token in re.findall(r"`([a-z_]+)`", labels_cell)
            if not token.startswith("attnserve_")
        ]
        for token in extra:
            assert token in LABEL_VALUES, (
                f"architecture.md names label {token!r}; add its values to LABEL_VALUES"
            )
        base = [] if "no model label" in labels_cell else ["model", "version"]
        for name in re.findall(r"`(attnserve_[a-z_]+)`", name_cell):
            metrics[name] = Metric(name, kind, tuple(base + extra))
    assert metrics, "no metrics found in docs/architecture.md"
    return metrics


def contract_series_names() -> set[str]:
    names: set[str] = set()
    for metric in contract_metrics().values():
        names |= metric.series_names()
    return names


def contract_label_names() -> set[str]:
    labels = {"le"} | TARGET_LABELS
    for metric in contract_metrics().values():
        labels |= set(metric.labels)
    return labels


# Standard series that are not attnserve's own.
STANDARD_SERIES = {
    "up",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
}

# --------------------------------------------------------------------------- PromQL

_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2", "start", "end",
}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana variables with values Prometheus accepts."""
    durations = {"__rate_interval", "__interval", "__range"}

    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return "1m" if name in durations else ".*"

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


def adapter_to_promql(query: str, series: str) -> str:
    """Fill a prometheus-adapter metricsQuery template the way the adapter does."""
    return (
        query.replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", 'namespace="attnserve",pod=~"attnserve-.*"')
        .replace("<<.GroupBy>>", "pod")
    )


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def promql_metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (not functions, labels or keywords)."""
    s = _strip_strings(expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s
    )
    s = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?[smhdwy]?\b", " ", s)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = match.group(0)
        rest = s[match.end():].lstrip()
        if rest.startswith("(") or token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names


def promql_label_names(expr: str) -> set[str]:
    """Label names used in matchers and in by/without/on/ignoring/group_* clauses."""
    s = _strip_strings(expr)
    labels: set[str] = set()
    for inner in re.findall(r"\{([^}]*)\}", s):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", inner))
    for inner in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s
    ):
        labels |= {part.strip() for part in inner.split(",") if part.strip()}
    return labels


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend or ""))


# --------------------------------------------------------------------------- Grafana


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_targets(dashboard: dict) -> list[tuple[dict, dict]]:
    return [(p, t) for p in dashboard_panels(dashboard) for t in p.get("targets", [])]


def provisioned_datasource_uid() -> str:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus) == 1, "exactly one Prometheus datasource is provisioned"
    return prometheus[0]["uid"]


# --------------------------------------------------------------------------- rules


def load_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Logical instructions (continuations joined, comments dropped) as (KEYWORD, args)."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        logical.append(buf.strip())
        buf = ""
    if buf.strip():
        logical.append(buf.strip())
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def dockerfile_stages(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name) of a multi-stage Dockerfile."""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, args in dockerfile_instructions(text):
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            base = words[0]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            for key, value in global_args.items():
                base = base.replace("${%s}" % key, value).replace("$" + key, value)
            current = Stage(name=name, base=base)
            stages[name] = current
        elif current is None:
            if keyword == "ARG" and "=" in args:
                key, _, value = args.partition("=")
                global_args[key.strip()] = value.strip()
        else:
            current.instructions.append((keyword, args))
    return global_args, stages


def copy_sources(args: str) -> tuple[dict[str, str], list[str]]:
    """(flags, sources) of a COPY/ADD instruction, shell or JSON form."""
    flags: dict[str, str] = {}
    words = args.split()
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    rest = " ".join(words)
    parts = json.loads(rest) if rest.startswith("[") else rest.split()
    return flags, parts[:-1]


def dockerfile_env(stage: Stage) -> dict[str, str]:
    env = {}
    for args in stage.all("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def dockerignored(relpath: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps relpath (or a folder above it) out of the build context."""
    parts = Path(relpath).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        variants = {pat, pat.replace("**/", "")}
        if any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants):
            excluded = not negate
    return excluded


# --------------------------------------------------------------------------- compose, Kubernetes


def duration_s(text: str) -> float:
    """'45s', '1m30s', '2m0s', '500ms' -> seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def k8s_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container_of(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(container: dict) -> dict:
    return {e["name"]: e["value"] for e in container["env"]}
