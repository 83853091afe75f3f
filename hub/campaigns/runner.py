"""The sending loop, run by worker processes (role ``all`` / ``worker``) and by
``crm-hub campaign send``.

Exactly once per recipient, whatever dies when:

1. **claim** a batch of ``pending`` rows that are due (quiet hours, backoff):
   ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, then a lease (``claimed_by``,
   ``lease_until``) so other workers pass them by after the commit. A worker
   that dies now only delays them: the lease lapses and another takes them.
2. book the next few rows' turns with the sender's **pacer** (segments /
   rate, shared by all workers) and wait for the first, the rows still
   ``pending`` and claimed (the claim is extended when the turn comes late).
3. mark those rows ``sending`` **in their own commit**, conditional on the
   campaign still running and the claim still being ours (a pause or a cancel
   takes effect here, at once), with a send lease that runs from the last of
   their turns: a row never waits for the rate while ``sending``, where
   another worker would take it for a send that died once its lease is over.
4. hand each to Twilio at its turn (``send_sms``: the opt-out ledger is asked
   first, so a STOP that arrived a moment ago is honoured), and only while
   its send lease still has half of it to run, else only once the database
   confirms that the row is still this worker's and ``sending`` (then its
   lease starts again).
5. record the outcomes in batched commits: ``sent`` with the SID, ``failed``
   with Twilio's error code, ``skipped`` (opted out), back to ``pending`` with a
   backoff when Twilio refused for its rate (429) or could not be reached at
   all (refused connection, DNS: nothing was sent), ``uncertain`` when nobody
   can tell whether Twilio took it (a timeout, a connection dropped mid-answer,
   a 5xx). While Twilio cannot be reached the worker holds off, longer each
   time; after ``UNREACHABLE_PAUSE_AFTER`` such rounds in a row it pauses the
   campaign and says why (``status_reason``).

A row marked ``sending`` that was never handed to Twilio (the worker was
stopped while it waited for its turn, or held off) goes back to ``pending``
(``skipped`` if the campaign was cancelled meanwhile).

A row still ``sending`` after ``send_lease_seconds`` belonged to a worker that
died between steps 3 and 5: it is marked ``uncertain``.

6. **settle** ``uncertain`` rows, never resending blindly: once Twilio has long
   finished with the request (``reconcile_after_seconds``), the worker asks
   Twilio's message list for this number from this sender. A message with the
   same body, created since the campaign started and not already another row's
   or message's, is the send (``sent``, its SID); none means Twilio never took
   it, and the row goes back to ``pending`` to be sent. A lookup Twilio cannot
   answer is tried again later (``RECONCILE_LOOKUPS`` times, backing off), then
   the row stays ``uncertain``, shown with the reason. A status callback, if
   Twilio sends one, settles it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from channels.twilio_common import NOT_REACHED, OPT_OUT_CODE, RETRYABLE_CODES
from channels.twilio_sms import SmsSender, classify_keyword
from hub.actions import audit
from hub.campaigns.actions import (
    CANCELLED,
    COMPLETED,
    DELIVERED,
    FAILED,
    PAUSED,
    PENDING,
    RUNNING,
    SCHEDULED,
    SENDING,
    SENT,
    SKIPPED,
    UNCERTAIN,
    UNDELIVERED,
    counts,
    release_claims,
    unfinished,
)
from hub.campaigns.audience import sms_consent
from hub.campaigns.schedule import MIN_RATE_PER_SECOND, Pacer, quiet_until
from hub.config import CampaignsConfig
from hub.core import DeliveryReceipt, DeliveryStatus, InboundMessage, utcnow
from hub.stream.base import Event, LiveBus
from hub.telephony import TwilioService
from hub.telephony.ledger import do_set_opt_out
from hub.workers import AGENTS_CHANNEL
from storage.db import Database
from storage.ingest import table
from storage.models import Campaign, CampaignRecipient, Contact, Message
from storage.queries import parse_id

log = logging.getLogger(__name__)

CALLBACK_PARAM = "campaign_recipient"
# Rounds of sends that could not reach Twilio at all, in a row, before a campaign pauses.
UNREACHABLE_PAUSE_AFTER = 6
# How long a worker holds off after the first such round (doubled each round, at most a minute).
UNREACHABLE_BACKOFF_SECONDS = 1.0
# Lookups of an uncertain send Twilio could not answer before it is left uncertain for good.
RECONCILE_LOOKUPS = 5
# Uncertain rows one worker looks up per round, and at once.
RECONCILE_BATCH = 50
RECONCILE_CONCURRENCY = 8
# How stale a sending loop's idea of its campaign's status may be (a pause or cancel).
STATUS_CHECK_SECONDS = 0.1
# How recipients' statuses rank, so late or out-of-order receipts never move one back.
_RANK = {PENDING: 0, SENDING: 1, UNCERTAIN: 2, SENT: 3, UNDELIVERED: 4, FAILED: 4, DELIVERED: 5}
_RECEIPT_STATUS = {
    DeliveryStatus.SENT: SENT,
    DeliveryStatus.DELIVERED: DELIVERED,
    DeliveryStatus.READ: DELIVERED,
    DeliveryStatus.UNDELIVERED: UNDELIVERED,
    DeliveryStatus.FAILED: FAILED,
}


@dataclass(slots=True)
class Work:
    id: int
    contact_id: int
    phone: str
    body: str
    segments: int
    timezones: list[str]
    attempts: int
    # The round of sends it went out in (see CampaignRunner._unreachable).
    wave: int = 0
    # Until when this worker holds the row, as written in the database: its
    # claim while ``pending``, its send lease once ``sending``.
    lease_until: datetime | None = None


class CampaignRunner:
    def __init__(
        self,
        db: Database,
        twilio: TwilioService | None,
        config: CampaignsConfig,
        *,
        owner: str,
        live: LiveBus | None = None,
    ) -> None:
        self.db = db
        self.twilio = twilio
        self.config = config
        self.owner = owner
        self.live = live
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._pacers: dict[tuple[str, float], Pacer] = {}
        self._wake = asyncio.Event()
        self._results: list[dict[str, Any]] = []
        self._published: dict[int, float] = {}
        self._active: set[int] = set()
        self.unreachable_pause_after = UNREACHABLE_PAUSE_AFTER
        self.unreachable_backoff = UNREACHABLE_BACKOFF_SECONDS
        # Per campaign, while Twilio cannot be reached: rounds failed in a row,
        # the current round (sends that were in flight together fail together
        # and count once), no send before this (monotonic), and why to pause.
        self._unreachable: dict[int, int] = {}
        self._wave: dict[int, int] = {}
        self._hold: dict[int, float] = {}
        self._pause_reason: dict[int, str] = {}
        # Per campaign: no lookup of uncertain sends before this (monotonic).
        self._next_reconcile: dict[int, float] = {}
        # Per campaign: when its status was last read (monotonic), and whether it was running.
        self._status_checked: dict[int, tuple[float, bool]] = {}

    # --- the worker loop -------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Forever: start scheduled campaigns that are due, settle abandoned
        sends, and run every running campaign (each in its own task)."""
        try:
            while True:
                try:
                    await self.tick()
                except Exception:
                    log.exception("campaign runner tick failed")
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
        finally:
            for task in self._tasks.values():
                task.cancel()
            for task in list(self._tasks.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def tick(self) -> list[int]:
        now = utcnow()
        async with self.db.write() as session:
            await session.execute(
                update(Campaign)
                .where(Campaign.status == SCHEDULED, Campaign.scheduled_at <= now)
                .values(status=RUNNING, started_at=func.coalesce(Campaign.started_at, now))
                .execution_options(synchronize_session=False)
            )
            await mark_abandoned(session)
        async with self.db.read() as session:
            running = list((await session.scalars(select(Campaign.id).where(Campaign.status == RUNNING))).all())
        for cid in running:
            task = self._tasks.get(cid)
            if task is None or task.done():
                self._tasks[cid] = asyncio.create_task(self._run_logged(cid), name=f"campaign-{cid}")
        return running

    async def _run_logged(self, campaign_id: int) -> None:
        try:
            await self.run_campaign(campaign_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("campaign %s: sending loop failed; the next tick restarts it", campaign_id)

    async def run_campaign(self, campaign_id: int, *, until_idle: bool = False) -> str:
        """Send campaign ``campaign_id`` until it is done, paused or cancelled
        (``until_idle``: also return when nothing is due now). Returns its status."""
        flusher = asyncio.create_task(self._flush_loop())
        self._active.add(campaign_id)
        # Shared by the batches: the next batch is claimed while the last one's
        # sends are still in flight, so sending never drains to zero between them.
        slots = asyncio.Semaphore(self.config.concurrency)
        inflight: set[asyncio.Task[None]] = set()
        self._forget_outage(campaign_id)
        try:
            while True:
                reason = self._pause_reason.pop(campaign_id, None)
                if reason is not None:
                    log.error("campaign %s: pausing it: %s", campaign_id, reason)
                    await self._pause(campaign_id, reason)
                async with self.db.read() as session:
                    campaign = await session.get(Campaign, campaign_id)
                if campaign is None:
                    return "missing"
                if campaign.status != RUNNING:
                    return campaign.status
                sender = self._sender(campaign)
                if sender is None:
                    log.error("campaign %s: sender %s is not configured; pausing it", campaign_id, campaign.sender)
                    await self._pause(
                        campaign_id, f"sender {campaign.sender} is not configured (twilio.senders, TWILIO_PHONE_NUMBER)"
                    )
                    return PAUSED
                held = self._hold.get(campaign_id, 0.0) - time.monotonic()
                if held > 0:
                    # Twilio could not be reached: the rest of the claimed batch is
                    # left to others meanwhile; wait, but keep an eye on pause / cancel.
                    async with self.db.write() as session:
                        await release_claims(session, campaign_id, self.owner)
                    await asyncio.sleep(min(held, self.config.poll_seconds))
                    continue
                if time.monotonic() >= self._next_reconcile.get(campaign_id, 0.0):
                    self._next_reconcile[campaign_id] = time.monotonic() + self.config.poll_seconds
                    await self._reconcile(campaign, sender)
                rate = min(campaign.rate_per_second or sender.messages_per_second, sender.messages_per_second)
                if not rate >= MIN_RATE_PER_SECOND:  # NaN too
                    # The pacer cannot pace it (it overflows), and retrying never
                    # helps: said once, not failed on every tick for ever.
                    reason = (
                        f"its rate, {rate:g} segments per second, is below the slowest a campaign may go "
                        f"({MIN_RATE_PER_SECOND:g}): raise twilio.senders[].messages_per_second of {sender.key} "
                        "and start it again, or cancel it and create it again with a rate_per_second of at "
                        f"least {MIN_RATE_PER_SECOND:g}"
                    )
                    log.error("campaign %s: pausing it: %s", campaign_id, reason)
                    await self._pause(campaign_id, reason)
                    return PAUSED
                batch = await self._claim(campaign, rate)
                if not batch and inflight:
                    await asyncio.gather(*inflight, return_exceptions=True)
                    await self._flush()
                    continue
                if not batch:
                    status, wait = await self._idle(campaign_id)
                    if status is not None:
                        return status
                    if until_idle:
                        return RUNNING
                    await asyncio.sleep(wait)
                    continue
                await self._send_batch(campaign, sender, rate, batch, slots, inflight)
        finally:
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            self._forget_outage(campaign_id)
            self._active.discard(campaign_id)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await self._flush()
            async with self.db.write() as session:
                await release_claims(session, campaign_id, self.owner)

    def _forget_outage(self, campaign_id: int) -> None:
        for state in (
            self._unreachable,
            self._wave,
            self._hold,
            self._pause_reason,
            self._next_reconcile,
            self._status_checked,
        ):
            state.pop(campaign_id, None)

    async def _pause(self, campaign_id: int, reason: str) -> None:
        """Running -> paused by the runner itself, the reason in the audit log
        (the campaign's ``status_reason``)."""
        async with self.db.write() as session:
            done = await session.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id, Campaign.status == RUNNING)
                .values(status=PAUSED)
                .returning(Campaign.id)
            )
            if done.scalar_one_or_none() is not None:
                await audit(session, "system", "campaign.paused", "campaign", campaign_id, {"reason": reason})
        await self._publish(campaign_id, force=True)

    def _sender(self, campaign: Campaign) -> SmsSender | None:
        if self.twilio is None:
            return None
        return self.twilio.sms.sender_by_key(campaign.sender)

    def _pacer(self, sender: SmsSender, rate: float) -> Pacer:
        key = (sender.key, rate)
        if key not in self._pacers:
            self._pacers[key] = Pacer(self.db, sender.key, rate)
        return self._pacers[key]

    # --- 1. claim ----------------------------------------------------------------------

    async def _claim(self, campaign: Campaign, rate: float) -> list[Work]:
        now = utcnow()
        c = CampaignRecipient
        # Never hold more than a third of a lease's worth of sending at this rate.
        size = max(1, min(self.config.claim_batch, int(rate * self.config.claim_lease_seconds / 3)))
        lease_until = now + timedelta(seconds=self.config.claim_lease_seconds)
        async with self.db.write() as session:
            stmt = (
                select(c.id)
                .where(
                    c.campaign_id == campaign.id,
                    c.status == PENDING,
                    or_(c.not_before.is_(None), c.not_before <= now),
                    or_(c.lease_until.is_(None), c.lease_until < now),
                )
                .order_by(c.id)
                .limit(size)
            )
            if not self.db.is_sqlite:
                stmt = stmt.with_for_update(skip_locked=True)
            ids = list((await session.scalars(stmt)).all())
            if not ids:
                return []
            await session.execute(
                update(c)
                .where(c.id.in_(ids))
                .values(claimed_by=self.owner, lease_until=lease_until)
                .execution_options(synchronize_session=False)
            )
            rows = (
                await session.execute(
                    select(c.id, c.contact_id, c.phone, c.body, c.segments, c.timezones, c.attempts)
                    .where(c.id.in_(ids))
                    .order_by(c.id)
                )
            ).all()
        work = [
            Work(
                r.id,
                r.contact_id,
                r.phone,
                r.body,
                r.segments,
                list(r.timezones or []),
                r.attempts,
                lease_until=lease_until,
            )
            for r in rows
        ]
        return await self._screen(campaign, work)

    async def _screen(self, campaign: Campaign, work: list[Work]) -> list[Work]:
        """Leave out recipients in their quiet hours (due again when those end),
        numbers that opted out and contacts whose SMS consent was withdrawn
        since the audience was chosen."""
        now = utcnow()
        later: list[dict[str, Any]] = []
        keep: list[Work] = []
        quiet = campaign.quiet_hours
        for w in work:
            until = quiet_until(now, w.timezones, quiet["start"], quiet["end"]) if quiet else None
            if until is not None:
                later.append({"rid": w.id, "nb": until})
            else:
                keep.append(w)
        assert self.twilio is not None
        opted = await self.twilio.ledger.opted_out_numbers(campaign.sender, [w.phone for w in keep]) if keep else set()
        withdrawn = await self._without_consent(keep) if keep else set()
        c = table(CampaignRecipient)
        async with self.db.write() as session:
            if later:
                await session.execute(
                    update(c)
                    .where(c.c.id == bindparam("rid"), c.c.status == PENDING)
                    .values(not_before=bindparam("nb"), claimed_by=None, lease_until=None)
                    .execution_options(synchronize_session=False),
                    later,
                )
            # A number that did both stays opted out: the second update finds it skipped.
            for reason, ids in (
                ("opted_out", [w.id for w in keep if w.phone in opted]),
                ("no_consent", [w.id for w in keep if w.contact_id in withdrawn]),
            ):
                if ids:
                    await session.execute(
                        update(c)
                        .where(c.c.id.in_(ids), c.c.status == PENDING)
                        .values(status=SKIPPED, reason=reason, claimed_by=None, lease_until=None)
                        .execution_options(synchronize_session=False)
                    )
        return [w for w in keep if w.phone not in opted and w.contact_id not in withdrawn]

    async def _without_consent(self, work: list[Work]) -> set[int]:
        """The contacts of ``work`` that may no longer be sent to: consent
        withdrawn after the audience was chosen, whatever
        ``campaigns.require_consent`` says, and with it also those whose
        consent was removed."""
        async with self.db.read() as session:
            rows = await session.execute(
                select(Contact.id, Contact.attributes).where(Contact.id.in_({w.contact_id for w in work}))
            )
            return {
                cid
                for cid, attributes in rows
                if (consent := sms_consent(attributes)) is False or (self.config.require_consent and consent is None)
            }

    async def _idle(self, campaign_id: int) -> tuple[str | None, float]:
        """Nothing to claim: is the campaign done (-> completed), or when is the
        next recipient due?"""
        c = CampaignRecipient
        async with self.db.write() as session:
            # Rows an earlier run left ``sending`` (it died mid-send) would
            # otherwise be waited for forever when no worker's tick runs (the CLI).
            await mark_abandoned(session, campaign_id)
            # Uncertain rows still to be looked up in Twilio may yet be sent.
            left = await session.scalar(
                select(func.count()).select_from(c).where(c.campaign_id == campaign_id, unfinished())
            )
            if not left:
                done = await session.execute(
                    update(Campaign)
                    .where(Campaign.id == campaign_id, Campaign.status == RUNNING)
                    .values(status=COMPLETED, completed_at=utcnow())
                    .returning(Campaign.id)
                )
                if done.scalar_one_or_none() is not None:
                    log.info("campaign %s completed", campaign_id)
                await self._publish(campaign_id, force=True)
                return COMPLETED, 0.0
            nxt = await session.scalar(
                select(func.min(c.not_before)).where(
                    c.campaign_id == campaign_id,
                    or_(c.status == PENDING, and_(c.status == UNCERTAIN, c.not_before.is_not(None))),
                )
            )
        wait = self.config.poll_seconds
        if nxt is not None:
            wait = min(max((nxt - utcnow()).total_seconds(), 0.05), self.config.poll_seconds)
        return None, wait

    # --- 2-4. pace, mark sending, send --------------------------------------------------

    async def _send_batch(
        self,
        campaign: Campaign,
        sender: SmsSender,
        rate: float,
        batch: list[Work],
        slots: asyncio.Semaphore,
        inflight: set[asyncio.Task[None]],
    ) -> None:
        """Launch every send of ``batch`` (each marked ``sending`` first), at
        most ``concurrency`` in flight; returns without waiting for the last
        ones, which the caller awaits before it finishes."""
        pacer = self._pacer(sender, rate)
        # Rows are marked ``sending`` a chunk at a time (one commit each), at
        # most half a second of this sender's rate and one window ahead of what
        # is in flight: few commits at high rates, and few rows that a crash
        # could leave uncertain at any rate (1 MPS: one at a time).
        chunk_size = max(1, min(self.config.concurrency, int(rate * 0.5)))
        for start in range(0, len(batch), chunk_size):
            if self._held(campaign.id) or not await self._still_running(campaign.id):
                return
            chunk = batch[start : start + chunk_size]
            # Their turns first (monotonic), then the wait for the first of them,
            # as ``pending``: the rate's wait (other workers on this sender share
            # it) may be longer than any send lease, and a ``sending`` row whose
            # lease is over is taken for a send that died and sent again.
            turns = {w.id: time.monotonic() + await pacer.book(w.segments) for w in chunk}
            kept = await self._keep_claims(campaign.id, chunk, turns[chunk[0].id])
            await asyncio.sleep(max(0.0, turns[chunk[0].id] - time.monotonic()))
            # The lease runs from the chunk's last turn: waiting for its turn, a
            # row of the chunk is still as good as in flight.
            lease = max(0.0, turns[chunk[-1].id] - time.monotonic()) + self.config.send_lease_seconds
            marked = await self._mark_sending(campaign.id, [w for w in chunk if w.id in kept], lease)
            # Marked but not yet handed to a send task: Twilio has not seen these.
            waiting = [w for w in chunk if w.id in marked]
            try:
                while waiting:
                    w = waiting[0]
                    await asyncio.sleep(max(0.0, turns[w.id] - time.monotonic()))
                    if self._held(campaign.id) or not await self._still_running(campaign.id):
                        break
                    await slots.acquire()
                    if self._held(campaign.id):  # a send failed to reach Twilio while this one waited
                        slots.release()
                        break
                    w.wave = self._wave.get(campaign.id, 0)
                    task = asyncio.create_task(self._send_one(campaign, sender, w, slots))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                    waiting.pop(0)
            finally:
                # Stopped (cancelled: SIGTERM, Ctrl-C) or holding off: never sent, so not uncertain.
                if waiting:
                    await self._unmark(campaign.id, waiting)
            if waiting or len(marked) != len(chunk):
                return  # holding off, paused, cancelled, or the claim lapsed: the caller sees which

    async def _keep_claims(self, campaign_id: int, rows: list[Work], turn: float) -> set[int]:
        """The ids of ``rows`` still claimed by this worker when their first
        turn (``turn``, monotonic) comes. A claim that would end less than a
        third of a claim lease after it is extended to a whole one after it:
        other workers on the sender (or long messages) can put the turn past
        the claim, and another worker taking the rows meanwhile would book
        turns of its own and lose them in turn, nobody ever sending them."""
        lease = self.config.claim_lease_seconds
        at = utcnow() + timedelta(seconds=max(0.0, turn - time.monotonic()))
        ends = min((w.lease_until for w in rows if w.lease_until is not None), default=None)
        if ends is not None and ends >= at + timedelta(seconds=lease / 3):
            return {w.id for w in rows}
        c = CampaignRecipient
        return await self._lease(rows, at + timedelta(seconds=lease), c.campaign_id == campaign_id, c.status == PENDING)

    async def _lease(self, rows: list[Work], until: datetime, *where: Any, **values: Any) -> set[int]:
        """Those of ``rows`` still claimed by this worker (and matching
        ``where``) get ``values`` and a lease until ``until``; their ids. Each
        row's ``lease_until`` follows, so a send knows how long it has."""
        c = CampaignRecipient
        async with self.db.write() as session:
            result = await session.execute(
                update(c)
                .where(c.id.in_([w.id for w in rows]), c.claimed_by == self.owner, *where)
                .values(lease_until=until, **values)
                .returning(c.id)
                .execution_options(synchronize_session=False)
            )
            leased = set(result.scalars().all())
        for w in rows:
            if w.id in leased:
                w.lease_until = until
        return leased

    def _held(self, campaign_id: int) -> bool:
        return self._hold.get(campaign_id, 0.0) > time.monotonic()

    async def _still_running(self, campaign_id: int) -> bool:
        """Whether the campaign is still running, asked at most every
        ``STATUS_CHECK_SECONDS``: rows already marked ``sending`` wait for the
        pacer, and a pause or cancel must stop them too, not only the next chunk."""
        checked, running = self._status_checked.get(campaign_id, (0.0, True))
        if time.monotonic() - checked >= STATUS_CHECK_SECONDS:
            async with self.db.read() as session:
                status = await session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
            running = status == RUNNING
            self._status_checked[campaign_id] = (time.monotonic(), running)
        return running

    async def _unmark(self, campaign_id: int, rows: list[Work]) -> None:
        """``sending`` rows that never went to Twilio: ``pending`` again
        (``skipped`` if the campaign was cancelled meanwhile)."""
        c = CampaignRecipient
        ended = exists().where(and_(Campaign.id == campaign_id, Campaign.status.in_((CANCELLED, COMPLETED))))
        async with self.db.write() as session:
            await _lock_campaigns(session, [campaign_id])
            await session.execute(
                update(c)
                .where(c.id.in_([w.id for w in rows]), c.status == SENDING, c.claimed_by == self.owner)
                .values(
                    status=case((ended, SKIPPED), else_=PENDING),
                    reason=case((ended, "cancelled"), else_=c.reason),
                    attempts=c.attempts - 1,
                    claimed_by=None,
                    lease_until=None,
                )
                .execution_options(synchronize_session=False)
            )

    async def _mark_sending(self, campaign_id: int, rows: list[Work], lease_seconds: float) -> set[int]:
        """``rows`` -> ``sending`` with a send lease of ``lease_seconds``, those
        still claimed by this worker while the campaign runs; their ids."""
        if not rows:
            return set()
        c = CampaignRecipient
        running = exists().where(and_(Campaign.id == campaign_id, Campaign.status == RUNNING))
        return await self._lease(
            rows,
            utcnow() + timedelta(seconds=lease_seconds),
            c.status == PENDING,
            running,
            status=SENDING,
            attempts=c.attempts + 1,
        )

    async def _still_ours(self, w: Work) -> bool:
        """Whether ``w`` may go to Twilio now: still ``sending`` for this
        worker, with at least half a send lease to run (a send takes at most
        Twilio's request timeout, well under the lease; the default lease is
        four times it). Nobody touches a ``sending`` row before its lease is
        over (:func:`mark_abandoned` waits for that), so such a lease is
        answer enough, without a commit per message. A lease running out (the
        sends in flight held every slot) is renewed in one conditional update:
        the row is still ``sending`` and ours unless another worker marked it
        abandoned (which takes the claim away) and so it is another's to settle:
        looked up in Twilio, and sent once if Twilio never had it. Sending it
        here too would be the second message."""
        lease = self.config.send_lease_seconds
        now = utcnow()
        if w.lease_until is not None and w.lease_until - now >= timedelta(seconds=lease / 2):
            return True
        return bool(await self._lease([w], now + timedelta(seconds=lease), CampaignRecipient.status == SENDING))

    async def _send_one(self, campaign: Campaign, sender: SmsSender, w: Work, slots: asyncio.Semaphore) -> None:
        assert self.twilio is not None
        try:
            if not await self._still_ours(w):
                # Its lease ran out while it waited and another worker took it
                # for abandoned: no outcome of ours may overwrite what that one records.
                log.warning(
                    "campaign %s: recipient %s was taken over by another worker before it was sent; not sending it",
                    campaign.id,
                    w.id,
                )
                return
            callback = self.twilio.sms.status_callback()
            if callback:
                callback = f"{callback}?{CALLBACK_PARAM}={w.id}"
            try:
                result = await self.twilio.sms.send_sms(sender, w.phone, w.body, status_callback=callback)
            except Exception as exc:  # the outcome is unknown: never resend blindly
                log.exception("campaign send raised", extra={"recipient": w.id})
                self._results.append(self._uncertain(w.id, f"{type(exc).__name__}: {exc}"))
                return
            now = utcnow()
            code = result.extras.get("error_code")
            if result.status in (DeliveryStatus.SENT, DeliveryStatus.QUEUED, DeliveryStatus.SENDING) or code:
                self._unreachable[campaign.id] = 0  # Twilio answered
            if result.status in (DeliveryStatus.SENT, DeliveryStatus.QUEUED, DeliveryStatus.SENDING):
                out = self._outcome(w.id, SENT, None, sid=result.external_id, sent_at=now)
            elif result.extras.get(NOT_REACHED):
                # Nothing was sent: it waits for Twilio to be back, its attempt not counted.
                wait = self._note_unreachable(campaign.id, w.wave, result.reason or "Twilio could not be reached")
                out = self._outcome(w.id, PENDING, result.reason)
                out.update(nb=now + timedelta(seconds=wait), undo=1)
            else:
                if code is None and await self.twilio.ledger.opted_out(w.phone, sender.key):
                    out = self._outcome(w.id, SKIPPED, f"opted_out: {result.reason}")
                elif code == OPT_OUT_CODE:
                    out = self._outcome(w.id, SKIPPED, f"opted_out: {result.reason}", code=str(code))
                elif result.retryable and code in RETRYABLE_CODES and w.attempts + 1 < self.config.max_attempts:
                    backoff = min(2 ** (w.attempts + 1), 300) * random.uniform(0.8, 1.2)
                    wait = max(result.retry_after or 0.0, backoff)
                    out = self._outcome(w.id, PENDING, result.reason, code=str(code))
                    out["nb"] = now + timedelta(seconds=wait)
                elif result.retryable and code not in RETRYABLE_CODES:
                    # A timeout or a 5xx: Twilio may have the message. Shown, not resent.
                    out = self._uncertain(w.id, result.reason, code=str(code) if code else None)
                else:
                    out = self._outcome(w.id, FAILED, result.reason, code=str(code) if code is not None else None)
            self._results.append(out)
        finally:
            slots.release()

    def _note_unreachable(self, campaign_id: int, wave: int, reason: str) -> float:
        """A send of round ``wave`` could not reach Twilio: the first such
        failure of a round starts the next, longer hold-off, and the
        ``unreachable_pause_after``-th round in a row pauses the campaign.
        Returns the hold-off in seconds."""
        n = self._unreachable.get(campaign_id, 0)
        if wave == self._wave.get(campaign_id, 0):
            n = self._unreachable[campaign_id] = n + 1
            self._wave[campaign_id] = wave + 1
            hold = min(self.unreachable_backoff * 2 ** (n - 1), 60.0)
            self._hold[campaign_id] = time.monotonic() + hold
            if n >= self.unreachable_pause_after:
                self._pause_reason[campaign_id] = (
                    f"Twilio could not be reached {n} times in a row; nothing was lost, the rest waits "
                    f"(resume with start). Last error: {reason}"
                )
        return max(self._hold.get(campaign_id, 0.0) - time.monotonic(), 0.0)

    @staticmethod
    def _outcome(
        rid: int,
        status: str,
        reason: str | None,
        *,
        code: str | None = None,
        sid: str | None = None,
        sent_at: Any = None,
    ) -> dict[str, Any]:
        return {
            "rid": rid,
            "st": status,
            "reason": reason,
            "code": code,
            "sid": sid,
            "at": sent_at,
            "nb": None,
            "undo": 0,
            # Lookups of an uncertain send so far (None: unchanged).
            "lk": None,
        }

    def _uncertain(self, rid: int, reason: str | None, *, code: str | None = None) -> dict[str, Any]:
        """Nobody can tell whether Twilio took it: looked up once Twilio has long finished with it."""
        out = self._outcome(rid, UNCERTAIN, reason, code=code)
        out["nb"] = utcnow() + timedelta(seconds=self.config.reconcile_after_seconds)
        out["lk"] = 0  # a new send that got no answer: looked up afresh
        return out

    # --- 6. settle uncertain sends ------------------------------------------------------

    async def _reconcile(self, campaign: Campaign, sender: SmsSender) -> None:
        """Look up the campaign's uncertain rows that are due in Twilio's
        message list (see the module's docstring, step 6). The rows are leased
        first, so two workers never look up the same one; the outcomes are
        recorded like sends'."""
        assert self.twilio is not None
        c = CampaignRecipient
        now = utcnow()
        async with self.db.write() as session:
            stmt = (
                select(c.id, c.phone, c.body, c.lookups, c.reason, c.external_id)
                .where(
                    c.campaign_id == campaign.id,
                    c.status == UNCERTAIN,
                    c.not_before.is_not(None),
                    c.not_before <= now,
                )
                .order_by(c.not_before, c.id)
                .limit(RECONCILE_BATCH)
            )
            if not self.db.is_sqlite:
                stmt = stmt.with_for_update(skip_locked=True)
            rows = (await session.execute(stmt)).all()
            if not rows:
                return
            await session.execute(
                update(c)
                .where(c.id.in_([r.id for r in rows]))
                .values(not_before=now + timedelta(seconds=self.config.claim_lease_seconds))
                .execution_options(synchronize_session=False)
            )
        since = campaign.started_at or campaign.created_at
        slots = asyncio.Semaphore(RECONCILE_CONCURRENCY)
        twilio = self.twilio

        async def settle(r: Any) -> dict[str, Any]:
            if r.external_id:
                # A status callback named its message: Twilio has it, whatever else it said.
                return self._outcome(r.id, SENT, None, sid=r.external_id, sent_at=utcnow())
            async with slots:
                found = await twilio.sms.taken_earlier(sender, r.phone, r.body, since)
            if found is None:
                # Twilio never took it: not an attempt; sent like any pending row.
                out = self._outcome(
                    r.id, PENDING, f"Twilio has no record of the send that got no answer ({r.reason}); sending it again"
                )
                out["undo"] = 1
                return out
            if found.status == DeliveryStatus.SENT:
                return self._outcome(r.id, SENT, found.reason, sid=found.external_id, sent_at=utcnow())
            tries = r.lookups + 1
            out = self._outcome(r.id, UNCERTAIN, f"{found.reason} (asked {tries} times)")
            out["lk"] = tries
            if tries < RECONCILE_LOOKUPS:
                wait = min(self.config.reconcile_after_seconds * 2 ** (tries - 1), 900.0)
                out["nb"] = utcnow() + timedelta(seconds=wait)
            else:
                out["reason"] = f"{found.reason}; Twilio could not be asked {tries} times, so it is left uncertain"
            return out

        self._results.extend(await asyncio.gather(*(settle(r) for r in rows)))
        await self._flush()

    # --- 5. record ------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            try:
                await self._flush()
            except Exception:
                log.exception("recording campaign results failed; retrying")

    async def _flush(self) -> None:
        if not self._results:
            return
        results, self._results = self._results, []
        c = table(CampaignRecipient)
        # A receipt may have overtaken this record: only a row still in flight
        # (or given up as uncertain) takes the outcome's status.
        settled = or_(c.c.status == SENDING, c.c.status == UNCERTAIN)
        stmt = (
            update(c)
            .where(c.c.id == bindparam("rid"))
            .values(
                status=case((settled, bindparam("st")), else_=c.c.status),
                reason=case((settled, bindparam("reason")), else_=c.c.reason),
                # The outcome's own code: a 429 retried and then refused keeps the refusal's.
                error_code=case((settled, bindparam("code")), else_=c.c.error_code),
                external_id=func.coalesce(c.c.external_id, bindparam("sid")),
                sent_at=func.coalesce(c.c.sent_at, bindparam("at")),
                not_before=bindparam("nb"),
                # A send that never reached Twilio was not an attempt.
                attempts=c.c.attempts - case((settled, bindparam("undo")), else_=0),
                lookups=case((settled, func.coalesce(bindparam("lk"), c.c.lookups)), else_=c.c.lookups),
                # claimed_by stays: which worker sent it.
                lease_until=None,
            )
            .execution_options(synchronize_session=False)
        )
        try:
            async with self.db.write() as session:
                await self._no_pending_when_cancelled(session, results)
                await session.execute(stmt, results)
        except BaseException:
            # Also when the flush loop is cancelled mid-write (the run is
            # ending): the final flush records them; recording twice is harmless.
            self._results[:0] = results
            raise
        for cid in list(self._active):
            await self._publish(cid)

    @staticmethod
    async def _no_pending_when_cancelled(session: AsyncSession, results: list[dict[str, Any]]) -> None:
        """A row going back to ``pending`` (to be retried) in a campaign that
        was cancelled meanwhile is ``skipped``, as the cancel did to the others."""
        back = {r["rid"] for r in results if r["st"] == PENDING}
        if not back:
            return
        c = CampaignRecipient
        campaigns = list((await session.scalars(select(c.campaign_id).where(c.id.in_(back)).distinct())).all())
        await _lock_campaigns(session, campaigns)
        ended = set(
            (
                await session.scalars(
                    select(c.id)
                    .join(Campaign, Campaign.id == c.campaign_id)
                    .where(c.id.in_(back), Campaign.status.in_((CANCELLED, COMPLETED)))
                )
            ).all()
        )
        for r in results:
            if r["rid"] in ended:
                r.update(st=SKIPPED, reason="cancelled", nb=None)

    async def _publish(self, campaign_id: int, *, force: bool = False) -> None:
        """Live counts for the inbox (``campaign.progress``), at most once a second."""
        if self.live is None:
            return
        now = time.monotonic()
        if not force and now - self._published.get(campaign_id, 0.0) < 1.0:
            return
        self._published[campaign_id] = now
        async with self.db.read() as session:
            by_status = await counts(session, campaign_id)
            status = await session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
        await self.live.publish(
            AGENTS_CHANNEL,
            {
                "type": "campaign.progress",
                "campaign_id": campaign_id,
                "status": status,
                "counts": {s: int(v["count"]) for s, v in by_status.items()},
            },
        )


