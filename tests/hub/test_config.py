from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from hub.app import build_hub
from hub.cli import main
from hub.config import ENV_OVERRIDES, ConfigError, HubConfig, ensure_secret_key, load_config
from hub.core import Channel
from routing.settings import DEFAULT_CAPACITY

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
        # Values that parse but could never work.
        ("server:\n  public_url: hub.example.com\n", "server.public_url: Value error, 'hub.example.com' is not"),
        ("server:\n  public_url: ftp://hub.example.com\n", "server.public_url"),
        ("server:\n  public_url: https://\n", "server.public_url"),
        ("server:\n  trusted_proxies: [10.0.0.1, not-an-ip]\n", "server.trusted_proxies.1: Value error, 'not-an-ip'"),
        ("webchat:\n  allowed_origins: [example.com]\n", "webchat.allowed_origins.0: Value error, 'example.com'"),
        ("webchat:\n  allowed_origins: ['https://shop.example.com/chat']\n", "webchat.allowed_origins.0"),
        ("routing:\n  default_capacity: {webchat: -3}\n", "routing.default_capacity.webchat"),
        # A campaign message goes out only while half its send lease is left.
        ("campaigns:\n  send_lease_seconds: 30\n", "campaigns.send_lease_seconds (30) must be more than twice"),
        ("twilio:\n  senders: [{key: a, number: '+14155550100', messages_per_second: 0.001}]\n", "messages_per_second"),
        # Twilio would fetch it relative to the webhook's URL, during the call.
        (
            "twilio:\n  voice:\n    greeting: {text: {en: Hi}, audio: {fa: prompt-fa.mp3}}\n",
            "twilio.voice.greeting.audio: Value error, audio.fa: 'prompt-fa.mp3' is not an http(s) URL",
        ),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(write(tmp_path, text), env={})


def test_urls_origins_and_networks_that_work_are_accepted(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            "server:\n  public_url: https://hub.example.com/crm/\n  trusted_proxies: [10.0.0.1, 10.0.0.0/8, '::1']\n"
            "webchat:\n  allowed_origins: ['*', 'https://shop.example.com', 'http://localhost:3000/']\n"
            "routing:\n  default_capacity: {webchat: 0}\n",
        ),
        env={},
    )
    assert cfg.public_url == "https://hub.example.com/crm"
    # The channels it leaves out keep their built-in capacity.
    assert cfg.routing.default_capacity == {**DEFAULT_CAPACITY, Channel.WEBCHAT: 0}
    with pytest.raises(ConfigError, match=r"server\.public_url"):
        load_config(path=None, env={"HUB_PUBLIC_URL": "hub.example.com"})


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


def test_the_secret_key_is_written_whole_and_an_empty_one_is_refused(tmp_path: Path) -> None:
    """A crash between creating the file and writing it used to leave it
    empty, and the hub then signed visitor tokens with an empty key."""
    cfg = load_config(path=None, env={}, overrides={"data_dir": str(tmp_path)})
    key = ensure_secret_key(cfg).secret_key
    assert len(key) >= 64 and (tmp_path / "secret_key").read_text() == key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attachments", "secret_key"]  # no temporary file left
    (tmp_path / "secret_key").write_text("")
    with pytest.raises(ConfigError, match=r"secret_key: .* holds 0 characters.*delete the file"):
        ensure_secret_key(cfg)


