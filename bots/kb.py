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
import difflib
import io
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

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
#: The languages the bot tells customers apart by (hub.text.detect_language):
#: an answer under any other code would never be picked, and its customers
#: would silently get the English one.
LANGUAGES = ("fa", "ar", "en")
# ISO 639-2 codes, which spreadsheets and translation tools often use.
_LANGUAGE_ALIASES = {"fas": "fa", "per": "fa", "ara": "ar", "eng": "en"}
LANGUAGE_RULE = f"answer languages are {', '.join(LANGUAGES)} (or {ANY_LANGUAGE!r}, for every language)"
MAX_QUESTIONS = 500
MAX_QUESTION_CHARS = 1000
# Far beyond any real knowledge base's tags (a word or two, a handful per
# entry); they bound what one entry may store and what the matcher and the
# API carry for it.
MAX_TAG_CHARS = 64
MAX_TAGS = 50


class KbError(ValueError):
    """A knowledge base file or entry is not usable; the message says where and why."""


def _blank(text: str) -> bool:
    """Whether ``text`` is only whitespace and invisible format characters
    (zero-width space, ZWNJ, a stray BOM): nothing a customer could type."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


def _shown(value: Any, limit: int = 40) -> str:
    """``value`` for an error message, cut short: an error must not grow
    with the input it complains about (a YAML alias can make a small file
    name a huge nested list)."""
    if isinstance(value, str):
        return repr(_cut(value, limit))
    if value is None or isinstance(value, bool | int | float):
        return _cut(repr(value), limit)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clean_questions(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        # Anything else (YAML's !!set, a mapping) would reach pydantic's own
        # conversion to a tuple, past the checks below.
        raise ValueError(f"is {_shown(value)}; give a list of questions (or one question)")
    if not all(isinstance(q, str) and not _blank(q) for q in value):
        raise ValueError("every question must be a non-empty string")
    cleaned = [q.strip() for q in value]
    if any(len(q) > MAX_QUESTION_CHARS for q in cleaned):
        raise ValueError(f"a question is longer than {MAX_QUESTION_CHARS} characters")
    return tuple(dict.fromkeys(cleaned))


def _language(code: Any) -> str:
    """An answer's language key as the bot picks it (``fas`` is ``fa``)."""
    if isinstance(code, str):
        lang = _LANGUAGE_ALIASES.get(code, code)
        if lang == ANY_LANGUAGE or lang in LANGUAGES:
            return lang
    raise ValueError(f"answer language {_shown(code)} is not one the bot picks; {LANGUAGE_RULE}")


def _clean_answer(value: Any) -> Any:
    if isinstance(value, str):
        value = {ANY_LANGUAGE: value}
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("is empty: give one text, or one per language ({en: ..., fa: ...})")
        out: dict[str, str] = {}
        for given, text in value.items():
            lang = _language(given)
            if lang in out:
                raise ValueError(f"answer language {given!r} is {lang!r}, given twice")
            if not isinstance(text, str) or _blank(text):
                raise ValueError(f"answer in {given!r} must be a non-empty string")
            out[lang] = text.strip()
        return out
    return value


TAGS_RULE = f"tags must be strings of at most {MAX_TAG_CHARS} characters, at most {MAX_TAGS} per entry"


def _clean_tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = re.split(r"[,;]", value)
    if not isinstance(value, list | tuple):
        raise ValueError(f"is {_shown(value)}; {TAGS_RULE} (a list, or one text separated by commas)")
    for n, tag in enumerate(value, 1):
        if not isinstance(tag, str):
            # Never str() it: a number would be a tag nobody wrote, and a
            # list built from YAML aliases can stringify to megabytes.
            raise ValueError(f"tag {n} is {_shown(tag)}; {TAGS_RULE}")
    tags = tuple(dict.fromkeys(t.strip().lower() for t in value if not _blank(t)))
    for tag in tags:
        if len(tag) > MAX_TAG_CHARS:
            raise ValueError(f"tag {_shown(tag)} is {len(tag)} characters long; {TAGS_RULE}")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{len(tags)} tags; {TAGS_RULE}")
    return tags


def _clean_team(value: Any) -> Any:
    if isinstance(value, str):
        return None if _blank(value) else value.strip()
    return value


# Shared by whole entries and single CSV rows, so both say the same thing.
Questions = Annotated[tuple[str, ...], BeforeValidator(_clean_questions)]
Answer = Annotated[dict[str, str], BeforeValidator(_clean_answer)]
Tags = Annotated[tuple[str, ...], BeforeValidator(_clean_tags)]
Team = Annotated[str | None, BeforeValidator(_clean_team)]


class KbEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Strict: YAML's !!binary would otherwise pass bytes off as text.
    id: str = Field(min_length=1, max_length=200, strict=True)
    questions: Questions = Field(min_length=1, max_length=MAX_QUESTIONS)
    answer: Answer = Field(min_length=1)
    tags: Tags = ()
    team: Team = Field(default=None, max_length=200, strict=True)

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("must be letters, digits and . _ : - (no spaces), starting with a letter or digit")
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
    fields: dict[Any, Any] = {}
    for key, value in raw.items():
        try:
            fields[key] = _joined(value)
        except _LoneSurrogate:
            raise KbError(f"{_where(where, raw.get('id'))}: {_cut(str(key), 60)}: {LONE_SURROGATE}") from None
    try:
        return KbEntry.model_validate(fields)
    except ValidationError as exc:
        problems = _problems(exc)
    # Raised outside the except block, so the ValidationError (whose text
    # repeats the input) is not chained to it.
    raise KbError(f"{_where(where, raw.get('id'))}: {problems}")


LONE_SURROGATE = (
    "has half of a \\uXXXX surrogate pair without the other half (an emoji escaped as \\ud83d\\ude0a "
    "needs both); it is not text"
)


class _LoneSurrogate(ValueError):
    pass


def _joined_text(text: str) -> str:
    """``text`` with the escaped halves of a character outside the BMP made
    one again: JSON's ``"\\ud83d\\ude0a"`` (how ``json.dumps`` writes 😊) comes
    out of the YAML parser as two halves no database or encoder takes."""
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise _LoneSurrogate from None


def _joined(value: Any) -> Any:
    """An entry's field with :func:`_joined_text` applied to its texts, only
    as deep as a valid field goes (a list or mapping of texts): deeper values
    are refused by the validators, and a structure built from YAML aliases
    may be far too large to walk."""
    if isinstance(value, str):
        return _joined_text(value)
    if isinstance(value, list | tuple):
        return [_joined_text(v) if isinstance(v, str) else v for v in value]
    if isinstance(value, Mapping):
        return {
            (_joined_text(k) if isinstance(k, str) else k): (_joined_text(v) if isinstance(v, str) else v)
            for k, v in value.items()
        }
    return value


def _where(where: str, ident: Any) -> str:
    # Every valid id fits in 200 characters; a longer one is cut.
    return f"{where} (id {_shown(ident, 200)})" if isinstance(ident, str) and ident else where


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(_cut(str(p), 60) for p in e['loc']) or 'entry'}: "
        + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"])
        for e in exc.errors(include_input=False, include_url=False)
    )


def check_unique(entries: Sequence[KbEntry], source: str) -> list[KbEntry]:
    seen: set[str] = set()
    for e in entries:
        if e.id in seen:
            raise KbError(f"{source}: id {e.id!r} appears twice")
        seen.add(e.id)
    return list(entries)


