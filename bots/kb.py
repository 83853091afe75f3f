"""The knowledge base: entries the bot answers from, and their file formats.

An entry has an ``id`` (a stable slug chosen by the admin), several example
``questions`` (the more ways of asking, the better it matches), an ``answer``
(one text, or one per language: ``{en: ..., fa: ...}``), ``tags`` (e.g.
``pricing``, which starts lead qualification) and an optional ``team`` the
question is handed to when a person is needed.

Pure: parsing files into :class:`KbEntry` objects and choosing an answer's
language. Storage and versioning live with the hub's actions.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hub.text import detect_language

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

#: Answer key used when an entry has one answer for every language.
ANY_LANGUAGE = "default"

# A text missing in a customer's language is looked for in these next (before
# the one for every language, then English): an Arabic speaker reads Persian's
# script, and the first knowledge bases have Persian answers far more often.
FALLBACK_LANGUAGES: dict[str, tuple[str, ...]] = {"ar": ("fa",)}


def languages_for(language: str | None) -> tuple[str, ...]:
    """``language`` and the ones to try after it, best first."""
    if not language:
        return ()
    return (language, *FALLBACK_LANGUAGES.get(language, ()))


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}\Z")
MAX_QUESTIONS = 500


class KbError(ValueError):
    """A knowledge base file or entry is not usable; the message says where and why."""


class KbEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    questions: tuple[str, ...] = Field(min_length=1, max_length=MAX_QUESTIONS)
    answer: dict[str, str] = Field(min_length=1)
    tags: tuple[str, ...] = ()
    team: str | None = Field(default=None, max_length=200)

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("must be letters, digits and . _ : - (no spaces), starting with a letter or digit")
        return value

    @field_validator("questions", mode="before")
    @classmethod
    def _questions(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            cleaned = [q.strip() for q in value if isinstance(q, str) and q.strip()]
            if len(cleaned) != len(value):
                raise ValueError("every question must be a non-empty string")
            if any(len(q) > 1000 for q in cleaned):
                raise ValueError("a question is longer than 1000 characters")
            return tuple(dict.fromkeys(cleaned))
        return value

    @field_validator("answer", mode="before")
    @classmethod
    def _answer(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = {ANY_LANGUAGE: value}
        if isinstance(value, Mapping):
            if not value:
                raise ValueError("is empty: give one text, or one per language ({en: ..., fa: ...})")
            out: dict[str, str] = {}
            for lang, text in value.items():
                if not isinstance(lang, str) or not re.match(r"^[a-z]{2,3}$|^default$", lang):
                    raise ValueError(f"answer language {lang!r} must be a language code such as en or fa")
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"answer in {lang!r} must be a non-empty string")
                out[lang] = text.strip()
            return out
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [t for t in re.split(r"[,;]", value)]
        if isinstance(value, list | tuple):
            return tuple(dict.fromkeys(str(t).strip().lower() for t in value if str(t).strip()))
        return value

    @field_validator("team", mode="before")
    @classmethod
    def _team(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    def answer_in(self, language: str | None) -> str:
        """The answer in ``language`` (or its fallback: Persian for Arabic),
        else the one for every language, else English, else whichever there is."""
        for key in (*languages_for(language), ANY_LANGUAGE, "en"):
            if key in self.answer:
                return self.answer[key]
        return next(iter(self.answer.values()))

    def title_in(self, language: str | None) -> str:
        """A short label for a button offering this entry: its first example
        question written in the customer's script, if there is one."""
        for lang in languages_for(language):
            for q in self.questions:
                if detect_language(q) == lang:
                    return _shorten(q)
        return _shorten(self.questions[0])

    def document(self) -> dict[str, Any]:
        """The YAML/JSON form (``answer`` as a string when there is one for all)."""
        answer: str | dict[str, str] = self.answer
        if set(self.answer) == {ANY_LANGUAGE}:
            answer = self.answer[ANY_LANGUAGE]
        doc: dict[str, Any] = {"id": self.id, "questions": list(self.questions), "answer": answer}
        if self.tags:
            doc["tags"] = list(self.tags)
        if self.team:
            doc["team"] = self.team
        return doc


def _shorten(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def entry_from(raw: Any, where: str) -> KbEntry:
    if not isinstance(raw, Mapping):
        raise KbError(f"{where}: an entry must be a mapping with id, questions and answer")
    try:
        return KbEntry.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: "
            + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()
        )
        ident = raw.get("id")
        raise KbError(f"{where}{f' (id {ident!r})' if ident else ''}: {problems}") from exc


