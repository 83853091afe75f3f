"""Sampling profiles of the hub's processes with py-spy (optional: used only
when py-spy is installed), and a plain-text summary of where the time goes."""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench._procs import Proc, Procs


def find_py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


@dataclass
class Recording:
    target: Proc
    spy: Proc
    output: Path
    rate: int
    started: float
    seconds: float = 0.0


def start(procs: Procs, py_spy: str, target: Proc, output: Path, rate: int = 250, *, native: bool = False) -> Recording:
    """Sample ``target`` (every thread; only samples where a thread is on the
    CPU, py-spy's default) into collapsed stacks at ``output`` until :func:`stop`."""
    spy = procs.start(
        f"py-spy {target.name}",
        [
            py_spy,
            "record",
            "--pid",
            str(target.pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--threads",
            *(["--native"] if native else ["--nonblocking"]),
            "--output",
            str(output),
        ],
        env={"PATH": "/usr/bin:/bin"},
        cwd=output.parent,
        log_path=output.with_suffix(".log"),
    )
    return Recording(target, spy, output, rate, time.monotonic())


def stop(procs: Procs, rec: Recording) -> None:
    # py-spy writes its output when interrupted.
    rec.seconds = time.monotonic() - rec.started
    procs.stop(rec.spy, sig=signal.SIGINT, timeout=20)


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py:123)"
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def _function(frame: str) -> str:
    # "function (file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rstrip(')')})" if where else name


def summarize(rec: Recording, top: int = 18) -> str:
    """Per thread, its share of one core (samples / ticks); for the busy
    threads, the functions with the largest inclusive and self shares."""
    try:
        lines = rec.output.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no profile: {exc})"
    threads: Counter[str] = Counter()
    stacks: dict[str, list[tuple[list[str], int]]] = {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        if not thread.startswith("thread ("):
            continue  # the tail of a frame name with a newline in it (generated code)
        threads[thread] += int(count)
        stacks.setdefault(thread, []).append(([_frame_name(f) for f in frames[1:]], int(count)))
    if not threads:
        return "(empty profile)"
    ticks = max(rec.seconds * rec.rate, 1.0)
    out = [f"on-CPU share of one core per thread, over {rec.seconds:.1f} s at {rec.rate} samples/s:"]
    for thread, n in threads.most_common():
        out.append(f"  {n / ticks * 100:5.1f}%  {thread}")
    for thread, n_thread in threads.most_common(2):
        if n_thread / ticks < 0.05:
            continue
        out.append(f"{thread}: where its on-CPU samples are ({n_thread} samples)")
        inclusive: Counter[str] = Counter()
        own: Counter[str] = Counter()
        lines_own: Counter[str] = Counter()
        for frames, n in stacks[thread]:
            for f in {_function(f) for f in frames}:
                inclusive[f] += n
            if frames:
                own[_function(frames[-1])] += n
                lines_own[frames[-1]] += n
        out.append("  inclusive:")
        # Frames under every sample (thread bootstrap, the CLI, run_forever) say nothing.
        shown = [(f, n) for f, n in inclusive.most_common() if n < n_thread][:top]
        out += [f"    {n / n_thread * 100:5.1f}%  {f}" for f, n in shown]
        out.append("  self:")
        out += [f"    {n / n_thread * 100:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(out)
