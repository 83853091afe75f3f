"""``twilio.shared_keys``: each SharedKey's secret comes from the environment
variable it names, for an account the hub has, checked when the hub starts."""

from __future__ import annotations

import re
from typing import Any

import pytest

from hub.config import ConfigError, load_config

ACCOUNT = "AC" + "0123456789abcdef" * 2
SUB = "AC" + "fedcba9876543210" * 2
ENV = {"HUB_SECRET_KEY": "s", "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": "token", "KEY_SECRET": "shh"}


def load(keys: list[dict[str, Any]], **env: str) -> Any:
    return load_config(path=None, env={**ENV, **env}, overrides={"twilio.shared_keys": keys})


def test_a_keys_secret_and_account_come_from_the_environment() -> None:
    tw = load([{"id": "webhooks_sharedkey_abc", "secret_env": "KEY_SECRET"}]).twilio
    assert tw.shared_key("webhooks_sharedkey_abc", ACCOUNT) == "shh"
    assert tw.shared_key("webhooks_sharedkey_abc", SUB) is None
    assert tw.shared_key("webhooks_sharedkey_other", ACCOUNT) is None
    assert "shh" not in repr(tw)


@pytest.mark.parametrize(
    ("keys", "env", "needle"),
    [
        (
            [{"id": "k", "secret_env": "MISSING_VAR"}],
            {},
            "twilio.shared_keys.0.secret_env: the environment variable MISSING_VAR",
        ),
        ([{"id": "k", "secret_env": "KEY_SECRET", "secret": "in-yaml"}], {}, "twilio.shared_keys.0.secret"),
        ([{"id": "k", "secret_env": "KEY_SECRET", "account_sid_env": "NOPE"}], {}, "NOPE is not set"),
        (
            [{"id": "k", "secret_env": "KEY_SECRET"}, {"id": "k", "secret_env": "KEY_SECRET"}],
            {},
            "id k is configured twice",
        ),
        # An account no sender and not TWILIO_ACCOUNT_SID uses: a typo.
        (
            [{"id": "k", "secret_env": "KEY_SECRET", "account_sid_env": "SUB_SID"}],
            {"SUB_SID": SUB},
            "shared_keys.0 (k)",
        ),
        ([{"id": "k", "secret_env": "lower-case"}], {}, "shared_keys.0.secret_env"),
        ([{"id": "has space", "secret_env": "KEY_SECRET"}], {}, "shared_keys.0.id"),
    ],
)
def test_a_bad_key_stops_the_hub_naming_it(keys: list[dict[str, Any]], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load(keys, **env)
