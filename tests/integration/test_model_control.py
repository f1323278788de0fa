"""Model control while serving (issue 18), as Triton does it: ``--model-control-mode``.

- poll: a new version folder, a changed config.pbtxt, a new or removed model folder are picked
  up by the next scan; the new instance is loaded and warmed up beside the old one and swapped
  in, the old one drains and is unloaded. A broken new version leaves the old one serving, and
  RepositoryIndex and the log say why.
- explicit (the default): RepositoryModelLoad with Triton's ``config`` override (a JSON
  ModelConfig), which is also how the version_policy variants are switched here.
- none and poll refuse RepositoryModelLoad/Unload with UNAVAILABLE, as Triton does.

Waits are on what the server shows (RepositoryIndex, ModelConfig, its log), never on time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from service.proto.inference import model_config_pb2 as mc
from tests.conftest import read_model_config
from tests.integration.support import (
    ENCODER,
    SECNN,
    assert_matches,
    infer_inputs,
    message_of,
    sample_inputs,
    status_of,
    wait_until,
)
from tests.integration.versions import (
    FileReference,
    add_version,
    config_json,
    index_of,
    perturbed_onnx,
    replace_config,
)

POLL = ("--model-control-mode", "poll", "--repository-poll-secs", "0.2")
SWAP_TIMEOUT_S = 60.0  # a scan every 0.2 s, then a load of about a second on a busy machine


def _drained(model: str, version: str) -> str:
    return f"model {model} version {version}: previous instance drained and unloaded"


def _ready_metric(server, model: str, version: str) -> float:
    return server.metric("attnserve_model_ready", model=model, version=version)


def _same(served, config: mc.ModelConfig) -> bool:
    """A served config (tritonclient's own ModelConfig class) equals ``config``."""
    return served.SerializeToString(deterministic=True) == config.SerializeToString(deterministic=True)


def _refused(call, code: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert status_of(caught.value) == code, message_of(caught.value)
    return message_of(caught.value)


@pytest.fixture
def versions(tmp_path: Path, model_repository: Path) -> dict[str, Path]:
    """Three SE-CNN model files: the exported one and two with a changed weight."""
    exported = model_repository / SECNN / "1" / "model.onnx"
    return {
        "1": exported,
        "2": perturbed_onnx(exported, tmp_path / "v2" / "model.onnx", 1.5),
        "3": perturbed_onnx(exported, tmp_path / "v3" / "model.onnx", 0.5),
    }


def test_poll_swaps_in_a_new_version_and_keeps_serving_through_a_broken_one(
    start_server, make_repository, model_repository, versions
) -> None:
    repository = make_repository(models=(SECNN,))
    model_dir = repository / SECNN
    server = start_server(*POLL, repository=repository)
    arrays = sample_inputs(model_repository, SECNN, 2, np.random.default_rng(180))
    expected = {v: FileReference(path).run(arrays) for v, path in versions.items()}
    assert not np.allclose(expected["1"]["logits"], expected["2"]["logits"])  # the versions differ

    with grpcclient.InferenceServerClient(server.url) as client:
        result = client.infer(SECNN, infer_inputs(arrays))
        assert result.get_response().model_version == "1"
        assert_matches(result, expected["1"])

        # A new version folder: loaded beside version 1, swapped in; version 1 drains (the
        # default policy serves the latest one only).
        add_version(model_dir, 2, versions["2"])
        wait_until(
            lambda: index_of(client, SECNN) == {"1": ("UNAVAILABLE", "unloaded"), "2": ("READY", "")},
            SWAP_TIMEOUT_S, "version 2 swapped in",
        )
        server.wait_for_log(_drained(SECNN, "1"))
        result = client.infer(SECNN, infer_inputs(arrays))
        assert result.get_response().model_version == "2"
        assert_matches(result, expected["2"])
        assert client.get_model_metadata(SECNN).versions == ["2"]
        assert client.is_model_ready(SECNN, "2") and not client.is_model_ready(SECNN, "1")
        _refused(lambda: client.infer(SECNN, infer_inputs(arrays), model_version="1"), "NOT_FOUND")
        assert (_ready_metric(server, SECNN, "1"), _ready_metric(server, SECNN, "2")) == (0, 1)
        assert server.metric("attnserve_model_load_duration_seconds", model=SECNN, version="2") > 0

        # A broken version 3 (not an ONNX file): version 2 keeps serving; index and log say why.
        mark = len(server.lines)
        add_version(model_dir, 3, content=b"not an onnx model" * 64)
        line = server.wait_for_log(f"model {SECNN} failed to load", SWAP_TIMEOUT_S, start=mark)
        assert " ERROR " in line and "still serving version(s) 2" in line
        rows = index_of(client, SECNN)
        assert rows["3"][0] == "UNAVAILABLE" and "3/model.onnx" in rows["3"][1], rows
        assert rows["2"][0] == "READY" and "the last load failed" in rows["2"][1], rows
        assert_matches(client.infer(SECNN, infer_inputs(arrays)), expected["2"])
        assert _ready_metric(server, SECNN, "2") == 1

        # Fixed in place: version 3 is swapped in like any other.
        shutil.rmtree(model_dir / "3")
        add_version(model_dir, 3, versions["3"])
        wait_until(lambda: index_of(client, SECNN).get("3") == ("READY", ""), SWAP_TIMEOUT_S, "version 3 ready")
        result = client.infer(SECNN, infer_inputs(arrays))
        assert result.get_response().model_version == "3"
        assert_matches(result, expected["3"])


def test_poll_reloads_a_changed_config_and_follows_model_folders(start_server, make_repository, model_repository) -> None:
    repository = make_repository(models=(SECNN,))
    model_dir = repository / SECNN
    server = start_server(*POLL, repository=repository)
    arrays = sample_inputs(model_repository, SECNN, 3, np.random.default_rng(181))
    expected = FileReference(model_dir / "1" / "model.onnx").run(arrays)

    def delay() -> int:
        return client.get_model_config(SECNN).config.dynamic_batching.max_queue_delay_microseconds

    with grpcclient.InferenceServerClient(server.url) as client:
        before = delay()
        # Same version, new config.pbtxt: a new instance of version 1 replaces the old one.
        replace_config(model_dir, lambda c: setattr(c.dynamic_batching, "max_queue_delay_microseconds", before + 7))
        wait_until(lambda: delay() == before + 7, SWAP_TIMEOUT_S, "the new config served")
        server.wait_for_log(_drained(SECNN, "1"))
        assert index_of(client, SECNN) == {"1": ("READY", "")}
        assert _ready_metric(server, SECNN, "1") == 1  # the replaced instance did not turn it off
        assert_matches(client.infer(SECNN, infer_inputs(arrays)), expected)

        # A config that does not fit the graph: the previous config keeps serving.
        mark = len(server.lines)
        replace_config(model_dir, lambda c: setattr(c.input[0], "name", "pixels"))
        line = server.wait_for_log(f"model {SECNN} failed to load", SWAP_TIMEOUT_S, start=mark)
        assert "pixels" in line
        state, reason = index_of(client, SECNN)["1"]
        assert state == "READY" and "pixels" in reason
        assert delay() == before + 7
        assert_matches(client.infer(SECNN, infer_inputs(arrays)), expected)

        # A model folder that appears is loaded; one that disappears is unloaded.
        shutil.copytree(model_repository / ENCODER, repository / f".{ENCODER}")
        (repository / f".{ENCODER}").rename(repository / ENCODER)
        wait_until(lambda: client.is_model_ready(ENCODER), SWAP_TIMEOUT_S, "the new model ready")
        shutil.rmtree(model_dir)
        wait_until(lambda: SECNN not in {m.name for m in client.get_model_repository_index().models},
                   SWAP_TIMEOUT_S, "the removed model gone")
        server.wait_for_log(f"model {SECNN} unloaded")
        _refused(lambda: client.infer(SECNN, infer_inputs(arrays)), "NOT_FOUND")
        assert client.is_server_ready()


def test_explicit_load_with_a_config_override(start_server, make_repository, model_repository) -> None:
    """Triton's RepositoryModelLoad ``config`` parameter: the JSON config replaces config.pbtxt
    for that load (the file is not changed); a later plain load goes back to the file."""
    repository = make_repository(models=(SECNN,))
    server = start_server(repository=repository)
    arrays = sample_inputs(model_repository, SECNN, 2, np.random.default_rng(182))
    expected = FileReference(repository / SECNN / "1" / "model.onnx").run(arrays)
    on_disk = read_model_config(repository / SECNN)

    with grpcclient.InferenceServerClient(server.url) as client:
        override = read_model_config(repository / SECNN)
        override.dynamic_batching.max_queue_delay_microseconds = 4321
        client.load_model(SECNN, config=config_json(override))
        assert client.get_model_config(SECNN).config.dynamic_batching.max_queue_delay_microseconds == 4321
        assert_matches(client.infer(SECNN, infer_inputs(arrays)), expected)
        assert read_model_config(repository / SECNN) == on_disk

        client.load_model(SECNN)
        assert _same(client.get_model_config(SECNN).config, on_disk)

        # Refused before anything is loaded: not JSON, another model's name, file contents.
        assert "JSON" in _refused(lambda: client.load_model(SECNN, config="{not json"), "INVALID_ARGUMENT")
        renamed = mc.ModelConfig()
        renamed.CopyFrom(on_disk)
        renamed.name = "another_model"
        assert "another_model" in _refused(lambda: client.load_model(SECNN, config=config_json(renamed)), "INVALID_ARGUMENT")
        files = {"file:1/model.onnx": b"bytes"}
        assert "file:" in _refused(lambda: client.load_model(SECNN, config=config_json(on_disk), files=files), "INVALID_ARGUMENT")

        # An override the graph does not take: the model keeps serving what it had.
        broken = mc.ModelConfig()
        broken.CopyFrom(on_disk)
        broken.input[0].name = "pixels"
        assert "pixels" in _refused(lambda: client.load_model(SECNN, config=config_json(broken)), "FAILED_PRECONDITION")
        state, reason = index_of(client, SECNN)["1"]
        assert state == "READY" and "pixels" in reason
        assert _same(client.get_model_config(SECNN).config, on_disk)
        assert_matches(client.infer(SECNN, infer_inputs(arrays)), expected)
        assert f"model {SECNN} failed to load" in server.log


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("", ["3"]),  # Triton's default: latest { num_versions: 1 }
        ("latest", ["2", "3"]),  # num_versions: 2
        ("all", ["1", "2", "3"]),
        ("specific", ["1", "3"]),
    ],
)
def test_version_policy(start_server, make_repository, model_repository, versions, policy: str, served: list[str]) -> None:
    """Versions 1, 2 and 3 on disk; what each policy serves, and ModelInfer's model_version
    picking among them (each version answers with its own weights)."""
    repository = make_repository(models=(SECNN,))
    model_dir = repository / SECNN
    add_version(model_dir, 2, versions["2"])
    add_version(model_dir, 3, versions["3"])

    def set_policy(config: mc.ModelConfig) -> None:
        if policy == "latest":
            config.version_policy.latest.num_versions = 2
        elif policy == "all":
            config.version_policy.all.SetInParent()
        elif policy == "specific":
            config.version_policy.specific.versions.extend([3, 1])

    replace_config(model_dir, set_policy)
    server = start_server(repository=repository)
    arrays = sample_inputs(model_repository, SECNN, 2, np.random.default_rng(183))
    expected = {v: FileReference(path).run(arrays) for v, path in versions.items()}

    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.get_model_metadata(SECNN).versions == served
        assert sorted(v for v, (state, _) in index_of(client, SECNN).items() if state == "READY") == served
        for version in ("1", "2", "3"):
            if version in served:
                assert client.is_model_ready(SECNN, version)
                result = client.infer(SECNN, infer_inputs(arrays), model_version=version)
                assert result.get_response().model_version == version
                assert_matches(result, expected[version])
                assert _ready_metric(server, SECNN, version) == 1
            else:
                assert not client.is_model_ready(SECNN, version)
                _refused(lambda: client.infer(SECNN, infer_inputs(arrays), model_version=version), "NOT_FOUND")
        default = client.infer(SECNN, infer_inputs(arrays))  # no version: the highest served
        assert default.get_response().model_version == served[-1]


def test_specific_policy_naming_a_missing_version_keeps_the_model_serving(start_server, make_repository) -> None:
    repository = make_repository(models=(SECNN,))
    server = start_server(repository=repository)
    with grpcclient.InferenceServerClient(server.url) as client:
        config = read_model_config(repository / SECNN)
        config.version_policy.specific.versions.append(7)
        message = _refused(lambda: client.load_model(SECNN, config=config_json(config)), "FAILED_PRECONDITION")
        assert "[7]" in message
        assert client.is_model_ready(SECNN, "1")


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_are_refused_unless_explicit(start_server, make_repository, mode: str) -> None:
    """Triton: 'explicit model load / unload is not allowed if polling is enabled', UNAVAILABLE."""
    server = start_server("--model-control-mode", mode, repository=make_repository(models=(SECNN,)))
    with grpcclient.InferenceServerClient(server.url) as client:
        for call in (lambda: client.load_model(SECNN), lambda: client.unload_model(SECNN)):
            message = _refused(call, "UNAVAILABLE")
            assert "explicit model load / unload is not allowed" in message and repr(mode) in message
        assert client.is_model_ready(SECNN)
