"""SMS end to end through a running hub and the local Twilio fake: signed
webhooks in, replies out through the real twilio client, status callbacks,
opt-outs, retries, MMS, quick replies, Messaging Service pools, proxies."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.actions import do_post_message
from hub.core import Author, QuickReply
from storage.models import CampaignRecipient, Contact, Identity, Message, SmsOptOut, Ticket
from tests.fakes.twilio import FakeTwilio, sign
from tests.hub.campaigns.helpers import seed_contacts, us_numbers
from tests.hub.twilio_helpers import (
    ACCOUNT,
    CUSTOMER,
    NUMBER,
    SERVICE,
    SUB_ACCOUNT,
    SUB_TOKEN,
    TOKEN,
    TwilioHub,
    eventually,
    twilio_hub,
)


def new_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


async def count_messages(t: TwilioHub) -> int:
    async with t.hub.db.read() as s:
        return int(await s.scalar(select(func.count()).select_from(Message)) or 0)


async def ticket_of(t: TwilioHub, agent: Any, phone: str = CUSTOMER) -> dict[str, Any]:
    page = await agent.get("/api/v1/tickets?channel=sms")
    for item in page["items"]:
        detail: dict[str, Any] = await agent.get(f"/api/v1/tickets/{item['id']}")
        if any(m["direction"] == "in" for m in detail["messages"]):
            contact = await agent.get(f"/api/v1/contacts/{detail['contact_id']}")
            if any(i["address"] == phone for i in contact["identities"]):
                return detail
    raise AssertionError(f"no SMS ticket for {phone}")


async def test_inbound_sms_reply_and_delivery_receipts(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        sid = new_sid()
        async with t.http.post(
            t.url("/webhooks/twilio/sms"),
            data=(params := _inbound(sid, "Hi, is my order shipped? سفارش من کجاست")),
            headers={"X-Twilio-Signature": sign(TOKEN, t.url("/webhooks/twilio/sms"), params)},
        ) as r:
            assert r.status == 200
            assert r.content_type == "text/xml"
            assert (await r.text()).endswith("<Response />")
        assert await t.sms("retried", sid=sid) == 200  # Twilio retrying the same MessageSid
        agent = await t.agent()
        ticket = await ticket_of(t, agent)
        (inbound,) = ticket["messages"]
        assert inbound["body"] == "Hi, is my order shipped? سفارش من کجاست"
        assert inbound["external_id"] == sid
        assert ticket["inbox"] == "sms"
        reply = await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "Yes, tomorrow!"}, status=201)
        assert reply["status"] == "queued"

        async def delivered() -> dict[str, Any] | None:
            detail = await agent.get(f"/api/v1/tickets/{ticket['id']}")
            out = detail["messages"][-1]
            return out if out["status"] == "delivered" else None

        out = await eventually(delivered)
        (sent,) = t.fake.messages
        assert out["external_id"] == sent["sid"]
        assert out["delivered_at"] is not None
        assert (sent["to"], sent["from"], sent["body"]) == (CUSTOMER, NUMBER, "Yes, tomorrow!")
        assert await count_messages(t) == 2
        async with t.hub.db.read() as s:
            stored_in = await s.get(Message, inbound["id"])
            stored_out = await s.get(Message, out["id"])
        assert stored_in is not None and stored_out is not None
        assert stored_in.extras["segments"] == 1 and stored_in.extras["encoding"] == "UCS-2"
        assert stored_out.extras["segments"] == 1 and stored_out.extras["encoding"] == "GSM-7"


def _inbound(sid: str, body: str, frm: str = CUSTOMER, to: str = NUMBER) -> dict[str, str]:
    return {"MessageSid": sid, "AccountSid": ACCOUNT, "From": frm, "To": to, "Body": body, "NumMedia": "0"}


async def test_bad_or_missing_signature_is_403_and_stores_nothing(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        url = t.url("/webhooks/twilio/sms")
        params = _inbound(new_sid(), "hello")
        for headers in ({}, {"X-Twilio-Signature": sign("not-the-token", url, params)}):
            async with t.http.post(url, data=params, headers=headers) as r:
                assert r.status == 403
                assert (await r.json())["error"]["code"] == "forbidden"
        tampered = {**params, "Body": "transfer money"}
        async with t.http.post(url, data=tampered, headers={"X-Twilio-Signature": sign(TOKEN, url, params)}) as r:
            assert r.status == 403
        unknown = _inbound(new_sid(), "hello", to="+15559999999")
        async with t.http.post(url, data=unknown, headers={"X-Twilio-Signature": sign(TOKEN, url, unknown)}) as r:
            assert r.status == 404
            assert "+15559999999" in (await r.json())["error"]["message"]
        async with t.http.post(url, json=params) as r:
            assert r.status == 400
        assert await count_messages(t) == 0


async def test_messaging_service_pool_uses_the_services_own_account(tmp_path: Path) -> None:
    env = {"SALES_SID": SUB_ACCOUNT, "SALES_TOKEN": SUB_TOKEN}
    senders = [
        {
            "inbox": "sales",
            "messaging_service_sid": SERVICE,
            "team": "Sales",
            "account_sid_env": "SALES_SID",
            "auth_token_env": "SALES_TOKEN",
        }
    ]
    async with twilio_hub(tmp_path, env=env, overrides={"twilio.senders": senders}) as t:
        # The pool's numbers vary; none of them is configured anywhere.
        for to in ("+15550002001", "+15550002002"):
            status = await t.sms(
                f"to {to}", sid=new_sid(), to=to, token=SUB_TOKEN, MessagingServiceSid=SERVICE, AccountSid=SUB_ACCOUNT
            )
            assert status == 200
        # Signed with the main account's token instead: refused.
        assert await t.sms("x", sid=new_sid(), to="+15550002003", MessagingServiceSid=SERVICE) == 403
        agent = await t.agent()
        page = await agent.get("/api/v1/tickets?channel=sms")
        (item,) = page["items"]
        detail = await agent.get(f"/api/v1/tickets/{item['id']}")
        assert detail["inbox"] == "sales"
        assert [m["body"] for m in detail["messages"]] == ["to +15550002001", "to +15550002002"]
        teams = {team["name"]: team["id"] for team in (await agent.get("/api/v1/teams"))["items"]}
        await eventually(lambda: _team_is(agent, item["id"], teams["Sales"]))
        await agent.post(f"/api/v1/tickets/{item['id']}/messages", {"body": "Thanks!"}, status=201)
        await eventually(lambda: _sent(t.fake, 1))
        (req,) = [r for r in t.fake.requests if r.path.endswith("Messages.json")]
        assert req.account == SUB_ACCOUNT
        assert (req.one("MessagingServiceSid"), req.one("From")) == (SERVICE, None)


async def _team_is(agent: Any, ticket_id: int, team_id: int) -> bool:
    return bool((await agent.get(f"/api/v1/tickets/{ticket_id}"))["team_id"] == team_id)


async def _sent(fake: FakeTwilio, n: int) -> bool:
    return len(fake.messages) >= n


async def test_reverse_proxy_headers_only_from_trusted_proxies(tmp_path: Path) -> None:
    public = "https://hub.example.com/crm"
    for trusted, expected in ((["127.0.0.0/8"], 200), ([], 403)):
        async with twilio_hub(
            tmp_path / str(expected), overrides={"server.public_url": None, "server.trusted_proxies": trusted}
        ) as t:
            local = str(t.server.make_url("/webhooks/twilio/sms"))
            signed_url = "https://hub.example.com/webhooks/twilio/sms"
            params = _inbound(new_sid(), "via proxy")
            headers = {
                "X-Twilio-Signature": sign(TOKEN, signed_url, params),
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "hub.example.com",
            }
            async with t.http.post(local, data=params, headers=headers) as r:
                assert r.status == expected, await r.text()
    # A public URL with a path prefix (the proxy strips /crm) is what Twilio signs.
    async with twilio_hub(tmp_path / "prefix", overrides={"server.public_url": public}) as t:
        local = str(t.server.make_url("/webhooks/twilio/sms"))
        params = _inbound(new_sid(), "prefixed")
        sig = sign(TOKEN, public + "/webhooks/twilio/sms", params)
        async with t.http.post(local, data=params, headers={"X-Twilio-Signature": sig}) as r:
            assert r.status == 200
        # The hub's own address is not what Twilio was told to call.
        async with t.http.post(local, data=params, headers={"X-Twilio-Signature": sign(TOKEN, local, params)}) as r:
            assert r.status == 403


async def test_opt_out_flow(tmp_path: Path) -> None:
    # No stop_reply: nothing the hub sends after the opt-out may reach Twilio.
    overrides = {"twilio.opt_out.start_reply": {"en": "Welcome back!"}, "twilio.opt_out.stop_reply": {}}
    async with twilio_hub(tmp_path, overrides=overrides) as t:
        agent = await t.agent()
        assert await t.sms("Hello", sid=new_sid()) == 200
        ticket = await ticket_of(t, agent)
        assert await t.sms(" لغو ", sid=new_sid()) == 200

        async def opted_out() -> bool:
            async with t.hub.db.read() as s:
                row = await s.scalar(select(SmsOptOut).where(SmsOptOut.phone == CUSTOMER))
                return row is not None and row.opted_out

        await eventually(opted_out)
        detail = await agent.get(f"/api/v1/tickets/{ticket['id']}")
        assert "لغو" in [m["body"].strip() for m in detail["messages"]]  # the keyword is still shown
        note = detail["messages"][-1]
        assert note["private"] and "opted out" in note["body"]
        reply = await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "Are you sure?"}, status=201)

        async def failed() -> dict[str, Any] | None:
            msgs = (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"]
            m = next(m for m in msgs if m["id"] == reply["id"])
            return m if m["status"] == "failed" else None

        refused = await eventually(failed)
        assert "opted out of SMS from +15550001111" in refused["status_reason"]
        assert "START" in refused["status_reason"]
        assert t.fake.messages == []  # never reached Twilio
        # Back in: START is confirmed (start_reply), and HELP is answered.
        assert await t.sms("start", sid=new_sid()) == 200
        await eventually(lambda: _sent(t.fake, 1))
        assert t.fake.messages[0]["body"] == "Welcome back!"
        assert await t.sms("HELP", sid=new_sid()) == 200
        await eventually(lambda: _sent(t.fake, 2))
        assert t.fake.messages[1]["body"].startswith("Reply STOP to unsubscribe")
        # A redelivered keyword does not answer twice.
        await t.hub.sender.sweep_once()
        assert len(t.fake.messages) == 2


async def test_help_is_answered_in_the_language_the_customer_writes_or_is_stored(tmp_path: Path) -> None:
    other = "+15557770000"
    async with twilio_hub(tmp_path) as t:
        # A Persian customer texts the Latin keyword the hub advertises.
        assert await t.sms("سلام، سفارش من کجاست؟", sid=new_sid()) == 200
        assert await t.sms("HELP", sid=new_sid()) == 200
        await eventually(lambda: _sent(t.fake, 1))
        assert t.fake.messages[0]["body"].startswith("برای لغو اشتراک")
        # A contact who never wrote before: the language stored on them.
        assert await t.sms("INFO", sid=new_sid(), frm=other) == 200
        await eventually(lambda: _sent(t.fake, 2))
        assert t.fake.messages[1]["body"].startswith("Reply STOP")
        async with t.hub.db.write() as s:
            contact = await s.scalar(
                select(Contact).join(Identity, Identity.contact_id == Contact.id).where(Identity.address == other)
            )
            assert contact is not None
            contact.attributes = {**contact.attributes, "language": "fa"}
        assert await t.sms("HELP", sid=new_sid(), frm=other) == 200
        await eventually(lambda: _sent(t.fake, 3))
        assert t.fake.messages[2]["body"].startswith("برای لغو اشتراک")


async def test_twilio_21610_in_a_callback_marks_the_contact_opted_out(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        t.fake.callback_statuses = ()
        agent = await t.agent()
        assert await t.sms("Hello", sid=new_sid()) == 200
        ticket = await ticket_of(t, agent)
        out = await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "Hi"}, status=201)
        await eventually(lambda: _sent(t.fake, 1))
        sid = t.fake.messages[0]["sid"]
        callback = t.url(f"/webhooks/twilio/sms/status?message={out['id']}")
        base = {"MessageSid": sid, "AccountSid": ACCOUNT, "From": NUMBER, "To": CUSTOMER}
        # Out of order: delivered arrives first, then a stale "sent".
        assert await t.fake.post_webhook(callback, {**base, "MessageStatus": "delivered"}, TOKEN) == 204
        assert await t.fake.post_webhook(callback, {**base, "MessageStatus": "sent"}, TOKEN) == 204
        assert await t.fake.post_webhook(callback, {**base, "MessageStatus": "queued"}, TOKEN) == 204
        msgs = (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"]
        assert next(m for m in msgs if m["id"] == out["id"])["status"] == "delivered"
        # A second reply fails at the carrier with 21610.
        second = await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "More"}, status=201)
        await eventually(lambda: _sent(t.fake, 2))
        sid2 = t.fake.messages[1]["sid"]
        failed = {**base, "MessageSid": sid2, "MessageStatus": "failed", "ErrorCode": "21610"}
        assert await t.fake.post_webhook(t.url("/webhooks/twilio/sms/status"), failed, TOKEN) == 204
        msgs = (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"]
        m2 = next(m for m in msgs if m["id"] == second["id"])
        assert m2["status"] == "failed"
        assert m2["status_reason"].startswith("Twilio error 21610")
        async with t.hub.db.read() as s:
            row = await s.scalar(select(SmsOptOut))
        assert row is not None and (row.phone, row.sender, row.opted_out) == (CUSTOMER, NUMBER, True)
        # A forged callback changes nothing.
        forged = {**base, "MessageStatus": "failed", "ErrorCode": "30003"}
        async with t.http.post(callback, data=forged, headers={"X-Twilio-Signature": "AAAA"}) as r:
            assert r.status == 403


@pytest.mark.parametrize("frm", ["+15550009999", "+15550002222"])
async def test_a_status_callback_another_account_signs_changes_nothing(tmp_path: Path, frm: str) -> None:
    """The subaccount's token is a valid signature, and From and AccountSid are
    the caller's to write (a number no sender has, or the subaccount's own): it
    still may not fail, or opt out a customer of, a message the main account sent."""
    env = {"SALES_SID": SUB_ACCOUNT, "SALES_TOKEN": SUB_TOKEN}
    senders = [
        {"inbox": "sms", "number": NUMBER},
        {"inbox": "sales", "number": "+15550002222", "account_sid_env": "SALES_SID", "auth_token_env": "SALES_TOKEN"},
    ]
    async with twilio_hub(tmp_path, env=env, overrides={"twilio.senders": senders}) as t:
        t.fake.callback_statuses = ()
        agent = await t.agent()
        assert await t.sms("Hello", sid=new_sid()) == 200
        ticket = await ticket_of(t, agent)
        out = await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "Hi"}, status=201)
        await eventually(lambda: _sent(t.fake, 1))
        sid = t.fake.messages[0]["sid"]
        forged = {
            "MessageSid": sid,
            "AccountSid": SUB_ACCOUNT,
            "From": frm,
            "To": CUSTOMER,
            "MessageStatus": "failed",
            "ErrorCode": "21610",
        }
        # With our id in the URL, and by the SID alone.
        for url in (f"/webhooks/twilio/sms/status?message={out['id']}", "/webhooks/twilio/sms/status"):
            assert await t.fake.post_webhook(t.url(url), forged, SUB_TOKEN) == 403
        async with t.hub.db.read() as s:
            msg = await s.get(Message, out["id"])
            opt_outs = (await s.scalars(select(SmsOptOut))).all()
        assert msg is not None
        assert (msg.status, msg.extras.get("error_code"), opt_outs) == ("sent", None, [])
        # The account that sent it is heard.
        genuine = {**forged, "AccountSid": ACCOUNT, "From": NUMBER, "MessageStatus": "delivered", "ErrorCode": ""}
        assert await t.fake.post_webhook(t.url("/webhooks/twilio/sms/status"), genuine, TOKEN) == 204
        async with t.hub.db.read() as s:
            msg = await s.get(Message, out["id"])
        assert msg is not None and msg.status == "delivered"


async def test_a_campaign_send_another_account_signs_for_is_left_alone(tmp_path: Path) -> None:
    env = {"SALES_SID": SUB_ACCOUNT, "SALES_TOKEN": SUB_TOKEN}
    senders = [
        {"inbox": "sms", "number": NUMBER},
        {"inbox": "sales", "number": "+15550002222", "account_sid_env": "SALES_SID", "auth_token_env": "SALES_TOKEN"},
    ]
    overrides = {"twilio.senders": senders, "campaigns.quiet_hours": None}
    async with twilio_hub(tmp_path, env=env, overrides=overrides) as t:
        t.fake.callback_statuses = ()
        (phone,) = us_numbers(1)
        await seed_contacts(t.hub.db, [phone])
        agent = await t.agent()
        campaign = await agent.post(
            "/api/v1/campaigns",
            {"name": "Sale", "sender": "sms", "template": "Sale today", "audience": {"kind": "segment"}},
            status=201,
        )
        await agent.post(f"/api/v1/campaigns/{campaign['id']}/start", {}, status=200)
        await eventually(lambda: _sent(t.fake, 1))

        async def recipient() -> CampaignRecipient | None:
            async with t.hub.db.read() as s:
                row = await s.scalar(select(CampaignRecipient))
            return row if row is not None and row.external_id else None

        before = await eventually(recipient)
        forged = {
            "MessageSid": str(before.external_id),
            "AccountSid": SUB_ACCOUNT,
            "From": "+15550009999",
            "To": phone,
            "MessageStatus": "failed",
            "ErrorCode": "21610",
        }
        url = t.url(f"/webhooks/twilio/sms/status?campaign_recipient={before.id}")
        assert await t.fake.post_webhook(url, forged, SUB_TOKEN) == 403
        async with t.hub.db.read() as s:
            after = await s.get(CampaignRecipient, before.id)
            opt_outs = (await s.scalars(select(SmsOptOut))).all()
        assert after is not None
        assert (after.status, after.error_code, opt_outs) == (before.status, None, [])


async def test_a_short_code_sender_receives_answers_and_hears_receipts(tmp_path: Path) -> None:
    senders = [{"inbox": "sc", "number": "89898"}]
    async with twilio_hub(tmp_path, env={"TWILIO_PHONE_NUMBER": ""}, overrides={"twilio.senders": senders}) as t:
        # A short code places no calls: it is no caller ID.
        assert t.hub.twilio is not None and t.hub.twilio.caller_id is None
        assert await t.sms("Hello", sid=new_sid(), to="89898") == 200
        agent = await t.agent()
        ticket = await ticket_of(t, agent)
        assert ticket["inbox"] == "sc"
        out = await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "Hi"}, status=201)

        async def delivered() -> bool:
            detail = await agent.get(f"/api/v1/tickets/{ticket['id']}")
            return bool(next(m for m in detail["messages"] if m["id"] == out["id"])["status"] == "delivered")

        # The fake's status callbacks come From the short code, signed by the main account.
        await eventually(delivered)
        (sent,) = t.fake.messages
        assert (sent["from"], sent["to"]) == ("89898", CUSTOMER)
        receipts = [(params["From"], status) for url, params, status in t.fake.callbacks if "/sms/status" in url]
        assert receipts == [("89898", 204), ("89898", 204)]


async def test_send_failure_is_retried_then_succeeds(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent = await t.agent()
        assert await t.sms("Hello", sid=new_sid()) == 200
        ticket = await ticket_of(t, agent)
        t.fake.fail_next(500, 20500)
        t.fake.fail_next(429, 20429)
        out = await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "Retry me"}, status=201)

        async def settled() -> dict[str, Any] | None:
            msgs = (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"]
            m = next(m for m in msgs if m["id"] == out["id"])
            return m if m["status"] in ("sent", "delivered") else None

        done = await eventually(settled)
        assert done["external_id"] == t.fake.messages[0]["sid"]
        posts = [r for r in t.fake.requests if r.path.endswith("Messages.json") and r.method == "POST"]
        assert len(posts) == 3
        assert len(t.fake.messages) == 1


@pytest.mark.parametrize("callbacks", [(), ("queued",)], ids=["no-callback", "queued-callback-first"])
async def test_a_reply_twilio_took_without_answering_in_time_is_sent_once(
    tmp_path: Path, callbacks: tuple[str, ...]
) -> None:
    # Without status callbacks the hub learns of the send only by asking
    # Twilio. With them, "queued" stores the SID on the message before the
    # late answer: the retry finds that SID is its own message's, not
    # another's, and does not send again either.
    async with FakeTwilio({ACCOUNT: TOKEN, SUB_ACCOUNT: SUB_TOKEN}, callback_statuses=callbacks) as fake:
        overrides = {"twilio.request_timeout_seconds": 0.3}
        async with twilio_hub(tmp_path, fake=fake, overrides=overrides) as t:
            agent = await t.agent()
            assert await t.sms("Hello", sid=new_sid()) == 200
            ticket = await ticket_of(t, agent)
            t.fake.stall_next(1.0)
            out = await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": "Only once"}, status=201)

            async def settled() -> dict[str, Any] | None:
                msgs = (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"]
                m = next(m for m in msgs if m["id"] == out["id"])
                return m if m["status"] not in ("queued", "sending") else None

            done = await eventually(settled)
            await t.fake.settled()
            assert t.fake.sends_to(CUSTOMER) == 1
            assert (done["status"], done["external_id"]) == ("sent", t.fake.messages[0]["sid"])
            assert "not sent again" in done["status_reason"]
            methods = [r.method for r in t.fake.requests if r.path.endswith("/Messages.json")]
            assert methods == ["POST", "GET"]
            receipts = [(p["MessageStatus"], status) for url, p, status in t.fake.callbacks if "/status" in url]
            assert receipts == [(status, 204) for status in callbacks]


async def test_long_replies_are_several_messages_each_with_its_own_status(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent = await t.agent()
        assert await t.sms("Tell me everything", sid=new_sid()) == 200
        ticket = await ticket_of(t, agent)
        body = "Our delivery terms are simple and fair. " * 60  # ~2,400 characters
        await agent.post(f"/api/v1/tickets/{ticket['id']}/messages", {"body": body}, status=201)
        await eventually(lambda: _sent(t.fake, 2))

        async def both_delivered() -> list[dict[str, Any]] | None:
            msgs = [
                m for m in (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"] if m["direction"] == "out"
            ]
            return msgs if len(msgs) == 2 and all(m["status"] == "delivered" for m in msgs) else None

        parts = await eventually(both_delivered)
        assert [m["external_id"] for m in parts] == [m["sid"] for m in t.fake.messages]
        assert all(len(m["body"]) <= 1600 for m in t.fake.messages)
        assert " ".join(m["body"] for m in t.fake.messages).split() == body.split()


async def test_numbered_quick_replies_map_back(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        agent = await t.agent()
        assert await t.sms("price?", sid=new_sid()) == 200
        ticket = await ticket_of(t, agent)
        assert await t.sms("۲", sid=new_sid()) == 200  # nothing offered yet: just "2"
        async with t.hub.db.write() as s:
            row = await s.get(Ticket, ticket["id"])
            assert row is not None
            await do_post_message(
                s,
                row,
                body="Did you mean:",
                author=Author.BOT,
                quick_replies=[QuickReply(id="faq:prices", title="Prices"), QuickReply(id="faq:hours", title="Hours")],
            )
        await eventually(lambda: _sent(t.fake, 1))
        assert t.fake.messages[0]["body"] == "Did you mean:\n\n1) Prices\n2) Hours"
        assert await t.sms("۲", sid=new_sid()) == 200
        msgs = (await agent.get(f"/api/v1/tickets/{ticket['id']}"))["messages"]
        plain, chosen = [m for m in msgs if m["direction"] == "in"][1:]
        assert (plain["body"], plain["quick_reply"]) == ("۲", None)
        assert (chosen["body"], chosen["quick_reply"]) == ("Hours", "faq:hours")


async def test_mms_media_are_copied_into_the_attachment_store(tmp_path: Path) -> None:
    async with twilio_hub(tmp_path) as t:
        picture = b"\x89PNG\r\n\x1a\n" + b"x" * 100
        url = t.fake.add_media(ACCOUNT, "Messages/MM1/Media", picture, "image/png")
        status = await t.sms("", sid=new_sid("MM"), NumMedia="1", MediaUrl0=url, MediaContentType0="image/png")
        assert status == 200
        agent = await t.agent()

        async def copied() -> dict[str, Any] | None:
            ticket = await ticket_of(t, agent)
            att = ticket["messages"][0]["attachments"]
            return att[0] if att and att[0]["url"].startswith("/attachments/") else None

        att = await eventually(copied)
        assert att["content_type"] == "image/png" and att["size"] == len(picture)
        async with t.http.get(str(t.server.make_url(att["url"]))) as r:
            assert r.status == 200
            assert await r.read() == picture


async def test_make_run_with_only_the_three_variables(tmp_path: Path) -> None:
    """TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER alone give an SMS inbox."""
    from hub.config import load_config

    cfg = load_config(
        path=None,
        env={"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_PHONE_NUMBER": "+1 (555) 000-1111"},
        overrides={"data_dir": str(tmp_path)},
    )
    (sender,) = cfg.twilio.senders
    assert (sender.inbox, sender.number) == ("sms", NUMBER)
    assert cfg.twilio.credentials(sender) == (ACCOUNT, TOKEN)
