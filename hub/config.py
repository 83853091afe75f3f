"""Configuration: ``config.yaml`` validated at start-up, environment overrides.

An invalid value stops start-up with a message naming the key. Secrets are read
only from the environment (a secret written into YAML is refused), so the shipped
``config.yaml`` can be committed and shared.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from routing.settings import RoutingConfig

# Environment variable -> dotted config key. Documented in the README; a test
# checks that every one of them is.
ENV_OVERRIDES: dict[str, str] = {
    "HUB_HOST": "server.host",
    "HUB_PORT": "server.port",
    "HUB_PUBLIC_URL": "server.public_url",
    "HUB_DATABASE_URL": "database.url",
    "HUB_REDIS_URL": "redis.url",
    "HUB_DATA_DIR": "data_dir",
    "HUB_BOT_ENABLED": "bot.enabled",
    "HUB_LOG_LEVEL": "logging.level",
    "HUB_LOG_FORMAT": "logging.format",
}

SECRET_KEYS = ("secret_key",)


class ConfigError(Exception):
    """Raised when the configuration cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Clients whose X-Forwarded-* headers are believed (reverse proxies).
    trusted_proxies: list[str] = Field(default_factory=list)


class DatabaseConfig(_Section):
    # None: a SQLite file in data_dir.
    url: str | None = None
    pool_size: int = Field(default=10, ge=1)
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg:// (async drivers)")
        return value


class RedisConfig(_Section):
    # None: the in-process stream (one process runs web and workers).
    url: str | None = None
    stream: str = "hub:events"
    live_channel: str = "hub:live"

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class WorkersConfig(_Section):
    # How many times a failed event is retried before it goes to the dead-letter stream.
    max_deliveries: int = Field(default=5, ge=1)
    # A pending stream entry idle this long belongs to a dead consumer and is reclaimed.
    claim_idle_seconds: float = Field(default=30.0, gt=0)
    send_max_attempts: int = Field(default=8, ge=1)
    send_backoff_seconds: float = Field(default=1.0, gt=0)
    send_backoff_max_seconds: float = Field(default=300.0, gt=0)
    # A message stuck in "sending" this long (its sender died) is tried again.
    send_lease_seconds: float = Field(default=60.0, gt=0)
    sweep_interval_seconds: float = Field(default=2.0, gt=0)
    concurrency: int = Field(default=8, ge=1)


class WebchatConfig(_Section):
    inbox: str = "webchat"
    inbox_name: str = "Website"
    history_limit: int = Field(default=50, ge=1, le=500)
    max_message_chars: int = Field(default=5000, ge=1)
    # Origins allowed to open the visitor websocket; "*" allows any site.
    allowed_origins: list[str] = Field(default_factory=lambda: ["*"])


class AttachmentsConfig(_Section):
    # Larger files are refused (a webhook answers 413, a poller records why).
    max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # None: data_dir/attachments.
    dir: Path | None = None


class BotConfig(_Section):
    enabled: bool = False


class AuthConfig(_Section):
    token_ttl_hours: float = Field(default=24 * 30, gt=0)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class HubConfig(_Section):
    data_dir: Path = Path("data")
    server: ServerConfig = Field(default_factory=ServerConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    webchat: WebchatConfig = Field(default_factory=WebchatConfig)
    attachments: AttachmentsConfig = Field(default_factory=AttachmentsConfig)
    bot: BotConfig = Field(default_factory=BotConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    # Filled from HUB_SECRET_KEY, or generated once and kept in data_dir.
    secret_key: str = Field(default="", repr=False)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'hub.db').resolve()}"

    @property
    def attachments_dir(self) -> Path:
        return self.attachments.dir or self.data_dir / "attachments"

    @property
    def public_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        return f"http://{self.server.host}:{self.server.port}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            lines.append(f"{key}: {item['msg']}")
    return "; ".join(lines)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HubConfig:
    """Read ``path`` (default ``$HUB_CONFIG`` or ``./config.yaml`` if present),
    apply environment overrides, validate. Raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get("HUB_CONFIG") or ("config.yaml" if Path("config.yaml").exists() else None)
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist (HUB_CONFIG)")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must be a mapping at the top level")
        raw = loaded
    for secret in SECRET_KEYS:
        if raw.get(secret):
            raise ConfigError(
                f"{secret}: secrets must not be written in the config file; set HUB_{secret.upper()} in the environment"
            )
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var) not in (None, ""):
            _set_dotted(raw, dotted, env[var])
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    if env.get("HUB_SECRET_KEY"):
        raw["secret_key"] = env["HUB_SECRET_KEY"]
    try:
        return HubConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from exc


def ensure_secret_key(config: HubConfig) -> HubConfig:
    """Give an embedded install a stable secret without asking the user for one:
    generated once, kept in ``data_dir/secret_key`` (mode 0600)."""
    if config.secret_key:
        return config
    config.data_dir.mkdir(parents=True, exist_ok=True)
    key_file = config.data_dir / "secret_key"
    if key_file.exists():
        key = key_file.read_text(encoding="utf-8").strip()
    else:
        key = secrets.token_urlsafe(48)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(key)
    return config.model_copy(update={"secret_key": key})
