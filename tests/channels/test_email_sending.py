"""Sending replies to a real SMTP server (aiosmtpd): addresses the email
package cannot write, internationalized addresses (SMTPUTF8), and retries that
resume where a partly accepted message stopped."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

import channels.email
from channels.base import SEND_PARTS
from channels.email import EmailChannel, SmtpServer, build_message
from hub.core import DeliveryStatus
from tests import mailservers
from tests.channels.test_email import BOX, addresses, channel_for, reply


@pytest.fixture
def no_smtputf8() -> Iterator[mailservers.SmtpServer]:
    """The same server, without SMTPUTF8 (aiosmtpd offers it by default)."""
    server = mailservers.SmtpServer()
    server.controller = Controller(
        server.sink,
        hostname="127.0.0.1",
        port=server.port,
        enable_SMTPUTF8=False,
        authenticator=server.sink.authenticate,
        auth_require_tls=False,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def received(server: mailservers.SmtpServer) -> list[tuple[Envelope, EmailMessage]]:
    """What the server received, with UTF-8 headers read as UTF-8 (the test
    server's own parser reads every header byte as ASCII)."""
    found = []
    for envelope, _ in server.sink.messages:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        msg = email.message_from_string(content.decode("utf-8"), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        found.append((envelope, msg))
    return found


# --- addresses the email package cannot write ----------------------------------------


@pytest.mark.parametrize("customer", ["user.@docomo.ne.jp", "john..doe@example.com", ".sara@example.com"])
async def test_an_address_that_cannot_be_written_fails_for_good(smtp: mailservers.SmtpServer, customer: str) -> None:
    result = await channel_for(smtp).send(reply(to=customer).model_copy(update={"recipient": customer}))
    assert result.status is DeliveryStatus.FAILED and not result.retryable
    assert customer in (result.reason or "")
    assert smtp.sink.messages == []


@pytest.mark.parametrize("customer", ["سارا@example.com", "sara@مثال.ایران", "sara@exämple.com"])
async def test_an_internationalized_address_goes_out_with_smtputf8(smtp: mailservers.SmtpServer, customer: str) -> None:
    result = await channel_for(smtp).send(reply(to=customer).model_copy(update={"recipient": customer}))
    assert result.status is DeliveryStatus.SENT, result.reason
    ((envelope, message),) = received(smtp)
    assert envelope.rcpt_tos == [customer]
    assert "SMTPUTF8" in envelope.mail_options
    assert addresses(message, "To") == [customer]


async def test_a_non_ascii_reply_to_is_where_the_reply_goes(smtp: mailservers.SmtpServer) -> None:
    result = await channel_for(smtp).send(reply(reply_to=["کاوه@example.com"], cc=["ali@example.org"]))
    assert result.status is DeliveryStatus.SENT, result.reason
    ((envelope, message),) = received(smtp)
    assert envelope.rcpt_tos == ["کاوه@example.com", "ali@example.org"]
    assert addresses(message, "To") == ["کاوه@example.com"]


async def test_without_smtputf8_an_internationalized_address_fails_naming_it(
    no_smtputf8: mailservers.SmtpServer,
) -> None:
    customer = "سارا@example.com"
    result = await channel_for(no_smtputf8).send(reply(to=customer).model_copy(update={"recipient": customer}))
    assert result.status is DeliveryStatus.FAILED and not result.retryable
    assert customer in (result.reason or "") and "SMTPUTF8" in (result.reason or "")
    assert no_smtputf8.sink.messages == []


def test_the_message_itself_is_written_in_utf8_only_when_an_address_needs_it() -> None:
    wide = build_message(reply(to="سارا@example.com").model_copy(update={"recipient": "سارا@example.com"}), BOX,
                         message_id="m@hub.test")  # fmt: skip
    assert "To: Sara <سارا@example.com>" in wide.as_bytes().decode()
    plain = build_message(reply(), BOX, message_id="m@hub.test")
    assert plain.as_bytes().isascii()


# --- a retry after the copies were accepted -------------------------------------------


async def test_a_retry_goes_only_to_those_who_do_not_have_the_reply(smtp: mailservers.SmtpServer) -> None:
    channel = channel_for(smtp)
    smtp.sink.rcpt_replies["sara@example.com"] = "450 4.2.1 <sara@example.com>: mailbox busy, try later"
    first = await channel.send(reply(cc=["boss@example.com", "ali@example.org"]))
    assert first.status is DeliveryStatus.FAILED and first.retryable
    assert "450 4.2.1" in (first.reason or "")
    # The copies have it: the sender keeps this on the message and hands it back.
    assert first.extras[SEND_PARTS] == ["boss@example.com", "ali@example.org"]

    del smtp.sink.rcpt_replies["sara@example.com"]
    retry = reply(cc=["boss@example.com", "ali@example.org"])
    retry = retry.model_copy(update={"extras": {**retry.extras, SEND_PARTS: first.extras[SEND_PARTS]}})
    second = await channel.send(retry)
    assert second.status is DeliveryStatus.SENT and second.external_id
    (first_envelope, _), (second_envelope, message) = smtp.sink.messages
    assert first_envelope.rcpt_tos == ["boss@example.com", "ali@example.org"]
    assert second_envelope.rcpt_tos == ["sara@example.com"]
    # The same mail: everyone still sees who else has it.
    assert addresses(message, "Cc") == ["boss@example.com", "ali@example.org"]
    assert message["Message-ID"] == f"<{second.external_id}>"


async def test_a_copy_accepted_on_a_retry_is_added_to_those_before(smtp: mailservers.SmtpServer) -> None:
    channel = channel_for(smtp)
    smtp.sink.rcpt_replies["sara@example.com"] = "451 4.3.0 try later"
    retry = reply(cc=["boss@example.com", "ali@example.org"])
    retry = retry.model_copy(update={"extras": {**retry.extras, SEND_PARTS: ["boss@example.com"]}})
    result = await channel.send(retry)
    assert result.status is DeliveryStatus.FAILED and result.retryable
    assert result.extras[SEND_PARTS] == ["boss@example.com", "ali@example.org"]
    ((envelope, _),) = smtp.sink.messages
    assert envelope.rcpt_tos == ["ali@example.org"]


# --- the contact's name on the To line -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "written"),
    [
        # A web chat visitor typing their name over two lines; a name that
        # tries to add a header; control characters from anywhere else.
        ("Sara\nAhmadi", "Sara Ahmadi"),
        ("Sara\r\nBcc: evil@x.test", "Sara Bcc: evil@x.test"),
        ("Sara\u2028Ahmadi\x07 ", "Sara Ahmadi"),
    ],
)
async def test_a_name_with_a_line_break_is_written_on_one_line(
    smtp: mailservers.SmtpServer, name: str, written: str
) -> None:
    result = await channel_for(smtp).send(reply(recipient_name=name))
    assert result.status is DeliveryStatus.SENT, result.reason
    ((envelope, message),) = received(smtp)
    assert envelope.rcpt_tos == ["sara@example.com"]
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [(written, "sara@example.com")]
    assert message["Bcc"] is None


def test_a_name_the_header_refuses_is_left_out_not_the_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever still gets past the clean-up: the reply goes without the name.
    monkeypatch.setattr(channels.email, "display_name", lambda name: name)
    msg = build_message(reply(recipient_name="Sara\nAhmadi"), BOX, message_id="m@hub.test")
    assert [(a.display_name, a.addr_spec) for a in msg["To"].addresses] == [("", "sara@example.com")]


# --- when the server's answer does not come ------------------------------------------


def slow(sink: mailservers.SmtpSink, command: str, seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server does its work for ``command`` (DATA: takes the message),
    then answers ``seconds`` late."""
    real = getattr(sink, f"handle_{command}")

    async def late(*args: Any) -> str:
        answer: str = await real(*args)
        await asyncio.sleep(seconds)
        return answer

    monkeypatch.setattr(sink, f"handle_{command}", late)


def impatient(server: mailservers.SmtpServer, *, timeout: float, data_timeout: float = 600.0) -> EmailChannel:
    smtp = SmtpServer(host="127.0.0.1", port=server.port, security="none", timeout=timeout, data_timeout=data_timeout)
    return EmailChannel([dataclasses.replace(BOX, smtp=smtp)], read_attachment=lambda url: None, id_secret="s")


async def test_no_answer_to_a_message_the_server_has_is_not_sent_again(
    smtp: mailservers.SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow(smtp.sink, "DATA", 1.0, monkeypatch)
    result = await impatient(smtp, timeout=0.3, data_timeout=0.3).send(reply())
    await smtp.received(1)  # the server queued it: a retry would be a second copy
    assert result.status is DeliveryStatus.FAILED and not result.retryable
    assert result.reason is not None and "may have been delivered" in result.reason
    # A bounce, a delivery report or the customer's answer still finds it.
    assert result.external_id is not None and result.external_id.startswith("hub.7.12.")
    assert result.extras[SEND_PARTS] == ["sara@example.com"]


async def test_the_end_of_the_message_is_given_minutes_not_the_command_timeout(
    smtp: mailservers.SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow(smtp.sink, "DATA", 1.0, monkeypatch)
    result = await impatient(smtp, timeout=0.3).send(reply())
    assert result.status is DeliveryStatus.SENT, result.reason
    assert len(smtp.sink.messages) == 1


async def test_no_answer_before_the_message_was_sent_is_retried(
    smtp: mailservers.SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow(smtp.sink, "RCPT", 1.0, monkeypatch)
    result = await impatient(smtp, timeout=0.2).send(reply())
    assert result.status is DeliveryStatus.FAILED and result.retryable, result
    assert result.external_id is None
    await asyncio.sleep(1.0)
    assert smtp.sink.messages == []


async def test_a_sent_reply_keeps_who_it_went_to(smtp: mailservers.SmtpServer) -> None:
    # What lets an answer from a copied address into the ticket (hub.mail).
    smtp.sink.rcpt_replies["ali@example.org"] = "550 5.1.1 no such user"
    result = await channel_for(smtp).send(reply(cc=["boss@example.com", "ali@example.org"]))
    assert result.status is DeliveryStatus.SENT
    assert result.extras[SEND_PARTS] == ["sara@example.com", "boss@example.com"]
