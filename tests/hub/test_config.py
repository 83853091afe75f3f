from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hub.app import build_hub
from hub.cli import main
from hub.config import ENV_OVERRIDES, ConfigError, HubConfig, ensure_secret_key, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_shipped_config_is_valid_and_equals_the_defaults() -> None:
    shipped = load_config(ROOT / "config.yaml", env={})
    assert shipped == HubConfig()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("server:\n  port: lots\n", "server.port"),
        ("server:\n  port: 70000\n", "server.port"),
        ("databse:\n  url: x\n", "databse: unknown key"),
        ("database:\n  url: mysql://x\n", "database.url"),
        ("redis:\n  url: http://x\n", "redis.url"),
        ("workers:\n  max_deliveries: 0\n", "workers.max_deliveries"),
        ("secret_key: hunter2\n", "HUB_SECRET_KEY"),
        ("- a\n- b\n", "mapping"),
        ("server: [\n", "not valid YAML"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(write(tmp_path, text), env={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 9000\n")
    cfg = load_config(
        path,
        env={
            "HUB_PORT": "9100",
            "HUB_DATABASE_URL": "postgresql+asyncpg://u@h/db",
            "HUB_REDIS_URL": "redis://h:6379/0",
            "HUB_DATA_DIR": str(tmp_path / "d"),
            "HUB_PUBLIC_URL": "https://hub.example.com/",
            "HUB_BOT_ENABLED": "1",
            "HUB_SECRET_KEY": "s3cret",
        },
    )
    assert cfg.server.port == 9100
    assert cfg.database_url == "postgresql+asyncpg://u@h/db"
    assert cfg.redis.url == "redis://h:6379/0"
    assert cfg.public_url == "https://hub.example.com"
    assert cfg.bot.enabled is True
    assert cfg.secret_key == "s3cret"
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(path, env={"HUB_PORT": "eighty"})
    with pytest.raises(ConfigError, match="HUB_CONFIG"):
        load_config(env={"HUB_CONFIG": str(tmp_path / "missing.yaml")})


def test_generated_secret_is_stable(tmp_path: Path) -> None:
    cfg = load_config(path=None, env={}, overrides={"data_dir": str(tmp_path)})
    first = ensure_secret_key(cfg).secret_key
    assert first
    assert ensure_secret_key(cfg).secret_key == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_split_roles_need_redis_and_postgres(tmp_path: Path) -> None:
    cfg = load_config(path=None, env={"HUB_SECRET_KEY": "x"}, overrides={"data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"redis\.url"):
        build_hub(cfg, "worker")
    with_redis = load_config(
        path=None,
        env={"HUB_SECRET_KEY": "x", "HUB_REDIS_URL": "redis://127.0.0.1:6379/0"},
        overrides={"data_dir": str(tmp_path)},
    )
    with pytest.raises(ConfigError, match=r"database\.url"):
        build_hub(with_redis, "web")


def test_cli_reports_bad_config_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: lots\n")
    result = CliRunner().invoke(main, ["--config", str(path), "migrate"])
    assert result.exit_code != 0
    assert "server.port" in result.output
    assert "Traceback" not in result.output


def test_readme_documents_every_environment_variable_and_config_section() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for var in [*ENV_OVERRIDES, "HUB_CONFIG", "HUB_SECRET_KEY"]:
        assert var in readme, f"{var} is not documented in the README"
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    for section in HubConfig.model_fields:
        if section != "secret_key":
            assert section in shipped, f"config.yaml does not show {section}"
