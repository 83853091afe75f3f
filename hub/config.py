"""Configuration: ``config.yaml`` validated at start-up, environment overrides.

An invalid value stops start-up with a message naming the key. Secrets are read
only from the environment (a secret written into YAML is refused), so the shipped
``config.yaml`` can be committed and shared.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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
    "HUB_BOT_BACKEND": "bot.backend",
    "HUB_RASA_URL": "bot.rasa.url",
    "HUB_LOG_LEVEL": "logging.level",
    "HUB_LOG_FORMAT": "logging.format",
    "HUB_TWILIO_API_BASE_URL": "twilio.api_base_url",
    "HUB_PHONE_DEFAULT_REGION": "phone.default_region",
    "HUB_TELEGRAM_API_BASE_URL": "telegram.api_base_url",
    "HUB_TELEGRAM_MODE": "telegram.mode",
}

SECRET_KEYS = ("secret_key",)


class ConfigError(Exception):
    """Raised when the configuration cannot be used; the message names the key."""


def iana_zone(value: str) -> str:
    """``value`` if it names an IANA time zone, else a ValueError saying so."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Asia/Tehran, Europe/Berlin)") from exc
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _split_url(value: str) -> SplitResult | None:
    """``value`` split, if it has a scheme and a host (and a valid port)."""
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return parts


def _ip_network(value: str) -> str:
    # Checked per request against the peer; an entry that is no network
    # would silently never match.
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or network, such as 10.0.0.5 or 10.0.0.0/8") from None
    return value


def _origin(value: str) -> str:
    # Browsers send an Origin of scheme://host[:port] and nothing more: an
    # entry of another shape would never match, and refuse every visitor.
    if value == "*":
        return value
    parts = _split_url(value)
    if parts is None or parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(
            f'{value!r} is not "*" or an origin such as https://shop.example.com (scheme://host[:port], no path)'
        )
    return value


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Clients whose X-Forwarded-* headers are believed (reverse proxies).
    trusted_proxies: list[Annotated[str, AfterValidator(_ip_network)]] = Field(default_factory=list)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        # Webhook, callback and widget URLs are this plus a path.
        parts = _split_url(value)
        if parts is None or parts.scheme not in ("http", "https") or parts.query or parts.fragment:
            raise ValueError(f"{value!r} is not an http(s) URL with a host, such as https://hub.example.com")
        return value


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
    # How long a reply whose sends keep failing for a reason that may pass
    # (a provider or SMTP outage, a timeout) is retried, counted from when it
    # was written; then it ends "failed" for an agent to see. Provider
    # incidents and mail relay maintenance often last an hour or more, and an
    # outage must not fail every reply of it for good: six hours covers them
    # and still leaves the answer useful the same day.
    send_retry_seconds: float = Field(default=6 * 3600.0, gt=0)
    # A bound on tries whatever the time, and on claims whose sender never
    # recorded an outcome (it died mid-send). Well above the tries the default
    # backoff fits into send_retry_seconds (about 80: doubling from 1 s, then
    # every 300 s), so that the time ends retries first. A provider's rate
    # limit answer saying when to come back (Telegram's flood control, with
    # retry_after) is not a try.
    send_max_attempts: int = Field(default=120, ge=1)
    send_backoff_seconds: float = Field(default=1.0, gt=0)
    send_backoff_max_seconds: float = Field(default=300.0, gt=0)
    # A message stuck in "sending" this long (its sender died) is tried again. A
    # live sender renews it every third of this while the send runs.
    send_lease_seconds: float = Field(default=60.0, gt=0)
    # How long a sender keeps trying to save the outcome of a send the provider
    # already answered (database unreachable), holding its lease, before it
    # gives up and the message may be sent a second time.
    send_record_retry_seconds: float = Field(default=600.0, gt=0)
    sweep_interval_seconds: float = Field(default=2.0, gt=0)
    concurrency: int = Field(default=8, ge=1)


class WebchatLimits(_Section):
    """Abuse limits on the visitor websocket. Per client address (an office or a
    mobile carrier puts many visitors behind one): socket opens a minute, new
    visitors (tokens issued) and file uploads an hour. Per visitor (all their
    tabs): frames a minute, file uploads an hour."""

    # Every page view of a returning visitor opens a socket: 600 a minute is an
    # office of hundreds browsing the site at once.
    connections_per_minute: int = Field(default=600, ge=1)
    # A token is issued when someone opens the chat for the first time.
    new_visitors_per_hour: int = Field(default=300, ge=1)
    # Messages are typed by hand; a reconnect resends the unsent ones at once.
    messages_per_minute: int = Field(default=60, ge=1)
    identify_per_minute: int = Field(default=20, ge=1)
    # The widget sends one every 3 s at most while the visitor types.
    typing_per_minute: int = Field(default=60, ge=1)
    # Files sent from the widget (POST /chat/attachments): a screenshot or two
    # a conversation; these stop a script filling the attachment store.
    uploads_per_hour: int = Field(default=30, ge=1)
    address_uploads_per_hour: int = Field(default=300, ge=1)


class WebchatConfig(_Section):
    inbox: str = "webchat"
    inbox_name: str = "Website"
    history_limit: int = Field(default=50, ge=1, le=500)
    # At most what the channel carries the other way (channels.webchat.MAX_MESSAGE_CHARS):
    # the visitor's websocket takes frames sized for it.
    max_message_chars: int = Field(default=5000, ge=1, le=20_000)
    # Origins allowed to open the visitor websocket; "*" allows any site.
    allowed_origins: list[Annotated[str, AfterValidator(_origin)]] = Field(default_factory=lambda: ["*"])
    limits: WebchatLimits = Field(default_factory=WebchatLimits)


PrechatField = Literal["name", "email", "phone"]


def _default_prechat_fields() -> list[PrechatField]:
    return ["name", "email"]


def _default_prechat_required() -> list[PrechatField]:
    return ["name"]


class PrechatConfig(_Section):
    # Asked before the first message when enabled; answers go on the contact.
    enabled: bool = False
    fields: list[PrechatField] = Field(default_factory=_default_prechat_fields, min_length=1)
    required: list[PrechatField] = Field(default_factory=_default_prechat_required)

    @model_validator(mode="after")
    def _required_are_asked(self) -> PrechatConfig:
        missing = [f for f in self.required if f not in self.fields]
        if missing:
            raise ValueError(f"required field(s) {', '.join(missing)} must also be listed in fields")
        return self


class WidgetConfig(_Section):
    """What the web chat widget shows; sent to it in the session frame."""

    title: str = Field(default="Chat with us", min_length=1, max_length=80)
    title_fa: str = Field(default="گفتگو با ما", min_length=1, max_length=80)
    greeting: str | None = Field(default="Hi! Ask us anything.", max_length=500)
    greeting_fa: str | None = Field(default="سلام! هر سؤالی دارید بپرسید.", max_length=500)
    color: str = Field(default="#2563eb", pattern=r"^#[0-9a-fA-F]{6}$")
    prechat: PrechatConfig = Field(default_factory=PrechatConfig)
    # Nobody online (and no bot): take a message with an email or phone number.
    offline_form: bool = True
    # Phone numbers typed without a country code are read in this region (ISO 3166).
    phone_region: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")


