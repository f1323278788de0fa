"""service/eventloop.py: which loop runs the server, and that leftovers are cleaned up."""

from __future__ import annotations

import asyncio
import builtins

import pytest

from service import eventloop
from service.settings import Settings, SettingsError


def test_auto_picks_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    factory, name = eventloop.loop_factory("auto")
    assert name == "uvloop" and factory is uvloop.new_event_loop


def test_asyncio_choice_uses_the_default_loop() -> None:
    assert eventloop.loop_factory("asyncio") == (None, "asyncio")


def test_auto_falls_back_and_uvloop_demanded_fails_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_uvloop(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    monkeypatch.setattr(eventloop.importlib, "import_module", lambda name: no_uvloop(name))
    assert eventloop.loop_factory("auto") == (None, "asyncio")
    with pytest.raises(ImportError):
        eventloop.loop_factory("uvloop")


@pytest.mark.parametrize("choice", ["auto", "asyncio"])
def test_run_returns_the_result_and_cancels_what_is_left(choice: str) -> None:
    finished: list[str] = []

    async def straggler() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            finished.append("cancelled")

    async def main() -> str:
        asyncio.get_running_loop().create_task(straggler())
        await asyncio.sleep(0)  # let the straggler start
        return type(asyncio.get_running_loop()).__module__

    module = eventloop.run(main(), choice)
    assert finished == ["cancelled"]
    assert ("uvloop" in module) == (eventloop.loop_factory(choice)[1] == "uvloop")


def test_settings_reject_an_unknown_loop() -> None:
    with pytest.raises(SettingsError, match="event_loop"):
        Settings(event_loop="trio")
    assert Settings.from_sources(["--event-loop", "asyncio"], environ={}).event_loop == "asyncio"


# -- grpc core experiments (service/transport/grpc_core.py) -----------------------------------------
def test_grpc_experiments_are_set_unless_the_operator_set_them() -> None:
    from service.transport import grpc_core

    env: dict[str, str] = {}
    assert grpc_core.configure("-event_engine_listener", env) == "-event_engine_listener"
    assert env == {"GRPC_EXPERIMENTS": "-event_engine_listener"}
    theirs = {"GRPC_EXPERIMENTS": "event_engine_listener"}
    assert grpc_core.configure("-event_engine_listener", theirs) == "event_engine_listener"
    assert theirs == {"GRPC_EXPERIMENTS": "event_engine_listener"}  # untouched
    for none in ("none", ""):
        empty: dict[str, str] = {}
        assert grpc_core.configure(none, empty) == "" and empty == {}  # grpc's defaults


def test_grpc_experiments_setting_is_validated() -> None:
    import pytest

    from service.settings import Settings, SettingsError

    assert Settings.from_sources([], {}).grpc_experiments == "-event_engine_listener"
    assert Settings.from_sources(["--grpc-experiments", "none"], {}).grpc_experiments == "none"
    assert Settings.from_sources(["--grpc-experiments=-a_b,c1"], {}).grpc_experiments == "-a_b,c1"
    assert Settings.from_sources([], {"ATTNSERVE_GRPC_EXPERIMENTS": "x,-y"}).grpc_experiments == "x,-y"
    for bad in ("a b", "-", "a,,b", "A;rm"):
        with pytest.raises(SettingsError, match="grpc_experiments"):
            Settings.from_sources([f"--grpc-experiments={bad}"], {})