def test_folders_the_hub_cannot_write_to_stop_start_up_by_name(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    cfg = load_config(path=None, env={"HUB_DATA_DIR": str(afile)})
    with pytest.raises(ConfigError, match=r"data_dir \(HUB_DATA_DIR\): .* is not a folder the hub can write to"):
        ensure_secret_key(cfg)
    cfg = load_config(
        path=None, env={"HUB_SECRET_KEY": "x"}, overrides={"data_dir": str(tmp_path), "attachments.dir": str(afile)}
    )
    with pytest.raises(ConfigError, match=r"attachments\.dir: .* is not a folder the hub can write to"):
        build_hub(cfg, "all")


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes("logging:\n  level: INFO\n# سلام\n".encode("cp1256"))
    with pytest.raises(ConfigError, match=r"config\.yaml is not UTF-8 text .* save it as UTF-8"):
        load_config(path, env={})


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


def test_split_roles_need_a_configured_secret_key(tmp_path: Path) -> None:
    """A key generated per process would sign visitor tokens that the other
    web processes refuse."""
    scale = {"HUB_REDIS_URL": "redis://127.0.0.1:6379/9", "HUB_DATABASE_URL": "postgresql+asyncpg://u@h/db"}
    cfg = load_config(path=None, env=scale, overrides={"data_dir": str(tmp_path)})
    for role in ("web", "worker"):
        with pytest.raises(ConfigError, match=r"^secret_key: .*HUB_SECRET_KEY"):
            build_hub(cfg, role)
    assert not (tmp_path / "secret_key").exists()
    build_hub(
        load_config(path=None, env={**scale, "HUB_SECRET_KEY": "x"}, overrides={"data_dir": str(tmp_path)}), "web"
    )


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


def test_shipped_config_header_lists_every_environment_variable_once() -> None:
    header = []
    for line in (ROOT / "config.yaml").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    named = [v for v in re.findall(r"\bHUB_[A-Z_]+\b", "\n".join(header)) if v != "HUB_SECRET_KEY"]
    assert sorted(named) == sorted(ENV_OVERRIDES)


def test_shipped_config_has_no_key_twice() -> None:
    """YAML keeps the last of two equal keys without a word: a merge that
    leaves both lines would silently change a setting."""

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader: Strict, node: yaml.MappingNode) -> dict[object, object]:
        keys = [loader.construct_object(k) for k, _ in node.value]
        twice = sorted({str(k) for k in keys if keys.count(k) > 1})
        assert not twice, f"config.yaml line {node.start_mark.line + 1}: {', '.join(twice)} given twice"
        return loader.construct_mapping(node)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    yaml.load((ROOT / "config.yaml").read_text(encoding="utf-8"), Strict)  # noqa: S506


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bot:\n  backend: rasa\n", "backend is 'rasa' but bot.rasa.url is not set"),
        ("bot:\n  backend: rasa\n  rasa:\n    url: localhost:5005\n", "bot.rasa.url: Value error, must be the Rasa"),
        ("bot:\n  backend: gpt\n", "bot.backend"),
        ("bot:\n  answer_threshold: 0.3\n  clarify_threshold: 0.4\n", "bot.clarify_threshold"),
        ("bot:\n  answer_threshold: 1.5\n", "bot.answer_threshold"),
        ("bot:\n  kb_poll_seconds: 0\n", "bot.kb_poll_seconds"),
        ("bot:\n  choices: 0\n", "bot.choices"),
        ("bot:\n  handoff_phrases: [agent, '  ']\n", "bot.handoff_phrases: Value error, phrase 1 is empty"),
        ("bot:\n  rasa:\n    actions_port: 99999\n", "bot.rasa.actions_port"),
        ("bot:\n  qualification:\n    rules: [{slot: budjet, points: 5}]\n", "rules[0]: slot 'budjet' is not one"),
        (
            "bot:\n  qualification:\n    rules: [{slot: budget, op: gte, value: lots, points: 5}]\n",
            "rule for slot 'budget' (op gte): value must be a number",
        ),
        (
            "bot:\n  qualification:\n    rules: [{slot: timeline, op: in, value: soon, points: 5}]\n",
            "value must be a non-empty list",
        ),
        ("bot:\n  qualification:\n    rules: [{slot: email, op: sometimes, points: 5}]\n", "op"),
        ("bot:\n  qualification:\n    mql_score: 70\n", "mql_score (70) must not be above sql_score (60)"),
        ("bot:\n  qualification:\n    phone_region: Iran\n", "bot.qualification.phone_region"),
        ("bot:\n  qualification:\n    sales_team: ''\n", "bot.qualification.sales_team"),
        (
            "bot:\n  qualification:\n    rules: []\n    slots: [{name: when, kind: choice, prompt: {en: 'When?'}}]\n",
            "slot 'when' is a choice: list its choices",
        ),
        (
            "bot:\n  qualification:\n    rules: []\n    slots: [{name: when, choices: [soon], prompt: {en: When}}]\n",
            "set kind: choice",
        ),
        ("bot:\n  qualification:\n    rules: []\n    slots: [{name: who, prompt: {fa: نام؟}}]\n", "English prompt"),
        ("bot:\n  qualification:\n    rules: []\n    slots: [{name: Who, prompt: {en: 'Who?'}}]\n", "slots.0.name"),
        (
            "bot:\n  qualification:\n    rules: []\n"
            "    slots: [{name: vip, kind: choice, choices: [yes, no], prompt: {en: 'VIP?'}}]\n",
            "'vip' is a contact attribute the hub sets itself",
        ),
        (
            "bot:\n  qualification:\n    rules: []\n    slots: [{name: sms_consent, prompt: {en: 'Texts?'}}]\n",
            "'sms_consent' is a contact attribute the hub sets itself",
        ),
        (
            "bot:\n  qualification:\n    rules: []\n    slots: [{name: a, prompt: {en: A}},{name: a, prompt: {en: B}}]",
            "slot names must be unique",
        ),
    ],
)
def test_invalid_bot_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env={})
    assert needle in str(caught.value)


