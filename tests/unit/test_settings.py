"""Settings: flags over environment over defaults, validated at construction."""

from pathlib import Path

import pytest

from service.settings import MiB, Settings, SettingsError


def test_defaults_are_loopback_and_triton_ports():
    s = Settings.from_sources([], {})
    assert (s.host, s.grpc_port, s.metrics_port) == ("127.0.0.1", 8001, 8002)
    assert s.max_message_bytes > 4 * MiB  # above grpcio's default
    assert s.grpc_address == "127.0.0.1:8001"


def test_flags_override_environment_which_overrides_defaults():
    env = {"ATTNSERVE_GRPC_PORT": "9001", "ATTNSERVE_PROVIDER": "cpu", "ATTNSERVE_MODEL_REPOSITORY": "/env"}
    s = Settings.from_sources(["--grpc-port", "9100", "--model-repository", "/flag"], env)
    assert s.grpc_port == 9100
    assert s.provider == "cpu"
    assert s.model_repository == Path("/flag")


def test_repeatable_and_list_settings():
    assert Settings.from_sources(["--load-model", "a", "--load-model", "b"], {}).load_models == ("a", "b")
    assert Settings.from_sources([], {"ATTNSERVE_LOAD_MODELS": "a, b"}).load_models == ("a", "b")
    assert Settings.from_sources([], {"ATTNSERVE_ALLOW_METRICS": "false"}).allow_metrics is False


@pytest.mark.parametrize(
    "argv, env, fragment",
    [
        (["--grpc-port", "70000"], {}, "grpc_port"),
        (["--metrics-port", "-1"], {}, "metrics_port"),
        ([], {"ATTNSERVE_GRPC_PORT": "eighty"}, "ATTNSERVE_GRPC_PORT"),
        (["--exit-timeout-secs", "0"], {}, "exit_timeout_s"),
        (["--max-message-bytes", "1024"], {}, "max_message_bytes"),
        (["--host", "not a host"], {}, "host"),
        ([], {"ATTNSERVE_PROVIDER": "tpu"}, "provider"),
        ([], {"ATTNSERVE_ALLOW_METRICS": "maybe"}, "ATTNSERVE_ALLOW_METRICS"),
        (["--intra-op-threads", "-2"], {}, "intra_op_threads"),
        (["--drain-quiet-secs", "-1"], {}, "drain_quiet_s"),
        ([], {"ATTNSERVE_DRAIN_QUIET_S": "soon"}, "ATTNSERVE_DRAIN_QUIET_S"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(argv, env, fragment):
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_sources(argv, env)


def test_unknown_flag_exits_like_argparse():
    with pytest.raises(SystemExit) as exc:
        Settings.from_sources(["--no-such-flag"], {})
    assert exc.value.code == 2


def test_ipv6_host_is_bracketed_in_the_address():
    assert Settings(host="::1", grpc_port=5).grpc_address == "[::1]:5"


def test_model_control_mode_and_poll_interval():
    default = Settings.from_sources([], {})
    assert (default.model_control_mode, default.repository_poll_s) == ("explicit", 15.0)  # Triton's 15 s
    s = Settings.from_sources(["--model-control-mode", "POLL", "--repository-poll-secs", "0.5"], {})
    assert (s.model_control_mode, s.repository_poll_s) == ("poll", 0.5)
    assert Settings.from_sources([], {"ATTNSERVE_MODEL_CONTROL_MODE": "none"}).model_control_mode == "none"
    assert Settings.from_sources(["--load-model", "*"], {}).load_models == ("*",)


@pytest.mark.parametrize(
    "argv, env, fragment",
    [
        ([], {"ATTNSERVE_MODEL_CONTROL_MODE": "sometimes"}, "model_control_mode"),
        (["--repository-poll-secs", "0"], {}, "repository_poll_s"),
        (["--model-control-mode", "none", "--load-model", "a"], {}, "explicit"),
        (["--model-control-mode", "poll", "--load-model", "a"], {}, "explicit"),
        (["--load-model", "*", "--load-model", "a"], {}, r"'\*'"),
    ],
)
def test_bad_model_control_settings_are_refused(argv, env, fragment):
    with pytest.raises(SettingsError, match=fragment):
        Settings.from_sources(argv, env)
