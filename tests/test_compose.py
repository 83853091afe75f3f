"""compose.yaml's scale layout: what its processes must share."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import yaml

from hub.config import load_config
from tests.services import REPO


def _image_env() -> dict[str, str]:
    """The HUB_* variables the Dockerfile sets."""
    return dict(re.findall(r"\b(HUB_\w+)=(\S+)", (REPO / "Dockerfile").read_text()))


def _interpolated(value: Any) -> str:
    # ${VAR:-default} takes its default; ${VAR:?error} must be set: any value.
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
    return re.sub(r"\$\{\w+:\?[^}]*\}", "x" * 64, text)


def _mount_of(service: dict[str, Any], path: PurePosixPath) -> tuple[str, PurePosixPath] | None:
    """The (volume, target) of the deepest mount holding ``path``."""
    best: tuple[str, PurePosixPath] | None = None
    for spec in service.get("volumes", []):
        source, target = str(spec).split(":")[:2]
        mounted = PurePosixPath(target)
        if (path == mounted or mounted in path.parents) and (best is None or best[1] in mounted.parents):
            best = (source, mounted)
    return best


def test_web_and_worker_share_the_attachments_on_a_named_volume() -> None:
    """Attachments are files: a worker stores inbound email and Telegram files
    that the web service serves, and sends files agents upload through the web
    service. Both must see the same directory, whatever the config puts it."""
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    mounts = []
    for name in ("web", "worker"):
        env = _image_env() | {k: _interpolated(v) for k, v in services[name].get("environment", {}).items()}
        config = load_config(REPO / "config.yaml", env=env)
        attachments = PurePosixPath(config.attachments_dir)
        mount = _mount_of(services[name], attachments)
        assert mount is not None, f"{name}: {attachments} is on the container's own disk"
        assert mount[0] in (compose.get("volumes") or {}), f"{name}: {mount[0]} is not a named volume"
        mounts.append(mount)
    assert mounts[0] == mounts[1]
    # A new named volume takes its owner from the image's directory: the mount
    # point must exist in the image, owned by the user the hub runs as.
    home = re.search(r"useradd .*--home-dir (\S+)", (REPO / "Dockerfile").read_text())
    assert home is not None and mounts[0][1] == PurePosixPath(home.group(1))


def _published(spec: Any) -> tuple[str | None, int]:
    """(host port or range, container port) of a short-syntax ports entry."""
    parts = str(spec).split(":")
    container = int(parts[-1].split("/")[0])
    host = parts[-2] if len(parts) > 1 else None
    return host, container


def test_every_web_replica_can_publish_its_port() -> None:
    """`docker compose up --scale web=N` (as the README and compose.yaml say)
    starts N web containers: one fixed host port would let only the first
    bind, so the host side is a range at least N wide (or left to Docker)."""
    text = (REPO / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    web = compose["services"]["web"]
    env = _image_env() | {k: _interpolated(v) for k, v in web.get("environment", {}).items()}
    port = load_config(REPO / "config.yaml", env=env).server.port
    scales = [int(n) for n in re.findall(r"--scale web=(\d+)", text + (REPO / "README.md").read_text())]
    assert scales, "neither compose.yaml nor the README says how to scale web"
    assert web.get("ports"), "the web service publishes no port"
    for spec in web["ports"]:
        host, container = _published(spec)
        assert container == port, f"{spec}: the hub listens on {port} in the container"
        if host is None:
            continue
        low, _, high = host.partition("-")
        width = int(high or low) - int(low) + 1
        assert width >= max(scales), f"{spec}: {width} host port(s) for --scale web={max(scales)}"