class _Refused(yaml.YAMLError):
    """A YAML text the knowledge base will not read, at a line (1-based)."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


# What YAML took a scalar it could not read for, as its error says it.
_SCALAR_KINDS = {"tag:yaml.org,2002:int": "a number", "tag:yaml.org,2002:float": "a number"}


class _KbLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a key given twice in one
    mapping is refused (plain YAML keeps the second ``answer:`` and drops the
    first without a word), and so is a value that looks like a number or a
    date but is none (``2024-02-30``): PyYAML lets that ``ValueError`` out."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._checked: set[yaml.Node] = set()

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as exc:
            kind = _SCALAR_KINDS.get(node.tag, "a date" if node.tag.endswith(":timestamp") else "a value")
            reason = str(exc).split(";")[0]
            raise _Refused(
                node.start_mark.line + 1,
                f"{_shown(node.value)} cannot be read as {kind} ({reason}); put it in quotes if it is text",
            ) from exc

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Checked before the node's first flattening, the only thing that
        # changes its pairs (merged ones, which may be overridden, go in).
        if node not in self._checked:
            self._checked.add(node)
            self._refuse_repeated_keys(node)
        super().flatten_mapping(node)

    def _refuse_repeated_keys(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`, then overriding one of them, is what merging is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class refuses it
            if first is not None:
                raise _Refused(line, f"key {_shown(key)} appears twice in one mapping (first on line {first})")
            seen[key] = line


def parse_yaml(text: str, source: str = "YAML") -> list[KbEntry]:
    """A YAML list of entries (or a mapping with an ``entries`` list)."""
    try:
        data = yaml.load(text, Loader=_KbLoader)  # noqa: S506 - a SafeLoader
    except _Refused as exc:
        raise KbError(f"{source}: line {exc.line}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise KbError(f"{source} is not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise KbError(f"{source}: lists or mappings are nested too deeply to read") from exc
    return _entries(data, source)


def parse_json(text: str, source: str = "JSON") -> list[KbEntry]:
    """A JSON list of entries (or an object with an ``entries`` list). Read
    as JSON, not as YAML: YAML refuses the tabs JSON is often indented with."""
    try:
        data = json.loads(text.lstrip("\ufeff"), object_pairs_hook=_unique_pairs)
    except _Refused as exc:
        raise KbError(f"{source}: {exc.problem}") from exc
    except json.JSONDecodeError as exc:
        raise KbError(f"{source} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:
        raise KbError(f"{source}: lists or mappings are nested too deeply to read") from exc
    return _entries(data, source)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # As in YAML: json.loads keeps the second of two keys and drops the first.
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Refused(0, f"key {_shown(key)} appears twice in one object")
        seen[key] = value
    return seen


def _entries(data: Any, source: str) -> list[KbEntry]:
    if isinstance(data, Mapping) and "entries" in data:
        data = data["entries"]
    if not isinstance(data, list):
        raise KbError(f"{source} must be a list of entries (id, questions, answer)")
    if not data:
        # An import with --replace would delete the whole knowledge base.
        raise KbError(f"{source} has no entries")
    return check_unique([entry_from(raw, f"{source}: entry {n}") for n, raw in enumerate(data, 1)], source)


CSV_HELP = (
    "columns: id, question (one row per question, rows with the same id form one entry), "
    "answer or answer_<lang> (answer_en, answer_fa, answer_ar), tags (separated by commas or semicolons), team"
)

# A row longer than the header: most often an unquoted comma in a text.
TOO_MANY_FIELDS = "more fields than columns; quote text containing commas"


class _CsvRow(BaseModel):
    """One CSV row's cells, checked on their own so that an error names the
    line of the row that is wrong, not the first line of its entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    questions: Questions = ()
    answer: Answer = Field(default_factory=dict)
    tags: Tags = ()
    team: Team = Field(default=None, max_length=200, strict=True)


@dataclass
class _Grouped:
    """The rows of one entry so far; answers and team with the line that gave them."""

    line: int
    questions: list[str] = field(default_factory=list)
    answer: dict[str, tuple[str, int]] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    team: tuple[str, int] | None = None


def parse_csv(text: str, source: str = "CSV") -> list[KbEntry]:
    """One row per example question; rows sharing an ``id`` are one entry
    (answers, tags and team may be given on any of its rows: an answer or a
    team given on several must be the same on each, tags add up).

    Errors name the line a row starts on, as an editor shows it (a quoted
    answer may span several lines): the wrong row's for what is in its cells,
    the entry's first row's for what is wrong with the entry as a whole."""
    rows = csv_rows(text, source)
    first = next(rows, None)
    header = [f.strip().lower() for f in first[1]] if first else []
    at = f"{source}: line {first[0] if first else 1}"
    if len(header) == 1 and ";" in header[0]:
        # What Excel saves as "CSV" where the decimal mark is a comma.
        raise KbError(f"{at}: the columns are separated by semicolons; save the file with commas between them")
    _check_column_names(header, at)
    fields = set(header)
    if not {"id", "question"} <= fields or not any(f == "answer" or f.startswith("answer_") for f in fields):
        raise KbError(f"{source}: missing columns; {CSV_HELP}")
    answers = _answer_columns(header, at)
    grouped: dict[str, _Grouped] = {}
    for line, cells in rows:
        if not cells:
            continue  # a blank line
        if len(cells) > len(header):
            raise KbError(f"{source}: line {line}: {TOO_MANY_FIELDS}")
        # A cell of only spaces or invisible characters is an empty cell.
        row = {key: value.strip() for key, value in zip(header, cells, strict=False) if not _blank(value)}
        ident = row.get("id", "")
        if not ident:
            raise KbError(f"{source}: line {line}: id is empty")
        at = _where(f"{source}: line {line}", ident)
        checked = _csv_row(row, answers, at)
        entry = grouped.setdefault(ident, _Grouped(line))
        entry.questions.extend(checked.questions)
        for column, lang in answers.items():
            if lang in checked.answer:
                entry.answer[lang] = _agree(entry.answer.get(lang), checked.answer[lang], line, column, at)
        entry.tags.extend(checked.tags)
        if checked.team is not None:
            entry.team = _agree(entry.team, checked.team, line, "team", at)
    if not grouped:
        # An import with --replace would delete the whole knowledge base.
        raise KbError(f"{source} has no entries, only the header row")
    return [
        entry_from(
            {
                "id": ident,
                "questions": e.questions,
                "answer": {lang: text for lang, (text, _) in e.answer.items()},
                "tags": e.tags,
                "team": e.team[0] if e.team else None,
            },
            f"{source}: line {e.line}",
        )
        for ident, e in grouped.items()
    ]


