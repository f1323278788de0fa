"""Kubernetes and KServe manifests: the Kubernetes schemas (kubernetes-validate), namespace,
the Deployment's GPU, probes, drain and security context, Services, ServiceMonitor, HPA on a
prometheus-adapter metric, PDB, the PrometheusRule, and the InferenceService."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.deploy.helpers import (
    ADAPTER_VALUES,
    EXIT_TIMEOUT_S,
    RULES,
    container_of,
    contract_series_names,
    env_of,
    one,
    selects,
)

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


def test_deployment_requests_one_gpu_and_serves_on_all_interfaces(k8s_objects):
    container = container_of(one(k8s_objects, "Deployment", "attnserve"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] in ("1", 1)
    env = env_of(container)
    assert env["ATTNSERVE_HOST"] == "0.0.0.0"
    assert env["ATTNSERVE_PROVIDER"] == "cuda"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(env["ATTNSERVE_HTTP_PORT"]), "grpc": int(env["ATTNSERVE_GRPC_PORT"]),
                     "metrics": int(env["ATTNSERVE_METRICS_PORT"])}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}


def test_deployment_probes_use_the_v2_health_routes_on_the_http_port(k8s_objects):
    container = container_of(one(k8s_objects, "Deployment", "attnserve"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http", probe
    # the routes the server answers without a token (service/transport/http/inference.py)
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model loading needs time"


def test_deployment_grace_period_covers_the_drain(k8s_objects):
    """Endpoints drop a terminating pod a few seconds after SIGTERM: the pod serves on for that
    long (the server's quiet period, or a preStop sleep before the signal), then drains within
    the exit timeout, all inside terminationGracePeriodSeconds."""
    deployment = one(k8s_objects, "Deployment", "attnserve")
    container = container_of(deployment)
    env = env_of(container)
    exit_timeout = int(env["ATTNSERVE_EXIT_TIMEOUT_S"])
    assert exit_timeout == EXIT_TIMEOUT_S
    quiet = float(env.get("ATTNSERVE_DRAIN_QUIET_S", 0))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert quiet + pre_stop >= 5, "endpoint removal is asynchronous to SIGTERM: serve on for a few seconds"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + quiet + exit_timeout + 5


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
    assert ports["http"]["port"] == 8000 and ports["http"]["appProtocol"] == "http"
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
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": int(env["ATTNSERVE_HTTP_PORT"])}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    annotations = isvc["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == env["ATTNSERVE_METRICS_PORT"]
    grace = predictor["terminationGracePeriodSeconds"]
    quiet = float(env.get("ATTNSERVE_DRAIN_QUIET_S", 0))
    assert quiet >= 5, "endpoint removal is asynchronous to SIGTERM: serve on for a few seconds"
    assert grace >= quiet + int(env["ATTNSERVE_EXIT_TIMEOUT_S"]) + 10


def test_inferenceservice_pod_spec_matches_the_kubernetes_schema(inferenceservice, kubernetes_validate):
    # The predictor is a PodSpec plus KServe's component fields; check the PodSpec part.
    kserve_fields = {"minReplicas", "maxReplicas", "timeout", "scaleTarget", "scaleMetric",
                     "containerConcurrency", "canaryTrafficPercent", "logger", "batcher",
                     "labels", "annotations", "deploymentStrategy"}
    pod_spec = {k: v for k, v in inferenceservice["spec"]["predictor"].items() if k not in kserve_fields}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
