"""Which asyncio event loop runs the server: uvloop when it is installed, else asyncio's own.

Every RPC's Python runs on this one loop, so its cost per callback, task step and timer is paid
several times per request. grpc.aio runs on uvloop (its completion queue is polled in its own
thread and hands events to the loop through ``call_soon_threadsafe``, which uvloop implements
natively). Measured on the 2-core development machine, a trivial ONNX model at c=32 (one
grpc.aio client, two alternating rounds each): 1,108 and 1,168 µs of server CPU per request
on asyncio's loop, 964 and 1,020 on uvloop 0.23; throughput 956-1,012 -> 1,103-1,163 req/s.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any, Callable, Coroutine

log = logging.getLogger(__name__)


def loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """(factory for ``asyncio.Runner``, the loop's name) for ``auto``, ``uvloop`` or ``asyncio``.

    ``uvloop`` demanded but missing raises ImportError; ``auto`` falls back to asyncio quietly
    (uvloop does not exist on Windows).
    """
    if choice == "asyncio":
        return None, "asyncio"
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def run(main: Coroutine[Any, Any, Any], choice: str = "auto") -> Any:
    """``asyncio.run(main)`` on the chosen loop."""
    factory, name = loop_factory(choice)
    log.debug("event loop: %s", name)
    if factory is None:
        return asyncio.run(main)
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does at exit: cancel the tasks still pending and let them finish."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