class AttachmentsConfig(_Section):
    # Larger files are refused (a webhook answers 413, a poller records why).
    max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # None: data_dir/attachments.
    dir: Path | None = None
    # An uploaded file (POST /api/v1/attachments, POST /chat/attachments) that
    # no message uses this long after it came is removed: uploading is open to
    # any web chat visitor, so unused files would otherwise fill the disk.
    unused_grace_seconds: float = Field(default=24 * 3600.0, gt=0)
    # How often worker processes look for such files.
    sweep_interval_seconds: float = Field(default=600.0, gt=0)


TELEGRAM_TOKEN_ENV = "TELEGRAM_BOT_TOKEN"  # noqa: S105 - the variable's name
TELEGRAM_SECRET_ENV = "TELEGRAM_WEBHOOK_SECRET"  # noqa: S105 - the variable's name
# Bot API rule for setWebhook's secret_token.
_TELEGRAM_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}\Z")
_ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"


class TelegramBotConfig(_Section):
    """One Telegram bot. Its token and webhook secret are read from the named
    environment variables, never from the file."""

    # In the webhook URL (/webhooks/telegram/<name>) and the inbox key.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    token_env: str = Field(default=TELEGRAM_TOKEN_ENV, pattern=_ENV_NAME)
    webhook_secret_env: str = Field(default=TELEGRAM_SECRET_ENV, pattern=_ENV_NAME)
    # None: telegram.mode.
    mode: Literal["webhook", "polling"] | None = None
    # None: "telegram:<name>".
    inbox: str | None = Field(default=None, min_length=1, max_length=200)
    inbox_name: str = "Telegram"
    # Filled from token_env / webhook_secret_env by load_config.
    token: str = Field(default="", repr=False)
    webhook_secret: str = Field(default="", repr=False)

    @property
    def inbox_key(self) -> str:
        return self.inbox or f"telegram:{self.name}"


class TelegramConfig(_Section):
    # The Bot API server; a self-hosted telegram-bot-api server works too.
    api_base_url: str = "https://api.telegram.org"
    # webhook: Telegram posts to server.public_url + /webhooks/telegram/<bot>;
    # polling: worker processes ask getUpdates (no public URL needed).
    mode: Literal["webhook", "polling"] = "webhook"
    bots: list[TelegramBotConfig] = Field(default_factory=list)
    # Long-poll wait of one getUpdates call.
    poll_timeout_seconds: int = Field(default=25, ge=0, le=50)
    # A poller that stops renewing its claim on a bot for this long is presumed dead.
    poll_lease_seconds: float = Field(default=60.0, ge=5)
    request_timeout_seconds: float = Field(default=20.0, gt=0)

    @field_validator("api_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL such as https://api.telegram.org")
        return value.rstrip("/")

    @field_validator("bots")
    @classmethod
    def _own_inboxes(cls, bots: list[TelegramBotConfig]) -> list[TelegramBotConfig]:
        # Replies go out through the bot of the ticket's inbox: with two bots
        # in one inbox, one would answer the other's customers, who never
        # wrote to it, and Telegram refuses that (403, read as a block).
        first: dict[str, str] = {}
        for bot in bots:
            other = first.setdefault(bot.inbox_key, bot.name)
            if other != bot.name:  # the same name twice is _bots_complete's to say
                raise ValueError(
                    f"two bots use the inbox {bot.inbox_key!r} ({other!r} and {bot.name!r}); "
                    "each bot needs its own inbox"
                )
        return bots

    @model_validator(mode="after")
    def _bots_complete(self) -> TelegramConfig:
        if self.poll_lease_seconds <= self.poll_timeout_seconds + self.request_timeout_seconds:
            raise ValueError(
                "poll_lease_seconds must be longer than poll_timeout_seconds + request_timeout_seconds, "
                "or another process takes over a bot in the middle of a long poll"
            )
        names: set[str] = set()
        tokens: dict[str, str] = {}
        for i, bot in enumerate(self.bots):
            if bot.name in names:
                raise ValueError(f"bots[{i}]: two bots are named {bot.name!r}")
            names.add(bot.name)
            if not bot.token:
                raise ValueError(f"bots[{i}] ({bot.name}): set the bot's BotFather token in ${bot.token_env}")
            if bot.token in tokens:
                # One bot under two names: they would take each other's webhook
                # or updates, and its customers would land in either inbox.
                raise ValueError(
                    f"bots[{i}] ({bot.name}): has the same token as bot {tokens[bot.token]!r}; give each bot "
                    f"its own token_env (now ${bot.token_env})"
                )
            tokens[bot.token] = bot.name
            if self.mode_of(bot) == "webhook" and not _TELEGRAM_SECRET.match(bot.webhook_secret):
                raise ValueError(
                    f"bots[{i}] ({bot.name}): webhook mode needs ${bot.webhook_secret_env}, 1-256 characters "
                    "of A-Z, a-z, 0-9, _ and - (or use polling mode)"
                )
        return self

    def mode_of(self, bot: TelegramBotConfig) -> Literal["webhook", "polling"]:
        return bot.mode or self.mode