def check_unique(entries: Sequence[KbEntry], source: str) -> list[KbEntry]:
    seen: set[str] = set()
    for e in entries:
        if e.id in seen:
            raise KbError(f"{source}: id {e.id!r} appears twice")
        seen.add(e.id)
    return list(entries)


def parse_yaml(text: str, source: str = "YAML") -> list[KbEntry]:
    """A YAML list of entries (or a mapping with an ``entries`` list)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KbError(f"{source} is not valid YAML: {exc}") from exc
    if isinstance(data, Mapping) and "entries" in data:
        data = data["entries"]
    if not isinstance(data, list):
        raise KbError(f"{source} must be a list of entries (id, questions, answer)")
    return check_unique([entry_from(raw, f"{source}: entry {n}") for n, raw in enumerate(data, 1)], source)


CSV_HELP = (
    "columns: id, question (one row per question, rows with the same id form one entry), "
    "answer or answer_<lang> (answer_en, answer_fa, ...), tags (comma-separated), team"
)

# A row longer than the header: most often an unquoted comma in a text.
TOO_MANY_FIELDS = "more fields than columns; quote text containing commas"


def parse_csv(text: str, source: str = "CSV") -> list[KbEntry]:
    """One row per example question; rows sharing an ``id`` are one entry
    (answers, tags and team may be given on any of its rows).

    Errors name the line a row starts on, as an editor shows it (a quoted
    answer may span several lines)."""
    rows = csv_rows(text, source)
    first = next(rows, None)
    header = [f.strip().lower() for f in first[1]] if first else []
    fields = set(header)
    if not {"id", "question"} <= fields or not any(f == "answer" or f.startswith("answer_") for f in fields):
        raise KbError(f"{source}: missing columns; {CSV_HELP}")
    grouped: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    for line, cells in rows:
        if not cells:
            continue  # a blank line
        if len(cells) > len(header):
            raise KbError(f"{source}: line {line}: {TOO_MANY_FIELDS}")
        row = {key: value.strip() for key, value in zip(header, cells, strict=False)}
        ident = row.get("id", "")
        if not ident:
            raise KbError(f"{source}: line {line}: id is empty")
        entry = grouped.setdefault(ident, {"id": ident, "questions": [], "answer": {}, "tags": [], "team": None})
        lines.setdefault(ident, line)
        if row.get("question"):
            entry["questions"].append(row["question"])
        for key, value in row.items():
            if not value:
                continue
            if key == "answer":
                entry["answer"][ANY_LANGUAGE] = value
            elif key.startswith("answer_"):
                entry["answer"][key.removeprefix("answer_")] = value
            elif key == "tags":
                entry["tags"].extend(t.strip() for t in value.split(",") if t.strip())
            elif key == "team":
                entry["team"] = value
    return [entry_from(raw, f"{source}: line {lines[ident]}") for ident, raw in grouped.items()]


def csv_rows(text: str, source: str) -> Iterator[tuple[int, list[str]]]:
    """Each row of a CSV text with the line it starts on, as an editor shows
    it (a quoted field may span several lines); a :class:`KbError` naming the
    line of a row that cannot be read."""
    rows = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    while True:
        line = rows.line_num + 1
        cells = _next_row(rows, source)
        if cells is None:
            return
        yield line, cells


def _next_row(rows: CsvReader, source: str) -> list[str] | None:
    """The next row (None at the end), or a :class:`KbError` naming the line
    the unreadable row starts on."""
    line = rows.line_num + 1
    try:
        return list(next(rows))
    except StopIteration:
        return None
    except csv.Error as exc:
        # The csv module's own limit on a field (131,072 characters) stays: it
        # is process-wide, and no answer is that long; a quote left open,
        # which swallows the rest of the file into one field, is.
        if "field limit" in str(exc):
            raise KbError(
                f"{source}: line {line}: a field is longer than {csv.field_size_limit():,} characters; "
                'is a quote (") opened there and never closed?'
            ) from exc
        raise KbError(f"{source}: line {line}: {exc}") from exc


def load_file(path: str | Path) -> list[KbEntry]:
    """Entries from a ``.yaml``/``.yml``/``.json`` or ``.csv`` file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise KbError(f"cannot read {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise KbError(f"{p} is not UTF-8 text") from exc
    if p.suffix.lower() == ".csv":
        return parse_csv(text, str(p))
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        return parse_yaml(text, str(p))
    raise KbError(f"{p}: unknown format; use .yaml, .yml, .json or .csv")


def dump_yaml(entries: Iterable[KbEntry]) -> str:
    return yaml.safe_dump([e.document() for e in entries], allow_unicode=True, sort_keys=False)