async def _lock_campaigns(session: AsyncSession, campaign_ids: list[int]) -> None:
    """Share-lock the campaigns (PostgreSQL; SQLite has one writer anyway), so a
    cancel (which locks its campaign for update) is wholly before or after us:
    our rows are either seen as cancelled here or skipped by the cancel."""
    if campaign_ids:
        await session.execute(select(Campaign.id).where(Campaign.id.in_(campaign_ids)).with_for_update(read=True))


async def mark_abandoned(session: AsyncSession, campaign_id: int | None = None) -> int:
    """Rows left ``sending`` past their lease (of ``campaign_id``, or any
    campaign): their worker died mid-send."""
    now = utcnow()
    where = [CampaignRecipient.status == SENDING, CampaignRecipient.lease_until < now]
    if campaign_id is not None:
        where.append(CampaignRecipient.campaign_id == campaign_id)
    result = await session.execute(
        update(CampaignRecipient)
        .where(*where)
        .values(
            status=UNCERTAIN,
            reason="the worker sending it stopped mid-send; Twilio may or may not have it, so it is looked up "
            "before anything is resent",
            claimed_by=None,
            lease_until=None,
            # Its lease is over: Twilio has long finished with the request.
            not_before=now,
            lookups=0,
        )
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --- receipts and replies ------------------------------------------------------------------


class CampaignReceipts:
    """Status callbacks of campaign messages (``?campaign_recipient=<id>`` in the
    callback URL; registered in ``twilio.receipt_handlers``), and replies:
    an SMS from a recent recipient is attributed to the campaign."""

    def __init__(self, db: Database, twilio: TwilioService, config: CampaignsConfig) -> None:
        self.db = db
        self.twilio = twilio
        self.config = config

    async def on_receipt(self, receipt: DeliveryReceipt, query: Mapping[str, str]) -> bool:
        raw = query.get(CALLBACK_PARAM, "")
        c = CampaignRecipient
        async with self.db.write() as session:
            row: CampaignRecipient | None = None
            rid = parse_id(raw)
            if rid is not None:
                row = await session.get(c, rid, with_for_update=True)
                if row is not None and row.external_id not in (None, receipt.external_id):
                    row = None
            if row is None:
                row = await session.scalar(select(c).where(c.external_id == receipt.external_id).with_for_update())
            if row is None:
                return False
            new = _RECEIPT_STATUS.get(receipt.status)
            if new is None and row.status in (SENDING, UNCERTAIN):
                # Queued, accepted, sending: Twilio has it, whatever its send was told.
                new = SENT
            if row.status in (SENDING, UNCERTAIN) and new is not None:
                row.reason = None  # settled: why it was uncertain no longer holds
            if row.external_id is None:
                row.external_id = receipt.external_id
            if receipt.error_code:
                row.error_code = receipt.error_code
            if new is not None and _RANK.get(new, 0) > _RANK.get(row.status, 0):
                row.status = new
                if receipt.reason:
                    row.reason = receipt.reason
                row.sent_at = row.sent_at or receipt.at
                if new == DELIVERED:
                    row.delivered_at = receipt.at
                row.lease_until = None
                row.claimed_by = None
            if receipt.error_code == str(OPT_OUT_CODE):
                campaign = await session.get(Campaign, row.campaign_id)
                if campaign is not None:
                    await do_set_opt_out(
                        session,
                        phone=row.phone,
                        sender=campaign.sender,
                        opted_out=True,
                        source=f"Twilio error {OPT_OUT_CODE}",
                        actor="twilio",
                    )
        return True

    async def attribute(self, inbound: InboundMessage, sender: SmsSender) -> InboundMessage:
        """A customer's SMS soon after a campaign message from the same sender is
        a reply to it: ``extras.campaign_id`` (the bot may start qualifying the
        lead) and ``extras.campaign_recipient_id``. An opt-out keyword is not a
        conversation, so it only gets the latter (counted in the report)."""
        c = CampaignRecipient
        since = utcnow() - timedelta(hours=self.config.reply_window_hours)
        async with self.db.read() as session:
            row = (
                await session.execute(
                    select(c.id, c.campaign_id)
                    .join(Campaign, Campaign.id == c.campaign_id)
                    .where(
                        c.phone == inbound.sender,
                        c.sent_at >= since,
                        c.external_id.is_not(None),
                        Campaign.sender == sender.key,
                    )
                    .order_by(c.sent_at.desc())
                    .limit(1)
                )
            ).first()
        if row is None:
            return inbound
        extras = {**inbound.extras, "campaign_recipient_id": row.id}
        if classify_keyword(str(inbound.extras.get("typed") or inbound.body)) is None:
            extras["campaign_id"] = row.campaign_id
        return inbound.model_copy(update={"extras": extras})

    async def on_received(self, event: Event) -> None:
        """After a reply is stored: the recipient's reply (or opt-out) is noted,
        and the contact's timeline says the conversation came from the campaign."""
        message: dict[str, Any] = event.payload.get("message") or {}
        if message.get("direction") != "in" or message.get("channel") != "sms":
            return
        from hub.channel_actions import do_contact_signals

        now = utcnow()
        async with self.db.write() as session:
            msg = await session.get(Message, int(message["id"]))
            rid = (msg.extras or {}).get("campaign_recipient_id") if msg is not None else None
            if msg is None or not isinstance(rid, int):
                return
            stop = classify_keyword(str((msg.extras or {}).get("typed") or msg.body or "")) == "stop"
            row = await session.get(CampaignRecipient, rid, with_for_update=True)
            if row is None:
                return
            if stop:
                row.opted_out_at = row.opted_out_at or now
            elif row.replied_at is None:
                row.replied_at = now
                row.reply_message_id = msg.id
            if not stop:
                await do_contact_signals(session, int(message["id"]), source=f"campaign:{row.campaign_id}")