class QualificationSlot(_Section):
    """One thing the qualification dialog asks for; the answer is stored as the
    contact attribute of the same name."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    # text: anything; email / phone: validated; number: digits in any script, "5k", "2 million".
    kind: Literal["text", "email", "phone", "number", "choice"] = "text"
    prompt: dict[str, str] = Field(min_length=1)
    # choice: the accepted answers; "this month|این ماه" accepts either and stores the first.
    choices: list[str] = Field(default_factory=list)
    # Words a customer uses for this slot in a correction ("actually my email is ...").
    aliases: list[str] = Field(default_factory=list)
    # A customer may always say "skip"; a required slot is asked once more first.
    required: bool = False

    @field_validator("name")
    @classmethod
    def _not_the_hubs_own(cls, value: str) -> str:
        # A customer's answer stored under these would make them a VIP or
        # decide their SMS consent (set only by a CSV column or the API, with
        # when and how: hub.campaigns.audience).
        if value == "vip" or value.startswith("sms_consent"):
            raise ValueError(f"{value!r} is a contact attribute the hub sets itself; name the slot otherwise")
        return value

    @field_validator("prompt")
    @classmethod
    def _has_english(cls, value: dict[str, str]) -> dict[str, str]:
        if "en" not in value:
            raise ValueError("needs at least an English prompt (en)")
        empty = [lang for lang, text in value.items() if not text.strip()]
        if empty:
            raise ValueError(f"the prompt in {', '.join(empty)} is empty")
        return value

    @model_validator(mode="after")
    def _choices_fit_kind(self) -> QualificationSlot:
        if self.kind == "choice" and not [c for c in self.choices if c.split("|")[0].strip()]:
            raise ValueError(f'slot {self.name!r} is a choice: list its choices ("this month|این ماه", ...)')
        if self.kind != "choice" and self.choices:
            raise ValueError(f"slot {self.name!r} has choices but kind {self.kind!r}; set kind: choice")
        return self


class ScoreRule(_Section):
    """Points added to the lead score when a collected answer matches."""

    slot: str
    op: Literal["present", "eq", "in", "gte", "lte", "contains"] = "present"
    value: Any = None
    points: int

    @model_validator(mode="after")
    def _value_fits_op(self) -> ScoreRule:
        where = f"rule for slot {self.slot!r} (op {self.op})"
        if self.op in ("gte", "lte") and (isinstance(self.value, bool) or not isinstance(self.value, int | float)):
            raise ValueError(f"{where}: value must be a number")
        if self.op == "in" and not (isinstance(self.value, list) and self.value):
            raise ValueError(f"{where}: value must be a non-empty list")
        if self.op in ("eq", "contains") and (self.value is None or isinstance(self.value, list | dict)):
            raise ValueError(f"{where}: value must be one text or number")
        return self


def _default_slots() -> list[QualificationSlot]:
    return [
        QualificationSlot(
            name="name",
            prompt={"en": "May I have your name?", "fa": "لطفاً نام خود را بفرمایید."},
            aliases=["نام", "اسم"],
            required=True,
        ),
        QualificationSlot(
            name="email",
            kind="email",
            prompt={"en": "What is your email address?", "fa": "نشانی ایمیل شما چیست؟"},
            aliases=["e-mail", "mail", "ایمیل"],
            required=True,
        ),
        QualificationSlot(
            name="phone",
            kind="phone",
            prompt={
                "en": "And a phone number we can reach you on?",
                "fa": "شماره تلفنی که بتوانیم با شما تماس بگیریم؟",
            },
            aliases=["phone number", "mobile", "cell", "تلفن", "شماره", "موبایل"],
        ),
        QualificationSlot(
            name="company",
            prompt={"en": "Which company are you with?", "fa": "از طرف کدام شرکت هستید؟"},
            aliases=["شرکت"],
        ),
        QualificationSlot(
            name="team_size",
            kind="number",
            prompt={"en": "How many people would use it?", "fa": "چند نفر از آن استفاده خواهند کرد؟"},
            aliases=["team size", "team", "تعداد"],
        ),
        QualificationSlot(
            name="budget",
            kind="number",
            prompt={"en": "What monthly budget do you have in mind (USD)?", "fa": "بودجه ماهانه شما چقدر است (دلار)؟"},
            aliases=["بودجه"],
        ),
        QualificationSlot(
            name="timeline",
            kind="choice",
            choices=["this month|این ماه", "this quarter|سه ماه آینده|این فصل", "later|بعدا|بعداً"],
            prompt={"en": "When would you like to start?", "fa": "چه زمانی می‌خواهید شروع کنید؟"},
        ),
    ]


def _default_rules() -> list[ScoreRule]:
    return [
        ScoreRule(slot="email", points=10),
        ScoreRule(slot="phone", points=10),
        ScoreRule(slot="company", points=10),
        ScoreRule(slot="team_size", op="gte", value=10, points=15),
        ScoreRule(slot="budget", op="gte", value=500, points=25),
        ScoreRule(slot="timeline", op="in", value=["this month", "this quarter"], points=20),
    ]


class QualificationConfig(_Section):
    enabled: bool = True
    # Knowledge-base tags and phrases that mean "I might buy".
    trigger_tags: list[str] = Field(default_factory=lambda: ["pricing", "sales", "demo"])
    trigger_phrases: list[str] = Field(
        default_factory=lambda: ["pricing", "price", "quote", "buy", "purchase", "demo", "قیمت", "خرید", "دمو"]
    )
    # A reply to a campaign (its message carries extras.campaign_id) starts the dialog too.
    on_campaign_reply: bool = True
    # Region for phone numbers written without a country code (ISO code such as IR;
    # null: phone.default_region, and without that a +code is required).
    phone_region: str | None = None
    slots: list[QualificationSlot] = Field(default_factory=_default_slots)
    rules: list[ScoreRule] = Field(default_factory=_default_rules)
    # Lead score at which the lifecycle stage moves to marketing- / sales-qualified.
    mql_score: int = 30
    sql_score: int = 60
    # Sales-qualified leads are handed to this team at once.
    sales_team: str = Field(default="Sales", min_length=1, max_length=200)

    @field_validator("slots")
    @classmethod
    def _unique_slots(cls, value: list[QualificationSlot]) -> list[QualificationSlot]:
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError("slot names must be unique")
        return value

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        return _phone_region(value)

    @field_validator("trigger_tags")
    @classmethod
    def _lower_tags(cls, value: list[str]) -> list[str]:
        return [t.strip().lower() for t in value if t.strip()]

    @model_validator(mode="after")
    def _consistent(self) -> QualificationConfig:
        names = {s.name for s in self.slots}
        for i, rule in enumerate(self.rules):
            if rule.slot not in names:
                raise ValueError(f"rules[{i}]: slot {rule.slot!r} is not one of the slots ({', '.join(sorted(names))})")
        if self.mql_score > self.sql_score:
            raise ValueError(f"mql_score ({self.mql_score}) must not be above sql_score ({self.sql_score})")
        return self


class RasaConfig(_Section):
    # backend "rasa": the Rasa server whose REST channel answers customers.
    url: str | None = None
    timeout_seconds: float = Field(default=10.0, gt=0)
    # `crm-hub rasa-actions`: where the rasa-sdk action server listens.
    actions_host: str = Field(default="127.0.0.1", min_length=1)
    actions_port: int = Field(default=5055, ge=0, le=65535)
    # The shared secret of the assistant's endpoints.yml (action_endpoint:
    # token); filled from $HUB_RASA_ACTIONS_TOKEN by load_config only.
    actions_token: str = Field(default="", repr=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be the Rasa server's http(s) URL, such as http://localhost:5005")
        return value.rstrip("/")


RASA_TOKEN_ENV = "HUB_RASA_ACTIONS_TOKEN"  # noqa: S105 - the variable's name


def _rasa_secrets(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """The action server's token from the environment; refused in the file."""
    bot = raw.get("bot")
    rasa = bot.get("rasa") if isinstance(bot, dict) else None
    if isinstance(rasa, dict) and "actions_token" in rasa:
        raise ConfigError(
            f"bot.rasa.actions_token: secrets must not be written in the config file; set {RASA_TOKEN_ENV} "
            "in the environment"
        )
    if token := env.get(RASA_TOKEN_ENV, "").strip():
        _set_dotted(raw, "bot.rasa.actions_token", token)


