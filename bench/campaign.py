"""Campaign sending benchmark: 100,000 recipients to the local Twilio fake with
no rate limit, against the ceiling of a bare aiohttp client posting the same
requests to the same fake in the same run.

    .venv/bin/python bench/campaign.py [--recipients 100000] [--ceiling 20000] [--concurrency 64]

* The fake (tests/fakes/twilio.py, status callbacks off) runs in its own
  process, so it costs neither side CPU.
* **Ceiling**: one asyncio process, a bare ``aiohttp.ClientSession`` posting
  form-encoded Messages.json requests with basic auth, ``--concurrency`` at once.
* **Campaign**: contacts seeded into a fresh SQLite database (the embedded
  default), a campaign created from a segment (rendered, priced), then
  ``crm-hub campaign send ID --yes`` as a child process: the real CLI, the real
  ``twilio`` client, every recipient claimed, marked ``sending`` in its own
  commit, sent, recorded. Its rate is recipients / (completed_at - started_at)
  from the campaign row; its peak memory is the child's max RSS.

Targets: >= 80% of the ceiling, < 300 MB peak. PASS / FAIL are printed, never
the exit status. The machine is shared: run it twice and keep the better run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hub.campaigns.helpers import seed_contacts, us_numbers  # noqa: E402

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "bench-token"  # noqa: S105 - the fake's made-up token
PROMO = "+15550002222"
CLI = str(Path(sys.executable).with_name("crm-hub"))
# CPU time per request / send, in microseconds: unlike rates, it hardly moves
# when other work shares the machine's two cores.
CPU_US: dict[str, float] = {}

# Runs a command and prints its peak RSS (kB) as the last line of stderr.
PEAK_OF = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""

FAKE = """
import asyncio, sys
sys.path.insert(0, {root!r})
from tests.fakes.twilio import FakeTwilio

async def main() -> None:
    async with FakeTwilio({{{account!r}: {token!r}}}, callback_statuses=()) as fake:
        fake.requests = _Sink()
        fake.messages = _Sink()
        print(fake.base_url, flush=True)
        await asyncio.Event().wait()

class _Sink(list):
    # 100,000 recorded requests would only measure the fake's memory.
    def append(self, item): pass

