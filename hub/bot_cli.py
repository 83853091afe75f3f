"""``crm-hub faq ...``, ``crm-hub bot ...`` and ``crm-hub rasa-actions``: the
bot's command line (registered on the main group in :mod:`hub.cli`)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from bots.kb import TOO_MANY_FIELDS, KbError, csv_rows, dump_yaml, load_file
from hub.cli_io import read_text
from hub.config import HubConfig

if TYPE_CHECKING:
    # scikit-learn takes most of a second to import: only the commands that
    # match questions load it, not every `crm-hub` command.
    from bots.matcher import Matcher, Thresholds

OUT_OF_SCOPE = {"", "oos", "none", "out_of_scope", "out-of-scope", "-"}

# The most GET /api/v1/bot/report gives in one page (hub.web.api.MAX_PAGE, which
# a test keeps this equal to): importing the web API here would slow every
# `crm-hub` command by seconds.
MAX_REPORT_LIMIT = 200


def _config(ctx: click.Context) -> HubConfig:
    from hub.cli import _config as load

    return load(ctx)


def _thresholds(cfg: HubConfig) -> Thresholds:
    from bots.matcher import Thresholds

    return Thresholds(cfg.bot.answer_threshold, cfg.bot.clarify_threshold, cfg.bot.choices)


def _matcher(cfg: HubConfig, kb: str | None) -> Matcher:
    from bots.matcher import Matcher
    from hub.bot_step import check_backend, make_backend
    from hub.config import ConfigError

    # The same check serve makes at start-up, before any work.
    try:
        check_backend(cfg.bot)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if kb:
        try:
            entries = load_file(kb)
        except KbError as exc:
            raise click.ClickException(str(exc)) from exc
    else:
        entries = asyncio.run(_stored_entries(cfg))
    return Matcher(entries, make_backend(cfg.bot))


async def _stored_entries(cfg: HubConfig) -> list[Any]:
    from hub.bot_actions import load_kb
    from storage.db import Database

    db = Database(cfg.database_url)
    try:
        async with db.read() as session:
            return await load_kb(session)
    finally:
        await db.dispose()


@click.group()
def faq() -> None:
    """The bot's knowledge base."""


@faq.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", is_flag=True, help="delete entries the file does not have")
@click.option("--dry-run", is_flag=True, help="check the file and say what would change, change nothing")
@click.pass_context
def faq_import(ctx: click.Context, file: str, replace: bool, dry_run: bool) -> None:
    """Import entries from a YAML or CSV file (new versions only where something changed)."""
    from hub.bot_actions import check_faq_teams, configured_teams, do_import_faq
    from hub.errors import ValidationFailed
    from storage.db import Database

    cfg = _config(ctx)
    try:
        entries = load_file(file)
    except KbError as exc:
        raise click.ClickException(str(exc)) from exc

    class _DryRun(Exception):
        pass

    async def run() -> dict[str, list[str]]:
        db = Database(cfg.database_url)
        result: dict[str, list[str]] = {}
        try:
            async with db.write() as session:
                checked = await check_faq_teams(session, entries, configured_teams(cfg))
                result = await do_import_faq(session, checked, actor="cli", replace=replace)
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        finally:
            await db.dispose()
        return result

    try:
        result = asyncio.run(run())
    except ValidationFailed as exc:
        raise click.ClickException(f"{file}: {exc.message}") from exc
    prefix = "would be " if dry_run else ""
    click.echo(", ".join(f"{len(v)} {prefix}{k}" for k, v in result.items()) + f" ({len(entries)} entries in {file})")


@faq.command("export")
@click.pass_context
def faq_export(ctx: click.Context) -> None:
    """Print the knowledge base as YAML (the import format)."""
    click.echo(dump_yaml(asyncio.run(_stored_entries(_config(ctx)))), nl=False)


@click.group()
def bot() -> None:
    """Ask and evaluate the bot."""


@bot.command("ask")
@click.argument("text")
@click.option("--kb", type=click.Path(exists=True, dir_okay=False), help="a YAML/CSV file instead of the stored KB")
@click.pass_context
def bot_ask(ctx: click.Context, text: str, kb: str | None) -> None:
    """Print what the bot would do with TEXT, a new customer's first message, as one JSON object."""
    from bots.brain import Brain

    cfg = _config(ctx)
    click.echo(json.dumps(Brain(cfg.bot, _matcher(cfg, kb)).ask(text), ensure_ascii=False))


def read_labelled(path: str) -> list[tuple[str, str | None]]:
    """CSV with columns ``question`` and ``expected`` (an entry id; empty or
    ``oos`` for questions the knowledge base should not answer)."""
    text = read_text(path, encoding="utf-8-sig", newline="")
    try:
        return _labelled(csv_rows(text, path), path)
    except KbError as exc:  # a row the csv module cannot read, with its line
        raise click.ClickException(str(exc)) from exc


def _labelled(rows: Iterator[tuple[int, list[str]]], path: str) -> list[tuple[str, str | None]]:
    first = next(rows, None)
    header = [f.strip().lower() for f in first[1]] if first else []
    if not {"question", "expected"} <= set(header):
        raise click.ClickException(f"{path}: needs the columns question and expected (entry id, or oos)")
    labelled = []
    for line, cells in rows:
        if not cells:
            continue  # a blank line
        if len(cells) > len(header):
            raise click.ClickException(f"{path}: line {line}: {TOO_MANY_FIELDS}")
        row = {key: value.strip() for key, value in zip(header, cells, strict=False)}
        question, expected = row.get("question", ""), row.get("expected", "")
        if not question:
            raise click.ClickException(f"{path}: line {line}: question is empty")
        labelled.append((question, None if expected.lower() in OUT_OF_SCOPE else expected))
    if not labelled:
        raise click.ClickException(f"{path}: no questions")
    return labelled