_COLUMNS = ("id", "question", "answer", "tags", "team")
# Columns that begin like one of ours are taken for a misspelling of it, not
# for a column of the admin's own: read as the latter, "answer-fa" would leave
# Persian customers with the English answer without a word.
_COLUMN_STEMS = (("answer", "answer"), ("question", "question"), ("tag", "tags"), ("team", "team"))


def _check_column_names(header: Sequence[str], at: str) -> None:
    for column in header:
        if column in _COLUMNS or column.startswith("answer_"):
            continue
        meant = _meant_column(column)
        if meant is not None:
            raise KbError(
                f"{at}: column {_shown(column)} is not one the import reads; did you mean {meant}? "
                f"(a column of your own must not look like one of these; {CSV_HELP})"
            )


def _meant_column(column: str) -> str | None:
    squashed = re.sub(r"[\s_-]+", "_", column).strip("_")
    for stem, name in _COLUMN_STEMS:
        if squashed.startswith(stem):
            rest = squashed.removeprefix(stem).lstrip("_")
            if stem == "answer" and rest:
                lang = _LANGUAGE_ALIASES.get(rest, rest)
                return repr(f"answer_{lang}") if lang in LANGUAGES else f"answer_<lang> ({', '.join(LANGUAGES)})"
            return repr(name)
    close = difflib.get_close_matches(squashed, _COLUMNS, n=1, cutoff=0.75)
    return repr(close[0]) if close else None


def _answer_columns(header: Sequence[str], at: str) -> dict[str, str]:
    """The answer columns and their languages; a :class:`KbError` for a
    column the entries are read from given twice, as the second copy would
    silently win over the first."""
    seen: dict[str, str] = {}  # what a column gives: the column giving it
    answers: dict[str, str] = {}
    for column in header:
        if column == "answer" or column.startswith("answer_"):
            try:
                answers[column] = ANY_LANGUAGE if column == "answer" else _language(column.removeprefix("answer_"))
            except ValueError as exc:
                raise KbError(f"{at}: column {_shown(column)}: {exc}") from None
            gives = f"answer_{answers[column]}"
        elif column in {"id", "question", "tags", "team"}:
            gives = column
        else:
            continue  # a column of the admin's own (notes, ...), not read
        if gives in seen:
            if seen[gives] == column:
                what = f"column {column!r} appears twice"
            elif answers[column] == ANY_LANGUAGE:
                what = f"columns {seen[gives]!r} and {column!r} are both the answer in every language"
            else:
                what = f"columns {seen[gives]!r} and {column!r} are both the answer in {answers[column]!r}"
            raise KbError(f"{at}: {what}")
        seen[gives] = column
    return answers


def _csv_row(row: Mapping[str, str], answers: Mapping[str, str], at: str) -> _CsvRow:
    raw: dict[str, Any] = {}
    if "question" in row:
        raw["questions"] = row["question"]
    if given := {lang: row[column] for column, lang in answers.items() if column in row}:
        raw["answer"] = given
    if "tags" in row:
        # Split as in YAML, on commas and semicolons alike.
        raw["tags"] = row["tags"]
    if "team" in row:
        raw["team"] = row["team"]
    try:
        return _CsvRow.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(exc)
    raise KbError(f"{at}: {problems}")


def _agree(kept: tuple[str, int] | None, value: str, line: int, column: str, at: str) -> tuple[str, int]:
    """``value`` with its line, unless an earlier row of the entry gave another."""
    if kept is None:
        return value, line
    if kept[0] != value:
        raise KbError(
            f"{at}: {column} differs from the {column} on line {kept[1]}; "
            "the rows of one entry give it once, or the same on each"
        )
    return kept


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
    if p.suffix.lower() == ".json":
        return parse_json(text, str(p))
    if p.suffix.lower() in (".yaml", ".yml"):
        return parse_yaml(text, str(p))
    raise KbError(f"{p}: unknown format; use .yaml, .yml, .json or .csv")


def dump_yaml(entries: Iterable[KbEntry]) -> str:
    return yaml.safe_dump([e.document() for e in entries], allow_unicode=True, sort_keys=False)
