"""``crm-hub campaign ...``: create (from a segment or a CSV), preview, send
with a progress bar, pause / resume / cancel, rebuild, status and report
(``report --csv`` exports every recipient). Registered on the main group in
:mod:`hub.cli`.

On a terminal the progress bar is tqdm's: one small, dependency-free,
maintained library (rich would do the same with far more than a bar's worth of
code). tqdm redraws its bar with carriage returns whatever the output is, so
when it is a file, a pipe or a CI log ``send`` writes plain lines of its own
instead (:data:`PROGRESS_LINE_SECONDS`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from hub.cli_io import read_text
from hub.config import HubConfig

T = TypeVar("T")


def _config(ctx: click.Context) -> HubConfig:
    from hub.cli import _config as load

    return load(ctx)


@asynccontextmanager
async def _services(cfg: HubConfig, *, twilio_needed: bool = True) -> Any:
    """The database, and Twilio for the commands that choose an audience or
    send (``twilio_needed``): the others only read or change a campaign's rows,
    and building the service would warn about its settings for nothing."""
    from hub.attachments import AttachmentStore
    from hub.telephony import TwilioService
    from storage.db import Database

    db = Database(cfg.database_url)
    twilio = (
        TwilioService(cfg, db, AttachmentStore(cfg.attachments_dir, max_bytes=cfg.attachments.max_bytes))
        if cfg.twilio.configured and twilio_needed
        else None
    )
    try:
        yield db, twilio
    finally:
        if twilio is not None:
            await twilio.sms.close()
        await db.dispose()


def _run(coro: Awaitable[T]) -> T:
    from hub.errors import HubError

    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except HubError as exc:
        raise click.ClickException(exc.message) from exc


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


@click.group()
def campaign() -> None:
    """Bulk SMS campaigns."""


def _attr(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--attr")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


# (option, its key in create's options): the ways of choosing a segment.
_SEGMENT_OPTIONS = (
    ("--tag", "tags_any"),
    ("--all-tags", "tags_all"),
    ("--without-tag", "tags_none"),
    ("--stage", "stages"),
    ("--attr", "attrs"),
    ("--rfm", "segments"),
    ("--channel", "channels"),
    ("--contacted-after", "contacted_after"),
    ("--contacted-before", "contacted_before"),
)
# SegmentFilter's fields, by the option that fills each: a refused value is
# named by the option the marketer typed.
_FILTER_OPTIONS = {
    "tags_any": "--tag",
    "tags_all": "--all-tags",
    "tags_none": "--without-tag",
    "lifecycle_stages": "--stage",
    "attributes": "--attr",
    "segments": "--rfm",
    "channels": "--channel",
    "last_contact_after": "--contacted-after",
    "last_contact_before": "--contacted-before",
}
_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


def _filter_refused(exc: ValidationError) -> click.BadParameter:
    """pydantic's refusal of a segment filter as a usage error naming the
    option, not the field, and without pydantic's links."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "enum":
        said = f"{error['input']!r} is not one of {error.get('ctx', {}).get('expected', '?')}"
    else:
        said = error["msg"].removeprefix("Value error, ")
    return click.BadParameter(said, param_hint=_FILTER_OPTIONS.get(field, field or None))


def _quiet_hours(value: str | None, none: bool) -> dict[str, str] | None:
    if value is None:
        return None
    if none:
        raise click.UsageError("give --quiet-hours or --no-quiet-hours, not both")
    start, sep, end = value.replace(" ", "").partition("-")
    if not sep or not _HHMM.fullmatch(start) or not _HHMM.fullmatch(end):
        raise click.BadParameter(f"{value!r} is not HH:MM-HH:MM, e.g. 21:00-09:00", param_hint="--quiet-hours")
    if start == end:
        # As campaigns.quiet_hours: an empty window would hold every message for ever.
        raise click.BadParameter("start and end must differ", param_hint="--quiet-hours")
    return {"start": start, "end": end}