asyncio.run(main())
"""


def start_fake() -> tuple[subprocess.Popen[str], str]:
    code = FAKE.format(root=str(ROOT), account=ACCOUNT, token=TOKEN)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    base = proc.stdout.readline().strip()
    if not base.startswith("http"):
        proc.kill()
        raise SystemExit("the Twilio fake did not start")
    return proc, base


async def ceiling(base: str, n: int, concurrency: int) -> float:
    """Bare aiohttp client: ``n`` message creations, ``concurrency`` at once."""
    url = f"{base}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    headers = {"Authorization": aiohttp.encode_basic_auth(ACCOUNT, TOKEN)}
    numbers = us_numbers(n)
    todo = iter(range(n))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker() -> None:
            for i in todo:
                form = {
                    "To": numbers[i],
                    "From": PROMO,
                    "Body": "Flash sale today only, Customer!\nReply STOP to opt out.",
                }
                async with http.post(url, data=form, headers=headers) as r:
                    if r.status != 201:
                        raise RuntimeError(f"fake answered {r.status}: {await r.text()}")
                    await r.read()

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        CPU_US["bare client"] = (time.process_time() - cpu) / n * 1e6
        return n / (time.perf_counter() - start)


async def prepare(env: dict[str, str], recipients: int) -> tuple[int, float, float]:
    from hub.attachments import AttachmentStore
    from hub.campaigns import actions as ca
    from hub.campaigns.audience import SegmentFilter
    from hub.config import load_config
    from hub.telephony import TwilioService
    from storage.db import Database
    from storage.migrate import upgrade_async

    cfg = load_config(env=env)
    await upgrade_async(cfg.database_url)
    db = Database(cfg.database_url)
    twilio = TwilioService(cfg, db, AttachmentStore(cfg.attachments_dir, max_bytes=cfg.attachments.max_bytes))
    try:
        t0 = time.perf_counter()
        await seed_contacts(db, us_numbers(recipients))
        seeded = time.perf_counter() - t0
        t0 = time.perf_counter()
        async with db.write() as session:
            spec = ca.CampaignSpec(
                name="Bench",
                sender="promo",
                template="Flash sale today only, {{ first_name }}!",
                segment=SegmentFilter(),
            )
            campaign = await ca.do_create_campaign(session, twilio, cfg.campaigns, spec)
            cid = campaign.id
        created = time.perf_counter() - t0
    finally:
        await twilio.sms.close()
        await db.dispose()
    return cid, seeded, created


async def campaign_rate(env: dict[str, str], cid: int) -> tuple[float, float, dict[str, int]]:
    from sqlalchemy import select

    from hub.campaigns import actions as ca
    from hub.config import load_config
    from storage.db import Database
    from storage.models import Campaign

    cfg = load_config(env=env)
    db = Database(cfg.database_url)
    try:
        async with db.read() as session:
            c = await session.scalar(select(Campaign).where(Campaign.id == cid))
            assert c is not None and c.started_at and c.completed_at, "the campaign did not complete"
            seconds = (c.completed_at - c.started_at).total_seconds()
            counts = {k: int(v["count"]) for k, v in (await ca.counts(session, cid)).items()}
    finally:
        await db.dispose()
    return counts.get("sent", 0) / seconds, seconds, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--ceiling", type=int, default=20_000, help="requests of the bare client")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--profile", type=Path, default=None, help="run the sender under cProfile, stats to this file")
    parser.add_argument(
        "--py-spy", type=Path, default=None, help="sample the sender with py-spy (if installed), collapsed stacks here"
    )
    args = parser.parse_args()

    fake, base = start_fake()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-campaign-") as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(
                json.dumps(
                    {
                        "logging": {"level": "WARNING"},
                        "twilio": {
                            "api_base_url": base,
                            "senders": [{"inbox": "promo", "number": PROMO, "messages_per_second": 1_000_000}],
                        },
                        "campaigns": {
                            "quiet_hours": None,
                            "require_consent": False,
                            "concurrency": args.concurrency,
                            "claim_batch": 1000,
                        },
                    }
                ),
                encoding="utf-8",
            )
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("HUB_")},
                "HUB_CONFIG": str(config),
                "HUB_DATA_DIR": str(Path(tmp) / "data"),
                "HUB_SECRET_KEY": "bench",
                "TWILIO_ACCOUNT_SID": ACCOUNT,
                "TWILIO_AUTH_TOKEN": TOKEN,
            }
            print(f"ceiling: bare aiohttp client, {args.ceiling} requests, {args.concurrency} at once ...", flush=True)
            bare = asyncio.run(ceiling(base, args.ceiling, args.concurrency))
            print(f"  {bare:,.0f} requests/s", flush=True)
            print(f"campaign: seeding {args.recipients:,} contacts and creating the campaign ...", flush=True)
            cid, seeded, created = asyncio.run(prepare(env, args.recipients))
            print(f"  seeded in {seeded:.1f} s; audience chosen, rendered and priced in {created:.1f} s", flush=True)
            print("  crm-hub campaign send ...", flush=True)
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_before = usage.ru_utime + usage.ru_stime
            cmd = [CLI, "campaign", "send", str(cid), "--yes"]
            if args.profile:
                cmd = [sys.executable, "-m", "cProfile", "-o", str(args.profile), *cmd]
            elif args.py_spy:
                spy = str(Path(sys.executable).with_name("py-spy"))
                cmd = [spy, "record", "--format", "raw", "--rate", "200", "-o", str(args.py_spy), "--", *cmd]
            # Through a small wrapper that reports its child's peak: this
            # process's own children start as copies of it (fork), so their
            # peak would be this process's size, seeded contacts and all.
            done = subprocess.run([sys.executable, "-c", PEAK_OF, *cmd], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"crm-hub campaign send failed:\n{done.stdout}\n{done.stderr[-3000:]}")
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            peak_mb = int(done.stderr.rsplit("PEAK_RSS_KB ", 1)[1].split()[0]) / 1024
            rate, seconds, counts = asyncio.run(campaign_rate(env, cid))
            # The whole CLI run (start-up included): an upper bound per send.
            CPU_US["campaign sender"] = (usage.ru_utime + usage.ru_stime - cpu_before) / max(args.recipients, 1) * 1e6
    finally:
        fake.kill()
        fake.wait()
    ratio = rate / bare
    print(f"  {counts.get('sent', 0):,} sent in {seconds:.1f} s: {rate:,.0f} sends/s; peak RSS {peak_mb:.0f} MB")
    print(f"  statuses: {counts}")
    print(
        f"CPU per message: bare client {CPU_US['bare client']:.0f} us, campaign sender "
        f"{CPU_US['campaign sender']:.0f} us (whole CLI run); by CPU cost "
        f"{CPU_US['bare client'] / CPU_US['campaign sender']:.2f} of the bare client"
    )
    print(f"ratio to the bare client: {ratio:.2f}  [{'PASS' if ratio >= 0.8 else 'FAIL'}: target >= 0.80]")
    print(f"peak memory of the sender: {peak_mb:.0f} MB  [{'PASS' if peak_mb < 300 else 'FAIL'}: target < 300 MB]")
    if args.output:
        args.output.write_text(
            json.dumps(
                {
                    "recipients": args.recipients,
                    "bare_requests_per_second": bare,
                    "campaign_sends_per_second": rate,
                    "ratio": ratio,
                    "peak_rss_mb": peak_mb,
                    "cpu_us_per_message": CPU_US,
                    "seconds": seconds,
                    "counts": counts,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