def test_the_rasa_backend_from_the_environment() -> None:
    with pytest.raises(ConfigError, match="HUB_RASA_URL"):
        load_config(path=None, env={"HUB_BOT_BACKEND": "rasa"})
    cfg = load_config(path=None, env={"HUB_BOT_BACKEND": "rasa", "HUB_RASA_URL": "http://rasa:5005/"})
    assert (cfg.bot.backend, cfg.bot.rasa.url) == ("rasa", "http://rasa:5005")


def test_the_embedding_backend_without_its_packages_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def without_sentence_transformers(name: str, package: str | None = None) -> object:
        return None if name == "sentence_transformers" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_sentence_transformers)
    cfg = load_config(path=None, env={"HUB_SECRET_KEY": "x", "HUB_BOT_BACKEND": "embedding"})
    # Whatever else is missing (the model package too, where the extra is not installed).
    with pytest.raises(
        ConfigError, match=r"bot\.backend is 'embedding' but sentence_transformers( and \w+)? (is|are) not"
    ):
        build_hub(cfg.model_copy(update={"data_dir": tmp_path}))


def test_phone_regions_default_to_the_hubs_own() -> None:
    cfg = load_config(path=None, env={"HUB_PHONE_DEFAULT_REGION": "IR"})
    assert (cfg.bot.qualification.phone_region, cfg.widget.phone_region) == ("IR", "IR")
    cfg = load_config(
        path=None,
        env={"HUB_PHONE_DEFAULT_REGION": "IR"},
        overrides={"bot.qualification.phone_region": "DE", "widget.phone_region": "AE"},
    )
    assert (cfg.bot.qualification.phone_region, cfg.widget.phone_region) == ("DE", "AE")
    assert load_config(path=None, env={}).bot.qualification.phone_region is None


@pytest.mark.parametrize(
    ("env", "overrides", "needle"),
    [
        # A trailing newline (`$` alone let it through; values from the environment are stripped).
        (
            {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32},
            {"twilio.senders": [{"inbox": "s", "messaging_service_sid": "MG" + "0" * 32 + "\n"}]},
            "messaging_service_sid",
        ),
    ],
)
def test_an_id_with_a_trailing_newline_is_refused(env: dict[str, str], overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(path=None, env={"HUB_SECRET_KEY": "s", "TWILIO_AUTH_TOKEN": "t", **env}, overrides=overrides)


def test_two_telegram_bots_with_one_token_are_refused(tmp_path: Path) -> None:
    """A second bot without token_env of its own reads TELEGRAM_BOT_TOKEN too."""
    text = "telegram:\n  mode: polling\n  bots: [{name: sales}, {name: support}]\n"
    with pytest.raises(ConfigError, match=re.escape("bots[1] (support): has the same token as bot 'sales'")):
        load_config(write(tmp_path, text), env={"TELEGRAM_BOT_TOKEN": "1:abc"})
    env = {"TELEGRAM_BOT_TOKEN": "1:abc", "SUPPORT_BOT_TOKEN": "2:def"}
    text = "telegram:\n  mode: polling\n  bots: [{name: sales}, {name: support, token_env: SUPPORT_BOT_TOKEN}]\n"
    assert [b.name for b in load_config(write(tmp_path, text), env=env).telegram.bots] == ["sales", "support"]


@pytest.mark.parametrize(
    ("number", "stored"),
    [
        ("89898", "89898"),  # a short code, as Twilio writes it in webhooks
        ("۸۹۸۹۸", "89898"),
        ("123", "123"),
        ("12345678", "12345678"),
        ("Acme", "Acme"),  # an alphanumeric sender ID (send-only)
        ("Acme Shop 1", "Acme Shop 1"),
        ("+1 555 000 1111", "+15550001111"),
        ("0015550001111", "+15550001111"),
    ],
)
def test_a_twilio_sender_can_be_a_short_code_or_alphanumeric_id(number: str, stored: str) -> None:
    cfg = load_config(
        path=None,
        env={"HUB_SECRET_KEY": "s", "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t"},
        overrides={"twilio.senders": [{"inbox": "s", "number": number}]},
    )
    assert (cfg.twilio.senders[0].number, cfg.twilio.senders[0].key) == (stored, stored)


@pytest.mark.parametrize(
    "number",
    [
        "555-1234",  # a local number: its country code is missing, it is not a short code
        "12",
        "123456789",
        "AcmeShopping",  # longer than the 11 characters Twilio allows
        "Acme-Shop",
    ],
)
def test_a_twilio_sender_number_that_is_none_of_those_stops_start_up(number: str) -> None:
    with pytest.raises(ConfigError, match=r"twilio\.senders\.0\.number.*country code.*short code"):
        load_config(
            path=None,
            env={"HUB_SECRET_KEY": "s", "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t"},
            overrides={"twilio.senders": [{"inbox": "s", "number": number}]},
        )