class BotConfig(_Section):
    enabled: bool = False
    # static: n-grams plus the shipped static word vectors (English); lexical: n-grams alone;
    # embedding: sentence-transformers (pip install 'crm-hub[embeddings]');
    # rasa: forward to a Rasa assistant (bot.rasa.url).
    backend: Literal["static", "lexical", "embedding", "rasa"] = "static"
    # Calibrated confidence: answer at or above `answer_threshold`, offer the top
    # `choices` entries as buttons at or above `clarify_threshold`, hand off below.
    # 0.5: as likely right as wrong (see the README for how these hold on any KB size).
    answer_threshold: float = Field(default=0.5, ge=0, le=1)
    clarify_threshold: float = Field(default=0.2, ge=0, le=1)
    choices: int = Field(default=3, ge=1, le=10)
    # Turns in a row the bot may fail to understand before it hands off.
    max_misses: int = Field(default=2, ge=1)
    # How often a process checks whether the knowledge base changed (it is
    # rebuilt in the background; the admin API also triggers it at once).
    kb_poll_seconds: float = Field(default=5.0, gt=0)
    ask_feedback: bool = True
    # Contacts with this tag (or attribute vip: true) go to a person at once.
    vip_tag: str = "vip"
    # Team for handoffs that name none (null: routing decides).
    handoff_team: str | None = None
    # Ways of asking for a person that hand off wherever they are in a message.
    # Only request phrasings: a bare "person" or «پشتیبانی» ("support", as in
    # "do you support PDF invoices?") is an everyday word in ordinary questions.
    handoff_phrases: list[str] = Field(
        default_factory=lambda: [
            "talk to a person", "talk to a human", "talk to an agent", "talk to someone", "talk to somebody",
            "talk to a representative", "talk with a person", "talk with a human", "talk with someone",
            "speak to a person", "speak to a human", "speak to an agent", "speak to someone", "speak to somebody",
            "speak to a representative", "speak with a person", "speak with a human", "speak with an agent",
            "speak with someone", "chat with a person", "chat with a human", "chat with an agent",
            "connect me to an agent", "connect me to a person", "connect me to someone", "real person",
            "real human", "live agent", "live person", "human agent", "agent please", "human please",
            "sales person", "salesperson", "sales rep", "sales representative", "talk to sales",
            "speak to sales", "talk with sales", "speak with sales",
            "اپراتور", "کارشناس", "با پشتیبانی صحبت کنم", "با پشتیبان صحبت کنم", "با پشتیبانی حرف بزنم",
            "با پشتیبان حرف بزنم", "به پشتیبانی وصل", "با یک انسان صحبت کنم", "با انسان صحبت کنم",
            "با یک نفر صحبت کنم", "آدم واقعی", "با فروش صحبت کنم", "با واحد فروش صحبت کنم",
        ]
    )  # fmt: skip
    # Words for a person that hand off when they are the whole message, or all
    # of it but a few request words: "agent", "Human please", "I want a human",
    # «پشتیبان», «لطفا به پشتیبانی وصل کنید»; not "is the price per person?".
    handoff_words: list[str] = Field(
        default_factory=lambda: [
            "agent", "human", "person", "someone", "operator", "representative",
            "اپراتور", "کارشناس", "پشتیبان", "پشتیبانی", "انسان", "آدم",
        ]
    )  # fmt: skip
    frustration_phrases: list[str] = Field(
        default_factory=lambda: [
            "useless", "ridiculous", "terrible", "not helpful", "stupid bot", "waste of time", "wtf", "angry",
            "مسخره", "افتضاح", "بی فایده", "به درد نمی خوره", "خسته شدم", "عصبانی",
        ]
    )  # fmt: skip
    qualification: QualificationConfig = Field(default_factory=QualificationConfig)
    rasa: RasaConfig = Field(default_factory=RasaConfig)

    @field_validator("clarify_threshold")
    @classmethod
    def _below_answer(cls, value: float, info: Any) -> float:
        answer = info.data.get("answer_threshold")
        if answer is not None and value > answer:
            raise ValueError("must not be above answer_threshold")
        return value

    @field_validator("handoff_phrases", "handoff_words", "frustration_phrases")
    @classmethod
    def _phrases(cls, value: list[str]) -> list[str]:
        empty = [i for i, p in enumerate(value) if not p.strip()]
        if empty:
            raise ValueError(f"phrase {empty[0]} is empty")
        return value

    @model_validator(mode="after")
    def _backend_configured(self) -> BotConfig:
        if self.backend == "rasa" and not self.rasa.url:
            raise ValueError(
                "backend is 'rasa' but bot.rasa.url is not set: give the Rasa server's URL "
                "(e.g. http://localhost:5005) in bot.rasa.url or HUB_RASA_URL"
            )
        return self


class AuthConfig(_Section):
    token_ttl_hours: float = Field(default=24 * 30, gt=0)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class PhoneConfig(_Section):
    # ISO 3166 region ("IR", "US") in which a number typed without a country code is
    # read (customers' and agents' numbers, imports). None: numbers need a "+" or "00".
    default_region: str | None = None

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        return _phone_region(value)


