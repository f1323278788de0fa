"""py-spy on the server while a load generator drives it: a flame graph and a table of where
the time goes.

Two py-spy processes sample the same server at once (``--nonblocking``, so the server is never
paused): one writes the flame graph (``<scenario>.svg``), the other the collapsed stacks
(``<scenario>.stacks.txt``, one ``frame;frame;... count`` line per distinct stack). The stacks
are then summarised into ``<scenario>.profile.md``: the share of samples per thread kind (the
event loop, the ONNX Runtime executor threads) and the functions with the most samples, both
on their own ("self") and with what they call ("total").

How to read it: py-spy sees Python frames only. Time spent inside grpcio's Cython core shows
up as the self time of the asyncio callback that entered it (``Handle._run``), and time
inside onnxruntime as the self time of ``Session.run``. Intra-op threads that onnxruntime
starts itself have no Python frames and are not sampled at all.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RATE_HZ = 100


@dataclass
class Profiler:
    svg: Path
    stacks: Path
    processes: list[subprocess.Popen] = field(default_factory=list)


def start(pid: int, out: Path, name: str, log_dir: Path) -> Profiler | None:
    """Start sampling ``pid``; None (with a message) when py-spy is not installed."""
    beside = Path(sys.executable).parent / "py-spy"
    binary = str(beside) if beside.is_file() else shutil.which("py-spy")
    if binary is None:
        print("[bench] --profile: py-spy not found (pip install py-spy); not profiling", file=sys.stderr)
        return None
    out.mkdir(parents=True, exist_ok=True)
    profiler = Profiler(svg=out / f"{name}.svg", stacks=out / f"{name}.stacks.txt")
    for fmt, path in (("flamegraph", profiler.svg), ("raw", profiler.stacks)):
        command = [binary, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--nonblocking"]
        command += ["--format", fmt, "-o", str(path)]
        with open(log_dir / f"py-spy-{fmt}.log", "w") as log:  # the child keeps its own copy
            profiler.processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log))
    return profiler


def stop(profiler: Profiler | None) -> None:
    """Stop sampling; py-spy writes its file on SIGINT."""
    if profiler is None:
        return
    for process in profiler.processes:
        process.send_signal(signal.SIGINT)
    for process in profiler.processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


# -- the summary ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    samples: int
    threads: list[tuple[str, int]]  # thread kind, samples
    self_time: list[tuple[str, int]]  # function, samples where it was the innermost frame
    total_time: list[tuple[str, int]]  # function, samples where it was anywhere on the stack


def _function(frame: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (file.py)``: one row per function, not per line."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name


def _thread_kind(stack: list[str]) -> str:
    joined = ";".join(stack)
    if "OrtRunner._execute" in joined:
        return "onnxruntime executor (session.run and its bookkeeping)"
    if "run_forever" in joined or "run_until_complete" in joined:
        return "asyncio event loop (gRPC, codecs, batcher)"
    return "other threads"


def summarise(stacks_file: Path, top: int = 25) -> Summary:
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for line in stacks_file.read_text(encoding="utf-8", errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        samples += count
        threads[_thread_kind(frames)] += count
        functions = [_function(f) for f in frames[1:]] or [_function(frames[0])]
        self_time[functions[-1]] += count
        for function in set(functions):
            total_time[function] += count
    return Summary(
        samples=samples,
        threads=threads.most_common(),
        self_time=self_time.most_common(top),
        total_time=total_time.most_common(top),
    )


def markdown(summary: Summary, title: str) -> str:
    def share(count: int) -> str:
        return f"{count / max(1, summary.samples):.1%}"

    lines = [
        f"# Where the server's time goes: {title}",
        "",
        f"py-spy at {RATE_HZ} Hz, {summary.samples} samples of busy Python threads. Time inside "
        "grpcio's Cython core shows as the self time of `Handle._run`; time inside onnxruntime as "
        "`Session.run`. Flame graph: the `.svg` beside this file.",
        "",
        "| thread | share of samples |",
        "|---|---|",
        *(f"| {kind} | {share(n)} |" for kind, n in summary.threads),
        "",
        "| function (self) | share | | function (total) | share |",
        "|---|---|---|---|---|",
    ]
    for (own, n_own), (total, n_total) in zip(summary.self_time, summary.total_time):
        lines.append(f"| `{own}` | {share(n_own)} | | `{total}` | {share(n_total)} |")
    return "\n".join(lines) + "\n"


def write_summary(profiler: Profiler | None, title: str) -> dict | None:
    """``<scenario>.profile.md`` from the stacks; the figures for the results JSON."""
    if profiler is None or not profiler.stacks.is_file():
        return None
    summary = summarise(profiler.stacks)
    path = profiler.stacks.with_name(profiler.stacks.name.replace(".stacks.txt", ".profile.md"))
    path.write_text(markdown(summary, title), encoding="utf-8")
    return {
        "samples": summary.samples,
        "threads": dict(summary.threads),
        "self": dict(summary.self_time),
        "total": dict(summary.total_time),
        "files": [str(profiler.svg), str(profiler.stacks), str(path)],
    }