def evaluate(matcher: Matcher, rows: list[tuple[str, str | None]], th: Thresholds) -> dict[str, Any]:
    matches = matcher.match_many([q for q, _ in rows], th)
    inscope = [(m, e) for m, (_, e) in zip(matches, rows, strict=True) if e is not None]
    oos = [m for m, (_, e) in zip(matches, rows, strict=True) if e is None]
    handed = [(m, e) for m, (_, e) in zip(matches, rows, strict=True) if m.action == "handoff"]
    unknown = sorted({e for _, e in inscope if e not in matcher.by_id})
    confusions = Counter(
        (e, m.entry_id) for m, e in inscope if m.action in ("answer", "clarify") and m.entry_id != e
    ).most_common(10)

    def share(n: int, d: int) -> float | None:
        return round(n / d, 4) if d else None

    return {
        "questions": len(rows),
        "in_scope": len(inscope),
        "out_of_scope": len(oos),
        "accuracy": share(sum(m.action == "answer" and m.entry_id == e for m, e in inscope), len(inscope)),
        "answered_wrongly": share(sum(m.action == "answer" and m.entry_id != e for m, e in inscope), len(inscope)),
        "clarified": share(sum(m.action == "clarify" for m, _ in inscope), len(inscope)),
        "top1": share(sum(m.entry_id == e for m, e in inscope), len(inscope)),
        "oos_recall": share(sum(m.action == "handoff" for m in oos), len(oos)),
        "oos_precision": share(sum(e is None for _, e in handed), len(handed)),
        "worst_confusions": [{"expected": e, "got": g, "count": n} for (e, g), n in confusions],
        "unknown_expected_ids": unknown,
    }


@bot.command("eval")
@click.option("--kb", type=click.Path(exists=True, dir_okay=False), help="YAML/CSV knowledge base (default: stored)")
@click.option("--questions", required=True, type=click.Path(exists=True, dir_okay=False), help="labelled CSV")
@click.option(
    "--answer-threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="answer at or above this confidence (default: bot.answer_threshold)",
)
@click.option(
    "--clarify-threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="offer buttons at or above this confidence, else hand off (default: bot.clarify_threshold)",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.pass_context
def bot_eval(
    ctx: click.Context,
    kb: str | None,
    questions: str,
    answer_threshold: float | None,
    clarify_threshold: float | None,
    as_json: bool,
) -> None:
    """Accuracy, out-of-scope recall and precision, and the worst confusions,
    at the configured thresholds or the ones given (to try others before
    changing the config)."""
    from bots.matcher import Thresholds

    cfg = _config(ctx)
    configured = _thresholds(cfg)
    answer = configured.answer if answer_threshold is None else answer_threshold
    clarify = configured.clarify if clarify_threshold is None else clarify_threshold
    if clarify > answer:
        # Checked before the knowledge base is loaded and the questions matched.
        raise click.UsageError(f"the clarify threshold ({clarify}) must not be above the answer threshold ({answer})")
    rows = read_labelled(questions)
    result = evaluate(_matcher(cfg, kb), rows, Thresholds(answer, clarify, configured.choices))
    result["thresholds"] = {"answer": answer, "clarify": clarify}
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    click.echo(f"{result['questions']} questions: {result['in_scope']} in scope, {result['out_of_scope']} out of scope")
    click.echo(f"thresholds: answer {answer:g}, clarify {clarify:g}")
    click.echo(f"accuracy (answered with the right entry): {pct(result['accuracy'])}")
    click.echo(f"answered wrongly: {pct(result['answered_wrongly'])}   offered buttons: {pct(result['clarified'])}")
    click.echo(f"top-1 regardless of confidence: {pct(result['top1'])}")
    click.echo(f"out-of-scope recall (handed off): {pct(result['oos_recall'])}")
    click.echo(f"out-of-scope precision (handoffs that were out of scope): {pct(result['oos_precision'])}")
    if result["worst_confusions"]:
        click.echo("worst confusions (expected -> got, count):")
        for c in result["worst_confusions"]:
            click.echo(f"  {c['expected']} -> {c['got']}: {c['count']}")
    if result["unknown_expected_ids"]:
        click.echo("expected ids not in the knowledge base: " + ", ".join(result["unknown_expected_ids"]))


@bot.command("report")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_REPORT_LIMIT),
    default=50,
    show_default=True,
    help=f"how many questions, 1 to {MAX_REPORT_LIMIT}",
)
@click.pass_context
def bot_report(ctx: click.Context, limit: int) -> None:
    """Questions the bot handed off or whose answer did not help (newest first), as JSON lines."""
    from hub.bot_report import gaps
    from storage.db import Database

    cfg = _config(ctx)

    async def run() -> list[dict[str, Any]]:
        db = Database(cfg.database_url)
        try:
            async with db.read() as session:
                items, _ = await gaps(session, cursor=None, limit=limit)
                return items
        finally:
            await db.dispose()

    for item in asyncio.run(run()):
        click.echo(json.dumps(item, ensure_ascii=False))


@click.command("rasa-actions")
@click.option("--host", default=None, help="overrides bot.rasa.actions_host")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="overrides bot.rasa.actions_port")
@click.pass_context
def rasa_actions(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the rasa-sdk action server with the hub's actions."""
    # rasa-sdk (and sanic) are imported only by the command that needs them.
    from hub.rasa_actions import serve_rasa_actions

    serve_rasa_actions(_config(ctx), host, port)


def register(main: click.Group) -> None:
    main.add_command(faq)
    main.add_command(bot)
    main.add_command(rasa_actions)