def _phone_region(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    import phonenumbers

    region = value.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{value!r} is not an ISO 3166 region code that phonenumbers knows (e.g. IR, US, DE)")
    return region


_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _international_number(value: str | None) -> str | None:
    """A configured number as E.164; Persian digits and spaces are fine, the
    country code is required (config is not read in any one region)."""
    if value is None or value == "":
        return None
    from hub.text import InvalidPhoneNumber, parse_phone

    try:
        return parse_phone(str(value))
    except InvalidPhoneNumber as exc:
        raise ValueError(f"{exc}; write it with its country code, e.g. +15551234567") from exc


#: A short code, as Twilio writes it in webhooks (an incoming SMS's To, a status
#: callback's From): the digits alone, no country code, so it is kept as written.
_SHORT_CODE = re.compile(r"[0-9]{3,8}")
#: An alphanumeric sender ID: Twilio takes up to 11 ASCII letters, digits and
#: spaces with at least one letter. Customers cannot answer one, so it only sends.
_ALPHANUMERIC_ID = re.compile(r"(?=[0-9 ]*[A-Za-z])[A-Za-z0-9][A-Za-z0-9 ]{0,10}")


def _sender_number(value: str | None) -> str | None:
    """A sender's number: a phone number with its country code (as E.164), a
    short code or an alphanumeric sender ID. Only bare digits make a short code,
    so a local number written with spaces or dashes is still refused for its
    missing country code rather than taken for one."""
    if value is None or value == "":
        return None
    from hub.text import to_ascii_digits

    text = to_ascii_digits(str(value)).strip()
    if _SHORT_CODE.fullmatch(text) or _ALPHANUMERIC_ID.fullmatch(text):
        return text
    try:
        return _international_number(text)
    except ValueError as exc:
        raise ValueError(
            f"{exc}; or a short code (3 to 8 digits) or an alphanumeric sender ID "
            "(up to 11 letters, digits and spaces, at least one letter)"
        ) from exc


class TwilioSenderConfig(_Section):
    """One SMS number or Messaging Service and the inbox its messages land in."""

    inbox: str = Field(min_length=1, max_length=200)
    # Shown to agents; default: the number or service.
    name: str | None = Field(default=None, max_length=200)
    # A phone number with its country code, a short code ("89898") or an
    # alphanumeric sender ID ("Acme", send-only).
    number: str | None = None
    messaging_service_sid: str | None = None
    # New tickets of this inbox go to this team (created if missing).
    team: str | None = Field(default=None, max_length=200)
    bot: bool = False
    # What Twilio allows this sender (1 for a long code; more for 10DLC, toll-free,
    # short codes); bulk senders throttle to it. At least 0.01 (36 an hour), the
    # slowest a campaign can be paced (hub.campaigns.schedule.MIN_RATE_PER_SECOND).
    messages_per_second: float = Field(default=1.0, ge=0.01)
    # Names of environment variables with this sender's own account credentials
    # (a subaccount); unset: TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN.
    account_sid_env: str | None = None
    auth_token_env: str | None = None
    # Filled from the environment only (see load_config).
    account_sid: str = Field(default="", repr=False)
    auth_token: str = Field(default="", repr=False)

    @field_validator("number")
    @classmethod
    def _number(cls, value: str | None) -> str | None:
        return _sender_number(value)

    @field_validator("messaging_service_sid")
    @classmethod
    def _service_sid(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not _SERVICE_SID.fullmatch(value):
            raise ValueError("must be a Messaging Service SID: MG followed by 32 hexadecimal characters")
        return value

    @model_validator(mode="after")
    def _has_an_address(self) -> TwilioSenderConfig:
        if self.number is None and self.messaging_service_sid is None:
            raise ValueError("needs a number or a messaging_service_sid")
        return self

    @property
    def key(self) -> str:
        """Who the customer sees as the sender: opt-outs are kept per key."""
        return self.messaging_service_sid or self.number or ""

    @property
    def display_name(self) -> str:
        return self.name or self.number or self.messaging_service_sid or self.inbox


class VoicePrompt(_Section):
    """Something the IVR says, per language. A language with an ``audio`` URL is
    played (<Play>), otherwise its ``text`` is spoken (<Say>): Twilio has no
    Persian voice, so Persian prompts want a recording."""

    text: dict[str, str] = Field(default_factory=dict)
    audio: dict[str, str] = Field(default_factory=dict)

    @field_validator("audio")
    @classmethod
    def _urls(cls, value: dict[str, str]) -> dict[str, str]:
        # Twilio fetches it while the caller listens: a file name would be
        # read relative to the webhook's URL and fail only during a call.
        for lang, url in value.items():
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"audio.{lang}: {url[:80]!r} is not an http(s) URL Twilio can fetch")
        return value


class VoiceMenuItem(_Section):
    digit: str = Field(pattern=r"^[0-9*#]$")
    team: str = Field(min_length=1, max_length=200)
    prompt: VoicePrompt = Field(default_factory=VoicePrompt)


class VoiceHoursConfig(_Section):
    """A simple weekly calendar for the phone line (routing's per-team calendars
    replace it when they are configured)."""

    timezone: str = "UTC"
    days: list[str] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"])
    open: str = Field(default="09:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    close: str = Field(default="17:00", pattern=r"^([01][0-9]|2[0-4]):[0-5][0-9]$")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return iana_zone(value)

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        days = [d.strip().lower()[:3] for d in value]
        for d in days:
            if d not in _WEEKDAYS:
                raise ValueError(f"{d!r} is not a weekday; use mon, tue, wed, thu, fri, sat, sun")
        return days

    @model_validator(mode="after")
    def _order(self) -> VoiceHoursConfig:
        if self.close <= self.open:
            raise ValueError("close must be later than open")
        return self


def _prompt(en: str, fa: str) -> VoicePrompt:
    return VoicePrompt(text={"en": en, "fa": fa})


class TwilioVoiceConfig(_Section):
    enabled: bool = True
    inbox: str = Field(default="phone", min_length=1, max_length=200)
    inbox_name: str = "Phone"
    # The number click-to-call rings from; default: the first SMS sender's number.
    caller_id: str | None = None
    # Prompts are spoken in this order, each in every language.
    languages: list[str] = Field(default_factory=lambda: ["en", "fa"])
    # <Say language=...> per language; a language without one is spoken in Twilio's default.
    say_language: dict[str, str] = Field(default_factory=lambda: {"en": "en-US"})
    greeting: VoicePrompt = Field(default_factory=lambda: _prompt("Thank you for calling.", "از تماس شما سپاسگزاریم."))
    menu: list[VoiceMenuItem] = Field(
        default_factory=lambda: [
            VoiceMenuItem(digit="1", team="Sales", prompt=_prompt("For sales, press 1.", "برای فروش، ۱ را بزنید.")),
            VoiceMenuItem(
                digit="2", team="Support", prompt=_prompt("For support, press 2.", "برای پشتیبانی، ۲ را بزنید.")
            ),
        ]
    )
    # Where a caller who presses nothing (or a key not on the menu) goes.
    default_team: str | None = "Support"
    connecting: VoicePrompt = Field(
        default_factory=lambda: _prompt("Connecting you to an agent.", "در حال اتصال به کارشناس.")
    )
    closed: VoicePrompt = Field(
        default_factory=lambda: _prompt(
            "We are closed now. Please leave a message after the tone.",
            "اکنون خارج از ساعت کاری هستیم. لطفاً پس از بوق پیام بگذارید.",
        )
    )
    no_agent: VoicePrompt = Field(
        default_factory=lambda: _prompt(
            "All our agents are busy. Please leave a message after the tone.",
            "همه کارشناسان مشغول هستند. لطفاً پس از بوق پیام بگذارید.",
        )
    )
    goodbye: VoicePrompt = Field(default_factory=lambda: _prompt("Thank you. Goodbye.", "سپاسگزاریم. خدانگهدار."))
    dial_timeout_seconds: int = Field(default=20, ge=5, le=600)
    max_voicemail_seconds: int = Field(default=120, ge=5, le=3600)
    # null: always open (or as routing's calendars say, once configured).
    hours: VoiceHoursConfig | None = None

    @field_validator("caller_id")
    @classmethod
    def _caller_id(cls, value: str | None) -> str | None:
        return _international_number(value)

    @model_validator(mode="after")
    def _unique_digits(self) -> TwilioVoiceConfig:
        digits = [m.digit for m in self.menu]
        if len(digits) != len(set(digits)):
            raise ValueError("menu: each digit may appear once")
        return self


class TwilioOptOutConfig(_Section):
    # Answer to HELP / INFO, per language (the customer's language is detected
    # from their message; English when unsure).
    help_reply: dict[str, str] = Field(
        default_factory=lambda: {
            "en": "Reply STOP to unsubscribe, START to subscribe again. Msg&data rates may apply.",
            "fa": "برای لغو اشتراک «لغو» و برای عضویت دوباره START را بفرستید.",
        }
    )
    # Sent after START / YES / UNSTOP; empty: nothing (Twilio confirms on its own).
    start_reply: dict[str, str] = Field(default_factory=dict)
    # Sent once after an opt-out keyword Twilio does not know («لغو», «توقف»):
    # Twilio confirms its own (STOP, ...), and nobody else would confirm these.
    stop_reply: dict[str, str] = Field(
        default_factory=lambda: {
            "en": "You are unsubscribed and will get no more messages from us. Reply START to subscribe again.",
            "fa": "اشتراک شما لغو شد و دیگر پیامکی از ما نمی‌گیرید. برای عضویت دوباره START را بفرستید.",
        }
    )


class TwilioSharedKeyConfig(_Section):
    """A SharedKey Twilio signs webhooks with instead of the account's auth
    token: such a webhook names it in X-Twilio-Webhooks-Signature-Settings
    (``key=<id>,algorithm=HMAC_SHA256``) and is checked with its secret."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")
    # The environment variable holding the key's secret (never the secret itself).
    secret_env: str = Field(pattern=_ENV_NAME)
    # The variable holding the SID of the account whose webhooks the key signs;
    # unset: TWILIO_ACCOUNT_SID.
    account_sid_env: str | None = Field(default=None, pattern=_ENV_NAME)
    # Filled from the environment only (see load_config).
    secret: str = Field(default="", repr=False)
    account_sid: str = Field(default="", repr=False)


class TwilioConfig(_Section):
    # Twilio's REST API; point it at a Twilio-compatible provider or a test fake.
    api_base_url: str = "https://api.twilio.com"
    request_timeout_seconds: float = Field(default=15.0, gt=0)
    # Copy MMS media and voicemail recordings into the attachment store (Twilio's
    # URLs need the account's credentials and expire when deleted there).
    fetch_media: bool = True
    senders: list[TwilioSenderConfig] = Field(default_factory=list)
    opt_out: TwilioOptOutConfig = Field(default_factory=TwilioOptOutConfig)
    voice: TwilioVoiceConfig = Field(default_factory=TwilioVoiceConfig)
    # SharedKeys webhooks may be signed with, each with its secret's variable.
    shared_keys: list[TwilioSharedKeyConfig] = Field(default_factory=list)
    # Filled from TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN only.
    account_sid: str = Field(default="", repr=False)
    auth_token: str = Field(default="", repr=False)

    @field_validator("api_base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL such as https://api.twilio.com")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> TwilioConfig:
        if self.account_sid and not _ACCOUNT_SID.fullmatch(self.account_sid):
            raise ValueError("TWILIO_ACCOUNT_SID must be AC followed by 32 hexadecimal characters")
        for what, values in (
            ("inbox", [s.inbox for s in self.senders]),
            ("number", [s.number for s in self.senders if s.number]),
            ("messaging_service_sid", [s.messaging_service_sid for s in self.senders if s.messaging_service_sid]),
        ):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"senders: {what} {', '.join(str(d) for d in dupes)} is configured twice")
        if self.voice.inbox in {s.inbox for s in self.senders}:
            raise ValueError(f"voice.inbox {self.voice.inbox!r} is also an SMS sender's inbox; give it its own key")
        for i, s in enumerate(self.senders):
            sid, token = self.credentials(s)
            if not (sid and token):
                raise ValueError(
                    f"senders.{i}: no Twilio credentials; set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN "
                    "(or this sender's account_sid_env / auth_token_env)"
                )
            if not _ACCOUNT_SID.fullmatch(sid):
                raise ValueError(f"senders.{i}: the account SID must be AC followed by 32 hexadecimal characters")
        accounts = {self.credentials(s)[0] for s in self.senders} | ({self.account_sid} if self.account_sid else set())
        ids = [k.id for k in self.shared_keys]
        dupes = sorted({k for k in ids if ids.count(k) > 1})
        if dupes:
            raise ValueError(f"shared_keys: id {', '.join(dupes)} is configured twice")
        for i, key in enumerate(self.shared_keys):
            if not key.secret:
                raise ValueError(f"shared_keys.{i} ({key.id}): no secret; set the variable named in secret_env")
            if not key.account_sid:
                raise ValueError(
                    f"shared_keys.{i} ({key.id}): no account; set TWILIO_ACCOUNT_SID or name the variable "
                    "holding the account's SID in account_sid_env"
                )
            if key.account_sid not in accounts:
                raise ValueError(
                    f"shared_keys.{i} ({key.id}): account {key.account_sid[:40]} is neither TWILIO_ACCOUNT_SID "
                    "nor a sender's account"
                )
        return self

    def shared_key(self, key_id: str, account_sid: str) -> str | None:
        """The secret of SharedKey ``key_id`` of account ``account_sid``; None
        when no such key is configured for that account."""
        for key in self.shared_keys:
            if key.id == key_id and key.account_sid == account_sid:
                return key.secret
        return None

    def credentials(self, sender: TwilioSenderConfig | None = None) -> tuple[str, str]:
        """(account SID, auth token) of ``sender``, or of the main account."""
        if sender is not None and sender.account_sid and sender.auth_token:
            return sender.account_sid, sender.auth_token
        return self.account_sid, self.auth_token

    @property
    def configured(self) -> bool:
        return bool(self.account_sid and self.auth_token) or bool(self.senders)


class ImapConfig(_Section):
    host: str = Field(min_length=1)
    # None: 993 with tls, 143 otherwise.
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    user: str = Field(min_length=1)
    # The name of the environment variable that holds the password.
    password_env: str = Field(min_length=1)
    folder: str = "INBOX"
    validate_certs: bool = True
    ca_file: Path | None = None
    # IDLE when the server offers it; otherwise (or with idle: false) polling.
    idle: bool = True
    poll_interval_seconds: float = Field(default=60.0, gt=0)
    timeout_seconds: float = Field(default=60.0, gt=0)

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)


class SmtpConfig(_Section):
    host: str = Field(min_length=1)
    # None: 465 with tls, 587 with starttls, 25 otherwise.
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    user: str | None = None
    password_env: str | None = None
    validate_certs: bool = True
    ca_file: Path | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)

    @property
    def effective_port(self) -> int:
        return self.port or {"tls": 465, "starttls": 587}.get(self.security, 25)


class MailboxConfig(_Section):
    """One support mailbox: read over IMAP, answered over SMTP."""

    address: str = Field(min_length=3, max_length=320)
    # The inbox key; None: "email:<address>".
    inbox: str | None = Field(default=None, min_length=1, max_length=200)
    # The inbox's name in the agents' UI; None: the display name or the address.
    name: str | None = None
    # The sender name customers see: "Acme Support <support@acme.com>".
    display_name: str | None = None
    default_team: str | None = None
    bot_enabled: bool = False
    imap: ImapConfig
    smtp: SmtpConfig
    # On the very first connection: "new" reads only mail arriving from then
    # on; "all" imports everything already in the folder.
    first_sync: Literal["new", "all"] = "new"
    # Reply token in the subject ("Re: Order [#123]").
    subject_token: bool = True
    # Reply-To: support+123@...; only if the mail server delivers plus addresses.
    plus_addressing: bool = False

    @field_validator("address")
    @classmethod
    def _an_address(cls, value: str) -> str:
        value = value.strip().lower()
        local, _, domain = value.partition("@")
        if not local or "." not in domain or " " in value:
            raise ValueError(f"{value!r} is not an email address")
        return value

    @field_validator("display_name")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        # YAML block scalars (">", "|") end with a line break; inside the
        # name, one would end the From header, and every reply would fail.
        value = value.strip() if value is not None else None
        if value and re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", value):
            raise ValueError("a display name is one line of text: no line breaks or control characters")
        return value or None

    @property
    def inbox_key(self) -> str:
        return self.inbox or f"email:{self.address}"


class EmailConfig(_Section):
    mailboxes: list[MailboxConfig] = Field(default_factory=list)
    # A poller holds its mailbox this long without renewing (only one worker
    # process polls a mailbox); a dead one's mailbox is taken over after it.
    lease_seconds: float = Field(default=60.0, ge=5)
    # Threads for the blocking IMAP client, shared by all mailboxes.
    max_imap_threads: int = Field(default=8, ge=1)
    reconnect_backoff_seconds: float = Field(default=1.0, gt=0)
    reconnect_backoff_max_seconds: float = Field(default=300.0, gt=0)
    # Larger messages are stored with their headers only, and a note.
    max_message_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    # Filled from the environment variables the mailboxes name (password_env).
    passwords: dict[str, str] = Field(default_factory=dict, repr=False, exclude=True)

    @field_validator("mailboxes")
    @classmethod
    def _unique(cls, boxes: list[MailboxConfig]) -> list[MailboxConfig]:
        keys = [b.inbox_key for b in boxes]
        for key in keys:
            if keys.count(key) > 1:
                raise ValueError(f"two mailboxes use the inbox {key!r}")
        return boxes


def _refuse_email_passwords(raw: Mapping[str, Any]) -> None:
    """Mailbox passwords come from environment variables; one written into the
    file is refused with a message saying where it belongs."""
    email = raw.get("email")
    boxes = email.get("mailboxes") if isinstance(email, dict) else None
    for i, box in enumerate(boxes if isinstance(boxes, list) else []):
        for side in ("imap", "smtp"):
            section = box.get(side) if isinstance(box, dict) else None
            if isinstance(section, dict) and "password" in section:
                raise ConfigError(
                    f"email.mailboxes.{i}.{side}.password: secrets must not be written in the config file; "
                    "put the password in an environment variable and name it in password_env"
                )


def _email_secrets(config: HubConfig, env: Mapping[str, str]) -> None:
    """Read the passwords from the environment variables the mailboxes name."""
    for i, mailbox in enumerate(config.email.mailboxes):
        for side, name in (("imap", mailbox.imap.password_env), ("smtp", mailbox.smtp.password_env)):
            if not name:
                continue
            if not env.get(name):
                raise ConfigError(
                    f"email.mailboxes.{i}.{side}.password_env: the environment variable {name} is not set"
                )
            config.email.passwords[name] = env[name]


class QuietHoursConfig(_Section):
    """No marketing SMS between ``start`` and ``end`` in the recipient's local
    time (a window that crosses midnight, such as 21:00-09:00, is fine)."""

    start: str = Field(default="21:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    end: str = Field(default="09:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHoursConfig:
        if self.start == self.end:
            raise ValueError("start and end must differ (null disables quiet hours)")
        return self


def _default_opt_out_texts() -> dict[str, str]:
    return {"en": "Reply STOP to opt out.", "fa": "برای لغو اشتراک «لغو» را بفرستید."}


class CampaignsConfig(_Section):
    """Bulk SMS campaigns (``crm-hub campaign ...``, ``/api/v1/campaigns``)."""

    # What Twilio charges per segment, for the estimate shown before a send
    # (per destination region where it differs: {"IR": 0.12}).
    price_per_segment: float = Field(default=0.0083, ge=0)
    price_by_region: dict[str, float] = Field(default_factory=dict)
    currency: str = Field(default="USD", min_length=3, max_length=3)
    # Contacts never asked (no sms_consent attribute) are sent to only when this
    # is false; a withdrawal (sms_consent set but not true) is never sent to.
    require_consent: bool = True
    # Append the opt-out line to every message (unless the text already has one of opt_out_texts).
    opt_out_line: bool = True
    opt_out_texts: dict[str, str] = Field(default_factory=_default_opt_out_texts)
    # null: no quiet hours (not recommended for marketing).
    quiet_hours: QuietHoursConfig | None = Field(default_factory=QuietHoursConfig)
    # For numbers whose region spans several zones or none, and contacts without a
    # timezone attribute: the zones of the number are all respected; unknown -> this.
    default_timezone: str = "UTC"
    # A customer's SMS within this long of a campaign message is a reply to it.
    reply_window_hours: float = Field(default=72.0, gt=0)
    # A recipient left "sending" this long (its worker died mid-send) is marked uncertain.
    send_lease_seconds: float = Field(default=60.0, gt=0)
    # A send that got no answer (uncertain) is looked up in Twilio's message list this
    # long after, when Twilio has long finished with the request: found, it is sent;
    # not found, it is sent again. A lookup Twilio cannot answer is tried again later.
    reconcile_after_seconds: float = Field(default=60.0, gt=0)
    # A claimed batch not sent within this long goes back to others (its worker died).
    claim_lease_seconds: float = Field(default=60.0, gt=0)
    claim_batch: int = Field(default=200, ge=1, le=5000)
    # Messages in flight to Twilio at once, per worker process.
    concurrency: int = Field(default=32, ge=1, le=1000)
    # How often workers look for campaigns to run (and check for pause / cancel).
    poll_seconds: float = Field(default=1.0, gt=0)
    # Retries of a send Twilio refused for its rate (429), with backoff.
    max_attempts: int = Field(default=5, ge=1)
    max_csv_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return iana_zone(value)

    @field_validator("price_by_region")
    @classmethod
    def _regions(cls, value: dict[str, float]) -> dict[str, float]:
        out = {}
        for region, price in value.items():
            if not re.match(r"^[A-Za-z]{2}$", region) or price < 0:
                raise ValueError(f"{region}: keys are ISO regions (IR, US) and prices are not negative")
            out[region.upper()] = price
        return out

    @field_validator("opt_out_texts")
    @classmethod
    def _english(cls, value: dict[str, str]) -> dict[str, str]:
        if not value.get("en"):
            raise ValueError("needs at least an English line (en)")
        return value


class HubConfig(_Section):
    data_dir: Path = Path("data")
    server: ServerConfig = Field(default_factory=ServerConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    webchat: WebchatConfig = Field(default_factory=WebchatConfig)
    attachments: AttachmentsConfig = Field(default_factory=AttachmentsConfig)
    widget: WidgetConfig = Field(default_factory=WidgetConfig)
    bot: BotConfig = Field(default_factory=BotConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    phone: PhoneConfig = Field(default_factory=PhoneConfig)
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)
    email: EmailConfig = Field(default_factory=EmailConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    campaigns: CampaignsConfig = Field(default_factory=CampaignsConfig)
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

    @model_validator(mode="after")
    def _phone_regions(self) -> HubConfig:
        # A hub set up for Iran reads «۰۹۱۲...» in the bot's dialog and the
        # widget's forms as it does everywhere else, unless they name a region.
        if self.bot.qualification.phone_region is None:
            self.bot.qualification.phone_region = self.phone.default_region
        if self.widget.phone_region is None:
            self.widget.phone_region = self.phone.default_region
        return self

    @model_validator(mode="after")
    def _campaign_lease(self) -> HubConfig:
        # A campaign message goes to Twilio only while half its send lease is
        # left (hub.campaigns.runner): the other half must outlast the request.
        lease, timeout = self.campaigns.send_lease_seconds, self.twilio.request_timeout_seconds
        if lease <= 2 * timeout:
            raise ValueError(
                f"campaigns.send_lease_seconds ({lease:g}) must be more than twice twilio.request_timeout_seconds "
                f"({timeout:g}): a send must end well within its lease"
            )
        return self


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
        except UnicodeDecodeError as exc:
            # Saved by an editor in a legacy code page (Windows-1256 for Persian).
            raise ConfigError(f"config file {p} is not UTF-8 text ({exc}); save it as UTF-8") from exc
        except OSError as exc:
            raise ConfigError(f"config file {p} cannot be read: {exc.strerror or exc}") from exc
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
    _telegram_secrets(raw, env)
    _rasa_secrets(raw, env)
    if env.get("HUB_SECRET_KEY"):
        raw["secret_key"] = env["HUB_SECRET_KEY"]
    _twilio_from_env(raw, env)
    _refuse_email_passwords(raw)
    try:
        config = HubConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from exc
    _email_secrets(config, env)
    return config


def _telegram_secrets(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Bots' tokens and webhook secrets from the environment. With no bot listed,
    ``TELEGRAM_BOT_TOKEN`` alone configures one named "default"."""
    section = raw.get("telegram")
    if section is None:
        section = raw["telegram"] = {}
    if not isinstance(section, dict):
        return  # validation names the key
    bots = section.get("bots")
    if not bots and env.get(TELEGRAM_TOKEN_ENV):
        bots = section["bots"] = [{"name": "default"}]
    if not isinstance(bots, list):
        return
    for i, bot in enumerate(bots):
        if not isinstance(bot, dict):
            continue
        for secret, holder in (("token", "token_env"), ("webhook_secret", "webhook_secret_env")):
            if secret in bot:
                raise ConfigError(
                    f"telegram.bots[{i}].{secret}: secrets must not be written in the config file; "
                    f"name the environment variable that holds it in {holder}"
                )
        bot["token"] = env.get(str(bot.get("token_env") or TELEGRAM_TOKEN_ENV), "")
        bot["webhook_secret"] = env.get(str(bot.get("webhook_secret_env") or TELEGRAM_SECRET_ENV), "")


def ensure_secret_key(config: HubConfig, *, folders_checked: bool = False) -> HubConfig:
    """Give an embedded install a stable secret without asking the user for one:
    generated once, kept in ``data_dir/secret_key`` (mode 0600)."""
    if config.secret_key:
        return config
    if not folders_checked:
        check_folders(config)
    key_file = config.data_dir / "secret_key"
    try:
        key = _read_key(key_file)
        if key is None:
            key = _write_key(key_file, secrets.token_urlsafe(48))
    except OSError as exc:
        raise ConfigError(f"data_dir: {key_file} cannot be read or written: {exc.strerror or exc}") from exc
    if len(key) < 32:
        # Anyone could sign visitor tokens with a key that short (an empty file
        # was what a crash while the key was written used to leave behind).
        raise ConfigError(
            f"secret_key: {key_file} holds {len(key)} characters, not a usable key; "
            "delete the file to have a new one made (visitors' tokens signed with it stop working), "
            "or set HUB_SECRET_KEY"
        )
    return config.model_copy(update={"secret_key": key})


def _read_key(key_file: Path) -> str | None:
    try:
        return key_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def _write_key(key_file: Path, key: str) -> str:
    """Written whole or not at all: to a file of its own first, then linked
    into place, which fails if another process starting at the same moment
    got there first (then its key is the one)."""
    fd, tmp = tempfile.mkstemp(dir=key_file.parent, prefix=".secret_key.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(key)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, key_file)
        except FileExistsError:
            return _read_key(key_file) or ""
        return key
    finally:
        os.unlink(tmp)


def check_folders(config: HubConfig) -> None:
    """The folders the hub writes to exist (made if need be) and take files:
    a path that is a file, or read-only, stops start-up naming its key rather
    than failing every upload later."""
    for key, folder in (("data_dir (HUB_DATA_DIR)", config.data_dir), ("attachments.dir", config.attachments_dir)):
        try:
            # Owner-only when the hub makes it: customers' files and the keys.
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise ConfigError(f"{key}: {folder} is not a folder the hub can write to: {exc.strerror or exc}") from exc


def _twilio_from_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Twilio's credentials come from the variables the ``twilio`` library itself
    reads (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN), a sender's own from the
    variables it names; TWILIO_PHONE_NUMBER adds a default SMS sender, so those
    three variables alone make a working SMS inbox."""
    section = raw.get("twilio")
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return  # validation names the key
    for key in ("account_sid", "auth_token"):
        if section.get(key):
            raise ConfigError(
                f"twilio.{key}: credentials must not be written in the config file; "
                f"set TWILIO_{key.upper()} in the environment"
            )
    senders = section.get("senders")
    if senders is None:
        senders = []
    if not isinstance(senders, list):
        return
    for i, sender in enumerate(senders):
        if not isinstance(sender, dict):
            continue
        for key in ("account_sid", "auth_token"):
            if sender.get(key):
                raise ConfigError(
                    f"twilio.senders.{i}.{key}: credentials must not be written in the config file; "
                    f"name an environment variable in {key}_env"
                )
            var = sender.get(f"{key}_env")
            if var:
                if not env.get(str(var)):
                    raise ConfigError(f"twilio.senders.{i}.{key}_env: the environment variable {var} is not set")
                sender[key] = env[str(var)]
    for key in ("account_sid", "auth_token"):
        if env.get(f"TWILIO_{key.upper()}"):
            section[key] = env[f"TWILIO_{key.upper()}"].strip()
    _twilio_shared_keys(section, env)
    number = (env.get("TWILIO_PHONE_NUMBER") or "").strip()
    if number:
        try:
            e164 = _international_number(number)
        except ValueError as exc:
            raise ConfigError(f"invalid configuration: TWILIO_PHONE_NUMBER: {exc}") from exc
        known = set()
        for sender in senders:
            if isinstance(sender, dict) and sender.get("number"):
                # A bad number is reported with its key by validation.
                with contextlib.suppress(ValueError):
                    known.add(_international_number(str(sender["number"])))
        if e164 not in known:
            senders.append({"inbox": "sms", "name": f"SMS {e164}", "number": e164})
    if senders:
        section["senders"] = senders
    if section:
        raw["twilio"] = section


def _twilio_shared_keys(section: dict[str, Any], env: Mapping[str, str]) -> None:
    """Each SharedKey's secret from the variable it names, and its account's SID
    (its own variable, or TWILIO_ACCOUNT_SID)."""
    keys = section.get("shared_keys")
    if not isinstance(keys, list):
        return  # absent, or validation names the key
    for i, key in enumerate(keys):
        if not isinstance(key, dict):
            continue
        for name, holder in (("secret", "secret_env"), ("account_sid", "account_sid_env")):
            if key.get(name):
                raise ConfigError(
                    f"twilio.shared_keys.{i}.{name}: secrets and credentials must not be written in the config "
                    f"file; name the environment variable that holds it in {holder}"
                )
        var = key.get("secret_env")
        if var:
            if not env.get(str(var)):
                raise ConfigError(f"twilio.shared_keys.{i}.secret_env: the environment variable {var} is not set")
            key["secret"] = env[str(var)]
        account_var = key.get("account_sid_env")
        if account_var:
            if not env.get(str(account_var)):
                raise ConfigError(
                    f"twilio.shared_keys.{i}.account_sid_env: the environment variable {account_var} is not set"
                )
            key["account_sid"] = env[str(account_var)].strip()
        else:
            key["account_sid"] = (env.get("TWILIO_ACCOUNT_SID") or "").strip()
