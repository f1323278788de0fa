"""The one settings class: command-line flags over ``ATTNSERVE_*`` environment over defaults.

Flag names follow Triton's (``--model-repository``, ``--grpc-port``, ``--metrics-port``,
``--exit-timeout-secs``) so operators feel at home. Every value is validated when the settings
are built, so a bad deployment fails at start with one clear message instead of at the first
request.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

ENV_PREFIX = "ATTNSERVE_"
PROVIDERS = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
GRPC_EXPERIMENTS = re.compile(r"-?[a-z][a-z0-9_]*(,-?[a-z][a-z0-9_]*)*")
# Triton's model control modes (issue 18): see service/model_control.py.
MODEL_CONTROL_MODES = ("none", "poll", "explicit")
MiB = 1024 * 1024


class SettingsError(ValueError):
    """A setting has a value the server cannot start with."""


@dataclass(frozen=True)
class Settings:
    model_repository: Path = Path("model_repository")
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    # KServe v2 over HTTP/REST (issue 16) on the same host and event loop; Triton's port and flag.
    http_port: int = 8000
    allow_http: bool = True
    metrics_host: str = ""  # empty: same as host
    metrics_port: int = 8002
    allow_metrics: bool = True
    # grpcio refuses messages above 4 MiB by default; a batch of 128x128 RGB images is larger.
    max_message_bytes: int = 64 * MiB
    exit_timeout_s: float = 30.0
    # On SIGTERM the server reports not ready at once but serves on this long before refusing
    # (issue 18): endpoint removal in Kubernetes and load balancers is asynchronous to SIGTERM.
    drain_quiet_s: float = 0.0
    # One execution (a batch inside ONNX Runtime) running longer than this is abandoned and its
    # instance replaced (service/runtime/instances.py); a model's config.pbtxt may set its own
    # (parameter attnserve.execution_timeout_s). 0 turns it off.
    execution_timeout_s: float = 60.0
    provider: str = "auto"
    device_id: int = 0
    # 0: share the machine's cores among the sessions of all instances (see runtime.runner).
    intra_op_threads: int = 0
    # Empty (or "*"): load every model in the repository at start. Explicit mode only.
    load_models: tuple[str, ...] = ()
    # -- model control (issue 18): none | poll | explicit, as Triton's --model-control-mode --------
    # explicit (the default) keeps attnserve's behaviour before the flag existed: every model (or
    # the --load-model ones) at start, and RepositoryModelLoad/Unload served.
    model_control_mode: str = "explicit"
    repository_poll_s: float = 15.0  # poll mode: seconds between scans (Triton's default)
    log_level: str = "INFO"
    # auto: uvloop when installed (Linux/macOS), else asyncio's own loop. The loop runs every
    # RPC's Python; uvloop took 13% off the server CPU per request (service/eventloop.py).
    event_loop: str = "auto"
    # grpc core experiments for the server process, in GRPC_EXPERIMENTS syntax (comma-separated,
    # "-name" turns one off), set before grpc starts (service/transport/grpc_core.py). The default
    # turns off the EventEngine listener: its accept/read path costs 6-10% more server CPU per
    # request here. "none" keeps grpc's defaults; a GRPC_EXPERIMENTS in the environment wins.
    grpc_experiments: str = "-event_engine_listener"
    # -- attnserve API limits (issue 4): per item, checked before any decoding work ------------
    api_max_image_bytes: int = 16 * MiB  # one encoded image
    # Width x height as the file header declares it, checked before the pixels are decompressed.
    api_max_image_pixels: int = 4096 * 4096
    api_max_items: int = 256  # images per Classify, sequences per Encode, count per Generate
    api_max_tokens: int = 8192  # longest sequence when the model declares no maximum of its own
    # -- reliability and security (issue 8) --------------------------------------------------------
    max_tensor_bytes: int = 0  # one decoded v2 input tensor; 0: same as max_message_bytes
    max_concurrent_rpcs: int = 0  # more get RESOURCE_EXHAUSTED at once; 0: no limit
    tls_cert: Path | None = None  # PEM chain; with tls_key the gRPC port speaks only TLS
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # PEM CA bundle; when set every client needs a certificate
    auth_token_file: Path | None = None  # bearer token required on every RPC except health
    # The same from the environment only (ATTNSERVE_AUTH_TOKEN): a flag would show it in ps.
    auth_token: str = dataclasses.field(default="", repr=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def grpc_address(self) -> str:
        return _join(self.host, self.grpc_port)

    @property
    def http_address(self) -> str:
        return _join(self.host, self.http_port)

    @property
    def effective_metrics_host(self) -> str:
        return self.metrics_host or self.host

    @property
    def effective_max_tensor_bytes(self) -> int:
        return self.max_tensor_bytes or self.max_message_bytes

    @classmethod
    def from_sources(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> "Settings":
        """Build settings from flags (highest), then ``ATTNSERVE_*`` variables, then defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in _fields():
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw, source=ENV_PREFIX + f.name.upper())
        parsed = vars(build_parser().parse_args(list(argv or [])))
        for name, raw in parsed.items():
            if raw is not None:
                values[name] = _convert(_field(name), raw, source="--" + name.replace("_", "-"))
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Flags for ``attnserve serve``. Defaults are None so env/defaults show through."""
    p = parser or argparse.ArgumentParser(prog="attnserve serve")
    p.add_argument("--model-repository", dest="model_repository", metavar="DIR")
    p.add_argument("--host", dest="host", help="address the gRPC and HTTP ports bind (default 127.0.0.1)")
    p.add_argument("--grpc-port", dest="grpc_port", metavar="PORT", help="0 picks a free port")
    p.add_argument("--http-port", dest="http_port", metavar="PORT", help="KServe v2 HTTP/REST port (default 8000; 0 picks a free port)")
    p.add_argument("--allow-http", dest="allow_http", metavar="BOOL", help="serve HTTP/REST beside gRPC (default true)")
    p.add_argument("--metrics-host", dest="metrics_host", help="default: same as --host")
    p.add_argument("--metrics-port", dest="metrics_port", metavar="PORT", help="0 picks a free port")
    p.add_argument("--allow-metrics", dest="allow_metrics", metavar="BOOL")
    p.add_argument("--max-message-bytes", dest="max_message_bytes", metavar="N")
    p.add_argument("--exit-timeout-secs", dest="exit_timeout_s", metavar="SECONDS")
    p.add_argument(
        "--drain-quiet-secs", dest="drain_quiet_s", metavar="SECONDS",
        help="on SIGTERM, report not ready but keep serving this long before draining (default 0)",
    )
    p.add_argument(
        "--execution-timeout-secs", dest="execution_timeout_s", metavar="SECONDS",
        help="abandon and replace an instance whose execution runs longer (default 60; 0: off)",
    )
    p.add_argument("--provider", dest="provider", choices=PROVIDERS)
    p.add_argument("--device-id", dest="device_id", metavar="N")
    p.add_argument("--intra-op-threads", dest="intra_op_threads", metavar="N")
    p.add_argument(
        "--load-model", dest="load_models", action="append", metavar="NAME",
        help="load only these models at start (repeatable; default or '*': all; explicit mode only)",
    )
    p.add_argument(
        "--model-control-mode", dest="model_control_mode", type=str.lower, choices=MODEL_CONTROL_MODES,
        help="none: load all at start, no load/unload RPCs; poll: also rescan the repository; "
        "explicit (default): load/unload RPCs",
    )
    p.add_argument("--repository-poll-secs", dest="repository_poll_s", metavar="SECONDS", help="poll mode: seconds between scans (default 15)")
    p.add_argument("--log-level", dest="log_level", choices=LOG_LEVELS)
    p.add_argument("--event-loop", dest="event_loop", choices=EVENT_LOOPS, help="auto (default): uvloop when installed")
    p.add_argument(
        "--grpc-experiments", dest="grpc_experiments", metavar="LIST",
        help="grpc core experiments, GRPC_EXPERIMENTS syntax, e.g. --grpc-experiments=-event_engine_listener "
        "(the default); none: grpc's own",
    )
    # attnserve API limits (issue 4)
    p.add_argument("--api-max-image-bytes", dest="api_max_image_bytes", metavar="N", help="encoded bytes per image")
    p.add_argument("--api-max-image-pixels", dest="api_max_image_pixels", metavar="N", help="width x height per image")
    p.add_argument("--api-max-items", dest="api_max_items", metavar="N", help="images, sequences or generated images per request")
    p.add_argument("--api-max-tokens", dest="api_max_tokens", metavar="N", help="sequence length cap when a model declares none")
    # reliability and security (issue 8)
    p.add_argument("--max-tensor-bytes", dest="max_tensor_bytes", metavar="N", help="decoded bytes per input tensor (default: --max-message-bytes)")
    p.add_argument("--max-concurrent-rpcs", dest="max_concurrent_rpcs", metavar="N", help="0: no limit")
    p.add_argument("--tls-cert", dest="tls_cert", metavar="PEM", help="server certificate chain (enables TLS)")
    p.add_argument("--tls-key", dest="tls_key", metavar="PEM", help="server private key")
    p.add_argument("--tls-client-ca", dest="tls_client_ca", metavar="PEM", help="require client certificates signed by this CA")
    p.add_argument("--auth-token-file", dest="auth_token_file", metavar="PATH", help="require 'authorization: Bearer <token>' (or ATTNSERVE_AUTH_TOKEN)")
    return p


def _fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(Settings))


def _field(name: str) -> dataclasses.Field:
    return next(f for f in _fields() if f.name == name)


def _convert(f: dataclasses.Field, raw: Any, *, source: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind in ("Path", "Path | None"):
            return Path(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return _parse_bool(raw)
        if kind.startswith("tuple"):
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(s.strip() for s in items if s.strip())
        return str(raw)
    except ValueError as exc:
        raise SettingsError(f"{source}: cannot read {raw!r} as {kind}") from exc


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _validate(s: Settings) -> None:
    for name in ("grpc_port", "http_port", "metrics_port"):
        port = getattr(s, name)
        if not 0 <= port <= 65535:
            raise SettingsError(f"{name}={port}: a port is 0..65535 (0 picks a free one)")
    if s.allow_http and s.http_port and s.http_port == s.grpc_port:
        raise SettingsError(f"http_port={s.http_port}: the same port as grpc_port; give HTTP its own (or --allow-http false)")
    for name in ("host", "metrics_host"):
        value = getattr(s, name)
        if value and not _is_host(value):
            raise SettingsError(f"{name}={value!r}: not an IP address or host name")
    if s.max_message_bytes < 4 * MiB or s.max_message_bytes > 2047 * MiB:
        raise SettingsError(
            f"max_message_bytes={s.max_message_bytes}: must be between 4 MiB and 2047 MiB"
        )
    if not 0 < s.exit_timeout_s <= 3600:
        raise SettingsError(f"exit_timeout_s={s.exit_timeout_s}: must be in (0, 3600] seconds")
    if not 0 <= s.drain_quiet_s <= 3600:
        raise SettingsError(f"drain_quiet_s={s.drain_quiet_s}: must be in [0, 3600] seconds")
    if not 0 <= s.execution_timeout_s <= 86400:
        raise SettingsError(f"execution_timeout_s={s.execution_timeout_s}: must be in [0, 86400] seconds (0 = off)")
    if s.provider not in PROVIDERS:
        raise SettingsError(f"provider={s.provider!r}: one of {', '.join(PROVIDERS)}")
    if s.device_id < 0:
        raise SettingsError(f"device_id={s.device_id}: must be >= 0")
    if s.intra_op_threads < 0:
        raise SettingsError(f"intra_op_threads={s.intra_op_threads}: must be >= 0 (0 = auto)")
    for name in ("api_max_image_bytes", "api_max_image_pixels", "api_max_items", "api_max_tokens"):
        if getattr(s, name) < 1:
            raise SettingsError(f"{name}={getattr(s, name)}: must be >= 1")
    for name in ("max_tensor_bytes", "max_concurrent_rpcs"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name}={getattr(s, name)}: must be >= 0 (0 = default)")
    if (s.tls_cert is None) != (s.tls_key is None):
        raise SettingsError("tls_cert and tls_key go together: set both to enable TLS, or neither")
    if s.tls_client_ca is not None and s.tls_cert is None:
        raise SettingsError("tls_client_ca needs TLS: set tls_cert and tls_key too")
    if s.auth_token_file is not None and s.auth_token:
        raise SettingsError("set the bearer token once: auth_token_file or ATTNSERVE_AUTH_TOKEN, not both")
    _validate_model_control(s)
    if s.event_loop not in EVENT_LOOPS:
        raise SettingsError(f"event_loop={s.event_loop!r}: one of {', '.join(EVENT_LOOPS)}")
    if s.grpc_experiments not in ("", "none") and not GRPC_EXPERIMENTS.fullmatch(s.grpc_experiments):
        raise SettingsError(
            f"grpc_experiments={s.grpc_experiments!r}: comma-separated experiment names, each may start with '-'"
        )
    if s.log_level.upper() not in LOG_LEVELS:
        raise SettingsError(f"log_level={s.log_level!r}: one of {', '.join(LOG_LEVELS)}")


def _validate_model_control(s: Settings) -> None:
    mode = s.model_control_mode.lower()
    if mode not in MODEL_CONTROL_MODES:
        raise SettingsError(f"model_control_mode={s.model_control_mode!r}: one of {', '.join(MODEL_CONTROL_MODES)}")
    if not 0 < s.repository_poll_s <= 3600:
        raise SettingsError(f"repository_poll_s={s.repository_poll_s}: must be in (0, 3600] seconds")
    if "*" in s.load_models and len(s.load_models) > 1:
        raise SettingsError("load_models: '*' (every model) must be the only --load-model")
    if s.load_models and s.load_models != ("*",) and mode != "explicit":
        raise SettingsError(
            f"load_models={','.join(s.load_models)}: picking models at start needs --model-control-mode explicit "
            f"(mode {mode!r} loads every model in the repository)"
        )


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        labels = value.split(".")
        return all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def check_repository(settings: Settings) -> None:
    """Fail at start, not at first request, when the repository folder is missing."""
    if not settings.model_repository.is_dir():
        raise SettingsError(
            f"model repository {str(settings.model_repository)!r} is not a directory "
            "(export one with: attnserve export --model-repository DIR)"
        )
