"""Every ATTNSERVE_ variable the deploy files set (Dockerfile, compose, Kubernetes, KServe) is a
setting the server accepts, with the values the images are built around."""

from __future__ import annotations

import dataclasses

from tests.deploy.helpers import EXIT_TIMEOUT_S, RUNTIME_STAGES, container_of, dockerfile_env, env_of, one


def deploy_environments(dockerfile, compose_gpu, compose_cpu, k8s_objects, inferenceservice):
    _, stages = dockerfile
    envs = {f"Dockerfile {name}": dockerfile_env(stages[name]) for name in RUNTIME_STAGES}
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
        assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (8000, 8001, 8002), where
        assert settings.allow_http, where
        assert settings.exit_timeout_s == EXIT_TIMEOUT_S, where
        assert str(settings.model_repository) == "/models", where
        expected = "cpu" if "cpu" in where else "cuda"
        assert settings.provider == expected, where