def _when(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO date/time", param_hint=name) from exc
    if at.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2026-05-01T10:00+03:30", param_hint=name)
    return at


@campaign.command("create")
@click.option("--name", required=True)
@click.option("--sender", required=True, help="the SMS sender: inbox key, number or Messaging Service SID")
@click.option("--template", "template_text", help="the message (Jinja2: {{ first_name }}, {{ contact.city }})")
@click.option("--template-file", type=click.Path(exists=True, dir_okay=False), help="... or read it from a file")
@click.option("--language", default=None, help="the template's language (en, fa) for the opt-out line")
@click.option("--csv", "csv_file", type=click.Path(exists=True, dir_okay=False), help="audience: a CSV of numbers")
@click.option("--tag", "tags_any", multiple=True, help="segment: has this tag (any of those given)")
@click.option("--all-tags", "tags_all", multiple=True, help="segment: has every one of these tags")
@click.option("--without-tag", "tags_none", multiple=True, help="segment: has none of these tags")
@click.option("--stage", "stages", multiple=True, help="segment: lifecycle stage")
@click.option("--attr", "attrs", multiple=True, help="segment: attribute=value (JSON values allowed)")
@click.option("--rfm", "segments", multiple=True, help="segment: RFM segment")
@click.option("--channel", "channels", multiple=True, help="segment: has an identity on (email, telegram, ...)")
@click.option("--contacted-after", default=None, help="segment: last message after (ISO date/time with zone)")
@click.option("--contacted-before", default=None, help="segment: last message before")
@click.option("--rate", type=float, default=None, help="segments per second (default: the sender's)")
@click.option("--schedule", default=None, help="start at (ISO date/time with zone) once sent with 'send'")
@click.option("--quiet-hours", default=None, help="this campaign's quiet hours, HH:MM-HH:MM in each recipient's time")
@click.option("--no-quiet-hours", is_flag=True, help="ignore campaigns.quiet_hours (not for marketing)")
@click.pass_context
def create(ctx: click.Context, /, **opts: Any) -> None:
    """Create a draft campaign and show what it would cost. Nothing is sent
    until `crm-hub campaign send ID`."""
    from hub.campaigns import actions as ca
    from hub.campaigns.audience import CsvInvalid, SegmentFilter, parse_csv
    from hub.campaigns.schedule import MIN_RATE_PER_SECOND

    # Checked here (the minimum lives with the pacer, which this module does
    # not import up front) before anything is read or written; `not >=`
    # refuses NaN too.
    if opts["rate"] is not None and not opts["rate"] >= MIN_RATE_PER_SECOND:
        raise click.BadParameter(
            f"{opts['rate']:g} is below {MIN_RATE_PER_SECOND:g} segments per second, the slowest a campaign may go",
            param_hint="--rate",
        )
    cfg = _config(ctx)
    if bool(opts["template_text"]) == bool(opts["template_file"]):
        raise click.UsageError("give --template or --template-file (one of them)")
    template = opts["template_text"] or read_text(opts["template_file"])
    segment: SegmentFilter | None = None
    parsed = None
    quiet_hours = _quiet_hours(opts["quiet_hours"], opts["no_quiet_hours"])
    if opts["csv_file"]:
        # The file chooses the contacts: a filter given with it would be
        # silently ignored, and everyone in the file sent to.
        given = [flag for flag, key in _SEGMENT_OPTIONS if opts[key]]
        if given:
            raise click.UsageError(f"--csv cannot be combined with {', '.join(given)}: the file chooses the contacts")
        try:
            parsed = parse_csv(read_text(opts["csv_file"], encoding="utf-8-sig"), cfg.phone.default_region)
        except CsvInvalid as exc:
            raise click.ClickException(f"{opts['csv_file']}: {exc}") from exc
        if not parsed.rows:
            # Refused before the draft is made, as an --rfm segment nobody is in is.
            lines = [f"  CSV line {line}: {error}" for line, error in parsed.invalid[:100]]
            if len(parsed.invalid) > 100:
                lines.append(f"  ... and {len(parsed.invalid) - 100} more")
            raise click.BadParameter(
                "\n".join(
                    [f"no row of {opts['csv_file']} can be imported ({len(parsed.invalid)} invalid)", *lines]
                    if parsed.invalid
                    else [f"{opts['csv_file']} has no rows below its header"]
                ),
                param_hint="--csv",
            )
    else:
        try:
            segment = SegmentFilter(
                tags_any=list(opts["tags_any"]),
                tags_all=list(opts["tags_all"]),
                tags_none=list(opts["tags_none"]),
                lifecycle_stages=list(opts["stages"]),
                attributes=_attr(opts["attrs"]),
                segments=list(opts["segments"]),
                channels=list(opts["channels"]),
                last_contact_after=_when(opts["contacted_after"], "--contacted-after"),
                last_contact_before=_when(opts["contacted_before"], "--contacted-before"),
            )
        except ValidationError as exc:
            raise _filter_refused(exc) from exc
    spec = ca.CampaignSpec(
        name=opts["name"],
        sender=opts["sender"],
        template=template,
        language=opts["language"],
        segment=segment,
        quiet_hours=quiet_hours,
        rate_per_second=opts["rate"],
        scheduled_at=_when(opts["schedule"], "--schedule"),
    )

    async def run() -> dict[str, Any]:
        # In short transactions, as the API does: a hub serving customers on
        # the same database keeps answering its webhooks meanwhile.
        async with _services(cfg) as (db, twilio):
            try:
                cid = await ca.create_campaign(
                    db,
                    twilio,
                    cfg.campaigns,
                    spec,
                    quiet_hours_given=bool(opts["no_quiet_hours"] or quiet_hours),
                    actor="cli",
                )
            except ca.FilterRefused as exc:
                # Usage errors (exit 2) naming the option typed, not the API's field.
                raise click.BadParameter(exc.said, param_hint=_FILTER_OPTIONS.get(exc.field, exc.field)) from exc
            except ca.TemplateNamesUnknown as exc:
                raise click.BadParameter(
                    exc.message.removeprefix("template: "),
                    param_hint="--template-file" if opts["template_file"] else "--template",
                ) from exc
            if parsed is not None:
                await ca.csv_audience(
                    db,
                    twilio,
                    cfg.campaigns,
                    cid,
                    parsed,
                    source=Path(opts["csv_file"]).name,
                    actor="cli",
                    discard_on_failure=True,
                )
            async with db.read() as session:
                return await ca.campaign_view(session, await ca.check_campaign(session, cid))

    view = _run(run())
    _summary(view)
    click.echo(f"\nPreview: crm-hub campaign preview {view['id']}    Send: crm-hub campaign send {view['id']}")


def _summary(view: dict[str, Any]) -> None:
    est = view["estimate"]
    aud = view["audience"]
    click.echo(f"Campaign {view['id']} ({view['name']}): {view['status']}, from {view['sender']}")
    click.echo(
        f"  {est['messages']} messages, {est['segments']} segments, estimated cost {est['cost']:.2f} {est['currency']}"
    )
    if aud.get("skipped"):
        click.echo("  excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(aud["skipped"].items())))
    if aud.get("duplicates"):
        click.echo(f"  duplicates removed: {aud['duplicates']}")
    for line in aud.get("consent_withdrawn_lines") or []:
        click.echo(f"  CSV line {line}: repeats an earlier number and withdraws its consent (not sent to)", err=True)
    if aud.get("build"):
        click.echo("  audience incomplete: its build has not finished", err=True)
    for row in aud.get("invalid_rows") or []:
        click.echo(f"  CSV line {row['line']}: {row['error']}", err=True)


async def _with_campaign(cfg: HubConfig, campaign_id: int, fn: Callable[..., Awaitable[T]], write: bool = False) -> T:
    from hub.campaigns import actions as ca

    async with _services(cfg, twilio_needed=False) as (db, twilio):
        scope = db.write() if write else db.read()
        async with scope as session:
            c = await ca.check_campaign(session, campaign_id, lock=write)
            return await fn(session, c, twilio)


@campaign.command("preview")
@click.argument("campaign_id", type=int)
@click.option("--limit", type=click.IntRange(1, 50), default=5, show_default=True)
@click.pass_context
def preview_cmd(ctx: click.Context, campaign_id: int, limit: int) -> None:
    """Show the first recipients' messages as they will be sent, and the totals."""
    from hub.campaigns import actions as ca

    cfg = _config(ctx)

    async def fn(session: Any, c: Any, _t: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return await ca.preview(session, c, limit), await ca.campaign_view(session, c)

    items, view = _run(_with_campaign(cfg, campaign_id, fn))
    for item in items:
        click.echo(f"--- to {item['phone']} ({item['name'] or 'no name'}): {item['encoding']}, "
                   f"{item['segments']} segment(s), {item['characters']} characters")  # fmt: skip
        click.echo(item["body"])
    click.echo("---")
    _summary(view)


@campaign.command("send")
@click.argument("campaign_id", type=int)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--detach", is_flag=True, help="start it and return; the hub's workers send it")
@click.pass_context
def send(ctx: click.Context, campaign_id: int, yes: bool, detach: bool) -> None:
    """Start (or resume) a campaign and send it here with a progress bar (one
    already running is joined). The hub's running workers help; Ctrl-C or
    SIGTERM leaves it running for them. Exits 1 when the campaign ends other
    than completed (paused because Twilio could not be reached, cancelled)."""
    from hub.campaigns import actions as ca

    cfg = _config(ctx)
    view = _run(_with_campaign(cfg, campaign_id, lambda s, c, t: ca.campaign_view(s, c)))
    _summary(view)
    if not yes:
        click.confirm("Send it now?", abort=True)

    async def start(session: Any, c: Any, _t: Any) -> dict[str, Any]:
        # A running one (started with --detach, or by a send that was stopped) is joined.
        if c.status != ca.RUNNING:
            await ca.do_start(session, c, actor="cli")
        return await ca.campaign_view(session, c)

    view = _run(_with_campaign(cfg, campaign_id, start, write=True))
    if detach or view["status"] != ca.RUNNING:
        click.echo(
            f"Campaign {campaign_id} is {view['status']}"
            + (f" (at {view['scheduled_at']})" if view["scheduled_at"] else "")
        )
        return
    try:
        status = asyncio.run(_send_with_progress(cfg, campaign_id, view["total"]))
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo(f"\nStopped watching; campaign {campaign_id} keeps running in the hub's workers "
                   f"(crm-hub campaign pause {campaign_id} to stop it).")  # fmt: skip
        return
    click.echo(f"Campaign {campaign_id} is {status}.")
    view = _report(cfg, campaign_id, None)
    if status != ca.COMPLETED:
        # A script or a cron job must not take this run for a finished campaign.
        said = f"campaign {campaign_id} is {status}, not completed"
        if view.get("status_reason"):
            said += f": {view['status_reason']}"
        if status == ca.PAUSED:
            said += (
                f"\nResume it with `crm-hub campaign resume {campaign_id}` (the hub's workers send it) "
                f"or `crm-hub campaign send {campaign_id}` (sent from here)."
            )
        raise click.ClickException(said)


#: How often ``send`` writes a progress line when its output is not a
#: terminal (a log, a pipe, a CI job): a bar redrawn with carriage returns
#: would be one ever longer line there.
PROGRESS_LINE_SECONDS = 30.0


def _progress_line(campaign_id: int, done: int, total: int, n: dict[str, int]) -> str:
    from hub.campaigns import actions as ca

    share = f" ({done / total:.0%})" if total else ""
    failed = n.get(ca.FAILED, 0) + n.get(ca.UNDELIVERED, 0)
    return (
        f"campaign {campaign_id}: {done}/{total} done{share}; delivered {n.get(ca.DELIVERED, 0)}, "
        f"failed {failed}, skipped {n.get(ca.SKIPPED, 0)}, waiting {n.get(ca.PENDING, 0)}"
    )


async def _send_with_progress(cfg: HubConfig, campaign_id: int, total: int) -> str:
    from tqdm import tqdm

    from hub.campaigns import actions as ca
    from hub.campaigns.runner import CampaignRunner

    async with _services(cfg) as (db, twilio):
        runner = CampaignRunner(db, twilio, cfg.campaigns, owner=f"cli-{socket.gethostname()}-{os.getpid()}")
        task = asyncio.create_task(runner.run_campaign(campaign_id))
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        # SIGTERM stops it as Ctrl-C does (asyncio cancels the main task on SIGINT).
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
        # A live bar on a terminal; elsewhere one plain line now, every
        # PROGRESS_LINE_SECONDS and at the end.
        live = sys.stderr.isatty()
        said_at: float | None = None
        try:
            with tqdm(total=total, unit="msg", file=sys.stderr, dynamic_ncols=True, disable=not live) as bar:
                while True:
                    async with db.read() as session:
                        n = {k: int(v["count"]) for k, v in (await ca.counts(session, campaign_id)).items()}
                    done = sum(n.get(s, 0) for s in ca.DONE_STATUSES)
                    if live:
                        bar.update(done - bar.n)
                        bar.set_postfix(
                            delivered=n.get(ca.DELIVERED, 0), failed=n.get(ca.FAILED, 0) + n.get(ca.UNDELIVERED, 0),
                            skipped=n.get(ca.SKIPPED, 0), waiting=n.get(ca.PENDING, 0),
                        )  # fmt: skip
                    elif task.done() or said_at is None or loop.time() - said_at >= PROGRESS_LINE_SECONDS:
                        click.echo(_progress_line(campaign_id, done, total, n), err=True)
                        said_at = loop.time()
                    if task.done():
                        break
                    await asyncio.sleep(0.5)
            return task.result()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            if not task.done():
                # Stopped: the runner records what Twilio answered and returns
                # the rows it never handed over to pending, before the database
                # and the HTTP client close.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _transition(ctx: click.Context, campaign_id: int, action: str) -> None:
    from hub.campaigns import actions as ca

    cfg = _config(ctx)

    async def resume(session: Any, c: Any, *, actor: str) -> Any:
        # do_start also starts drafts, with no estimate shown and nothing
        # asked: that is what `send` is for.
        if c.status != ca.PAUSED:
            hint = f"; use `crm-hub campaign send {c.id}`" if c.status == ca.DRAFT else ""
            raise click.ClickException(f"campaign {c.id} is {c.status}, not paused{hint}")
        return await ca.do_start(session, c, actor=actor)

    fns = {"pause": ca.do_pause, "cancel": ca.do_cancel, "resume": resume}

    async def fn(session: Any, c: Any, _t: Any) -> dict[str, Any]:
        await fns[action](session, c, actor="cli")
        return await ca.campaign_view(session, c)

    view = _run(_with_campaign(cfg, campaign_id, fn, write=True))
    click.echo(f"Campaign {campaign_id} is {view['status']}.")


@campaign.command("pause")
@click.argument("campaign_id", type=int)
@click.pass_context
def pause(ctx: click.Context, campaign_id: int) -> None:
    """Stop handing messages to Twilio (those in flight finish)."""
    _transition(ctx, campaign_id, "pause")


@campaign.command("resume")
@click.argument("campaign_id", type=int)
@click.pass_context
def resume(ctx: click.Context, campaign_id: int) -> None:
    """Resume a paused campaign in the hub's workers (or use `send` to watch it)."""
    _transition(ctx, campaign_id, "resume")


@campaign.command("cancel")
@click.argument("campaign_id", type=int)
@click.pass_context
def cancel(ctx: click.Context, campaign_id: int) -> None:
    """Cancel: nobody else is sent to."""
    _transition(ctx, campaign_id, "cancel")


@campaign.command("rebuild")
@click.argument("campaign_id", type=int)
@click.pass_context
def rebuild(ctx: click.Context, campaign_id: int) -> None:
    """Choose a segment draft's audience again from its filter (after a build
    that stopped: `send` refuses a draft whose audience is incomplete)."""
    from hub.campaigns import actions as ca

    cfg = _config(ctx)

    async def run() -> dict[str, Any]:
        async with _services(cfg) as (db, twilio):
            await ca.rebuild_audience(db, twilio, cfg.campaigns, campaign_id, actor="cli")
            async with db.read() as session:
                return await ca.campaign_view(session, await ca.check_campaign(session, campaign_id))

    _summary(_run(run()))


@campaign.command("status")
@click.argument("campaign_id", type=int, required=False)
@click.pass_context
def status(ctx: click.Context, campaign_id: int | None) -> None:
    """A campaign's counts as JSON (without an id: every campaign, one line each)."""
    from hub.campaigns import actions as ca

    cfg = _config(ctx)
    if campaign_id is not None:
        _echo_json(_run(_with_campaign(cfg, campaign_id, lambda s, c, t: ca.campaign_view(s, c))))
        return

    async def listing() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        async with _services(cfg, twilio_needed=False) as (db, _t), db.read() as session:
            while True:
                page, cursor = await ca.campaign_page(session, cursor=cursor, limit=200)
                items.extend(page)
                if cursor is None:
                    return items

    for v in _run(listing()):
        click.echo(f"{v['id']:>5}  {v['status']:<10} {v['progress']:>6.1%}  {v['total']:>8} recipients  {v['name']}")


@campaign.command("report")
@click.argument("campaign_id", type=int)
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="also write every recipient's status here")
@click.pass_context
def report_cmd(ctx: click.Context, campaign_id: int, csv_out: str | None) -> None:
    """Sent, delivered, failed by error code, opted out, replied, segments, cost."""
    if csv_out:
        _check_writable(csv_out)
    _report(_config(ctx), campaign_id, csv_out)


def _check_writable(path: str) -> None:
    """Before the report is printed: finding out after it that the CSV cannot
    be written would leave half of what was asked for."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise click.ClickException(f"--csv {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (Path(path).exists() and not os.access(path, os.W_OK)):
        raise click.ClickException(f"--csv {path}: cannot be written (permission denied)")


def _report(cfg: HubConfig, campaign_id: int, csv_out: str | None) -> dict[str, Any]:
    from hub.campaigns import actions as ca

    chunks: list[str] = []

    async def fn(session: Any, c: Any, _t: Any) -> dict[str, Any]:
        if csv_out:
            chunks.extend([text async for text in ca.recipients_csv(session, c.id)])
        return await ca.report(session, c, receipts=bool(cfg.server.public_url))

    view = _run(_with_campaign(cfg, campaign_id, fn))
    if csv_out:
        try:
            Path(csv_out).write_text("".join(chunks), encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write {csv_out}: {exc.strerror or exc}") from exc
    _echo_json(view)
    if csv_out:
        click.echo(f"recipients written to {csv_out}", err=True)
    return view


def register(main: click.Group) -> None:
    main.add_command(campaign)
