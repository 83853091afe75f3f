"""Real hub processes for tests: ``crm-hub`` started as a user would."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

CLI = str(Path(sys.executable).with_name("crm-hub"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hub_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(
        HUB_DATA_DIR=str(data_dir),
        HUB_SECRET_KEY="test-secret",
        HUB_LOG_LEVEL="WARNING",
        HUB_LOG_FORMAT="json",
        HUB_CONFIG=str(Path(__file__).resolve().parents[2] / "config.yaml"),
    )
    env.update(extra)
    return env


def run_cli(args: list[str], env: Mapping[str, str], stdin: str | None = None) -> str:
    done = subprocess.run([CLI, *args], env=dict(env), input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"crm-hub {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


async def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float, what: str) -> None:
    """Until ``url`` answers 200; fails if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{what} exited with {proc.returncode}")
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not become ready in {timeout}s")


class HubProcess:
    def __init__(self, env: Mapping[str, str], role: str = "all", port: int | None = None, log: Path | None = None):
        self.env = dict(env)
        self.role = role
        self.port = port or free_port()
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [CLI, "serve", "--role", self.role, "--port", str(self.port)],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if self.log_path else subprocess.DEVNULL,
        )
        await wait_ready(self.proc, f"{self.base}/readyz", timeout, f"crm-hub serve (log: {self.log_path})")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
