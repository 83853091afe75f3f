"""What the Twilio SMS and voice adapters share: the webhook signature check,
the REST client pointed at the configured API base URL, readable reasons for
Twilio's error codes, and plain-data helpers for webhook parameters.

Framework-free like every channel module: the hub hands in the form
parameters, the header values and the candidate URLs as plain data.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)
from twilio.rest import Client

from channels.base import InvalidPayload
from hub.core import DeliveryStatus, SendResult, without_nul

DEFAULT_API_BASE_URL = "https://api.twilio.com"
MAX_FIELD_CHARS = 10_000

#: A Twilio resource SID: two capital letters and 32 hexadecimal digits, and
#: nothing else. Checked with ``fullmatch``: ``$`` also matches before a final
#: newline, and "SM...\n" is another id than "SM..." to every table keyed on it.
SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")
#: The algorithms webhooks may be signed with (the ``twilio`` library's).
SIGNATURE_ALGORITHMS = (HMAC_SHA1, HMAC_SHA256)


@dataclass(frozen=True, slots=True)
class TwilioAccount:
    account_sid: str
    auth_token: str


class FormParams:
    """Form parameters as Twilio sent them, repeated names included, in the
    shape :class:`RequestValidator` reads (``getall``) and with single-value
    access for the parsers (the last value of a repeated name, as Twilio means it)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            if not isinstance(value, str):
                raise InvalidPayload(f"parameter {name!r} must be text, not a file upload")
            self._values.setdefault(name, []).append(value)

    def getall(self, name: str) -> list[str]:
        return list(self._values[name])

    def __iter__(self) -> Any:
        return iter(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def get(self, name: str, default: str = "") -> str:
        values = self._values.get(name)
        return values[-1] if values else default

    def as_dict(self) -> dict[str, str]:
        return {k: v[-1] for k, v in self._values.items()}


def verify_signature(
    secret: str,
    urls: Sequence[str],
    params: FormParams,
    signature: str | None,
    settings_header: str | None = None,
) -> bool:
    """True when ``signature`` (X-Twilio-Signature) signs one of ``urls`` (the
    URL Twilio called, as the hub can know it) and the parameters with
    ``secret``: the account's auth token or, for a webhook signed with a
    SharedKey, that key's secret (see :func:`shared_key_id`). Twilio's own
    validator does the work, with and without the default port;
    ``settings_header`` (X-Twilio-Webhooks-Signature-Settings) names the algorithm."""
    if not signature or not secret:
        return False
    validator = RequestValidator(secret)
    algorithm = get_signature_algorithm(settings_header)
    return any(validator.validate(url, params, signature, algorithm) for url in urls)


def shared_key_id(settings_header: str | None) -> str | None:
    """The SharedKey a webhook is signed with, as its
    X-Twilio-Webhooks-Signature-Settings header names it (``key=<id>,algorithm=...``);
    None when the header names none: the account's auth token signed it."""
    for part in (settings_header or "").split(","):
        name, separator, value = part.partition("=")
        if separator and name.strip() == "key" and value.strip():
            return value.strip()
    return None


def signature_algorithm(settings_header: str | None) -> str:
    """The algorithm the settings header names (HMAC_SHA1 without one); raises
    :class:`InvalidPayload` for one the ``twilio`` library cannot check."""
    algorithm = str(get_signature_algorithm(settings_header))
    if algorithm.upper() not in SIGNATURE_ALGORITHMS:
        raise InvalidPayload(
            f"{SIGNATURE_SETTINGS_HEADER} names the signature algorithm {algorithm[:40]!r}; "
            f"the hub checks {' and '.join(SIGNATURE_ALGORITHMS)}"
        )
    return algorithm


def rest_client(account: TwilioAccount, base_url: str, http_client: AsyncTwilioHttpClient) -> Client:
    """The real ``twilio`` client, with its async HTTP client, sending to
    ``base_url`` (Twilio, a Twilio-compatible provider, or a test fake)."""
    client = Client(account.account_sid, account.auth_token, http_client=http_client)
    if base_url.rstrip("/") != DEFAULT_API_BASE_URL:
        # Every request of the v2010 API (Messages, Calls) is built from the
        # domain's public ``base_url``; edge and region would rewrite the host
        # name into Twilio's own, so they only apply to Twilio itself.
        client.api.base_url = base_url.rstrip("/")
        client.edge = None
        client.region = None
    return client


# Twilio's error dictionary, in words an agent can act on
# (https://www.twilio.com/docs/api/errors/<code>).
ERROR_REASONS: dict[int, str] = {
    20003: "Twilio rejected the account credentials (TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN)",
    20404: "Twilio does not know this resource (wrong account or number)",
    20429: "too many requests to Twilio at once",
    21211: "the number is not a valid phone number",
    21408: "the account may not send to this country (Twilio geo permissions)",
    21606: "the sending number cannot send SMS to this destination",
    21608: "a trial account can only send to verified numbers",
    21610: "the customer replied STOP: Twilio will not send to them from this sender",
    21612: "Twilio cannot route a message from this sender to that number",
    21614: "the number is not a mobile number that can receive SMS",
    21617: "the message body is longer than 1,600 characters",
    21660: "the sending number does not belong to this Twilio account",
    14107: "the sending number's SMS rate limit was exceeded",
    13223: "the phone number to call is not valid",
    13224: "the phone number to call cannot be reached (invalid or not allowed)",
    13227: "the account may not call this country (Twilio geo permissions)",
    30001: "Twilio's queue for this sender overflowed; it was not sent",
    30002: "the Twilio account is suspended",
    30003: "the customer's phone is unreachable (switched off or out of coverage)",
    30004: "the message was blocked (by the customer or their carrier)",
    30005: "the number does not exist (unknown handset)",
    30006: "the number is a landline or its carrier cannot receive SMS",
    30007: "the carrier filtered the message as spam",
    30008: "the carrier reported an unknown error",
    30009: "a part of the multipart message was lost",
    30010: "the price of the message exceeds the configured maximum",
    30034: "the sending number is not registered for A2P 10DLC",
}

RETRYABLE_CODES = frozenset({20429, 14107, 30001})
OPT_OUT_CODE = 21610
#: ``SendResult.extras[NOT_REACHED]`` is true when the request never got to
#: Twilio (refused connection, unknown host, failed TLS handshake, connect
#: timeout): nothing was sent, so sending it again cannot duplicate it.
NOT_REACHED = "not_reached"


def error_reason(code: int | str | None, message: str | None = None) -> str:
    """``Twilio error 30003: the customer's phone is unreachable (...)``."""
    try:
        number = int(code) if code not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    known = ERROR_REASONS.get(number) if number is not None else None
    text = known or (message or "").strip() or "no reason given"
    return f"Twilio error {number}: {text}" if number is not None else f"Twilio: {text}"


def error_code(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def send_failure(exc: BaseException, timeout: float) -> SendResult:
    """A failed REST call as a status: Twilio's errors with their reason
    (429 and 5xx retryable), network trouble and timeouts retryable; a request
    that never got to Twilio says so (``extras[NOT_REACHED]``)."""
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        code = exc.code if isinstance(exc.code, int) else error_code(str(exc.code))
        status = int(exc.status or 0)
        detail = exc.msg if isinstance(exc, TwilioRestException) else (exc.detail or exc.title)
        # The client prefixes Twilio's message with "Unable to create record: ".
        detail = str(detail).split(": ", 1)[-1] if detail else None
        retryable = status == 429 or status >= 500 or code in RETRYABLE_CODES
        return SendResult(
            status=DeliveryStatus.FAILED,
            reason=error_reason(code, detail) + f" (HTTP {status})",
            retryable=retryable,
            extras={"error_code": code} if code is not None else {},
        )
    if never_reached(exc):
        return SendResult(
            status=DeliveryStatus.FAILED,
            reason=f"Twilio could not be reached, nothing was sent: {type(exc).__name__}: {exc}",
            retryable=True,
            extras={NOT_REACHED: True},
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return SendResult(
            status=DeliveryStatus.FAILED,
            reason=f"Twilio did not answer within {timeout:g} s",
            retryable=True,
        )
    return SendResult(
        status=DeliveryStatus.FAILED,
        reason=f"Twilio could not be reached: {type(exc).__name__}: {exc}",
        retryable=True,
    )


def never_reached(exc: BaseException) -> bool:
    """True when ``exc`` came before the request was written: aiohttp raises
    these only while connecting (DNS, TCP, TLS, proxy). A timeout or a dropped
    connection later on leaves open whether Twilio took the message."""
    return isinstance(
        exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | ConnectionRefusedError | socket.gaierror
    )


def sid_field(params: FormParams, name: str, prefix: str = "") -> str | None:
    """The parameter ``name`` as a Twilio SID starting with ``prefix`` (CA for a
    call, RE for a recording; any kind without one); None when it is absent."""
    value = params.get(name)
    if not value:
        return None
    if not value.startswith(prefix) or SID.fullmatch(value) is None:
        kind = f" ({prefix} and 32 hexadecimal digits)" if prefix else ""
        raise InvalidPayload(f"parameter {name} {value[:40]!r} is not a Twilio SID{kind}")
    return value


def required_sid(params: FormParams, name: str, prefix: str) -> str:
    value = sid_field(params, name, prefix)
    if value is None:
        raise InvalidPayload(f"parameter {name} is missing; this is not a Twilio webhook")
    return value


def whole_number(raw: str, name: str, *, max_digits: int = 9, signed: bool = False) -> int:
    """``raw`` (a webhook parameter) as an int: ASCII digits only, at most
    ``max_digits`` of them (so it fits the database), a single leading minus
    when ``signed``. ``str.isdigit`` would take "²" and "٣", which ``int`` refuses
    or reads; anything else is :class:`InvalidPayload` naming ``name``."""
    pattern = rf"-?[0-9]{{1,{max_digits}}}" if signed else rf"[0-9]{{1,{max_digits}}}"
    if re.fullmatch(pattern, raw) is None:
        raise InvalidPayload(
            f"parameter {name} must be a whole number of at most {max_digits} digits, not {raw[:20]!r}"
        )
    return int(raw)


def field(params: FormParams, name: str, *, required: bool = False, max_chars: int = MAX_FIELD_CHARS) -> str:
    """A text parameter, without NUL characters: no provider means one, and
    PostgreSQL refuses them (a call row, say, would fail as a 500). Dropped, as
    the core types drop them, so what was sent is stored."""
    value: str = without_nul(params.get(name))
    if required and not value:
        raise InvalidPayload(f"parameter {name} is missing; this is not a Twilio webhook")
    if len(value) > max_chars:
        raise InvalidPayload(f"parameter {name} is longer than {max_chars} characters")
    return value


def text_by_language(texts: Mapping[str, str], language: str | None, fallback: str = "en") -> str | None:
    """The text for ``language``, else the fallback language's, else any."""
    if language and texts.get(language):
        return texts[language]
    if texts.get(fallback):
        return texts[fallback]
    return next((t for t in texts.values() if t), None)
