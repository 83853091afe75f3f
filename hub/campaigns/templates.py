"""Campaign templates: Jinja2 in its immutable sandbox, given nothing but the
recipient's variables, so a template can neither reach Python objects
(``''.__class__.__mro__``, ``cycler.__init__.__globals__``) nor change the data
it is given, nor make the renderer build gigantic strings. Rendered bodies get
the opt-out line in the recipient's language and their SMS encoding and
segment count."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hub.text import detect_language, keyword, sms_segments

MAX_TEMPLATE_CHARS = 5000
# Twilio takes at most 1,600 characters per message; a campaign message is one message.
MAX_BODY_CHARS = 1600
# A template's intermediate strings and sequences stay under this size.
MAX_VALUE_SIZE = 10_000

# Words that already tell the customer how to opt out: the line is not added twice.
_OPT_OUT_WORDS = {keyword(w) for w in ("STOP", "لغو")}


class TemplateInvalid(ValueError):
    """The template cannot be used; the message says where and why."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """No globals (no ``range``, ``cycler``, ``lipsum``, ``namespace``...), only
    the variables a render is given; ``*`` and ``**`` bounded."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError("exponent too large in a template")
            return operator.pow(left, right)
        size = 0
        for a, b in ((left, right), (right, left)):
            if isinstance(a, str | list | tuple) and isinstance(b, int):
                size = len(a) * b
        if size > MAX_VALUE_SIZE:
            raise SecurityError(f"a template may not build values longer than {MAX_VALUE_SIZE}")
        return operator.mul(left, right)


def _environment() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.globals.clear()
    return env


_ENV = _environment()


def compile_template(source: str) -> Any:
    """A compiled template, or :class:`TemplateInvalid` naming the line."""
    if not source.strip():
        raise TemplateInvalid("the template is empty")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateInvalid(f"the template has {len(source)} characters; at most {MAX_TEMPLATE_CHARS}")
    try:
        return _ENV.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateInvalid(f"template line {exc.lineno}: {exc.message}") from exc


def variables(
    *, name: str | None, phone: str, attributes: Mapping[str, Any], tags: list[str], stage: str | None
) -> dict[str, Any]:
    """What a template may use: ``{{ first_name }}``, ``{{ name }}``, ``{{ phone }}``,
    ``{{ contact.<attribute> }}`` (and ``contact.name``, ``contact.tags``,
    ``contact.language``, ...; any other missing attribute is an error for that
    recipient, unless the template says ``contact.city | default('...')``).
    Plain data only (strings, numbers, lists, dicts): nothing with methods worth
    reaching for."""
    full = (name or "").strip()
    # Keys every contact has, so "{% if contact.language == 'fa' %}" works for all.
    contact: dict[str, Any] = {"language": None, "email": None}
    contact.update({str(k): _plain(v) for k, v in attributes.items()})
    contact.update(
        name=full, first_name=full.split(" ")[0] if full else "", phone=phone, tags=list(tags), lifecycle_stage=stage
    )
    return {"contact": contact, "name": full, "first_name": contact["first_name"], "phone": phone}


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def render(template: Any, values: Mapping[str, Any]) -> str:
    """The template for one recipient. A missing variable, a forbidden access or
    a runaway expression is :class:`TemplateInvalid`."""
    try:
        out = str(template.render(values))
    except UndefinedError as exc:
        raise TemplateInvalid(f"unknown variable: {exc.message}") from exc
    except SecurityError as exc:
        raise TemplateInvalid(f"not allowed in a template: {exc}") from exc
    except TemplateError as exc:
        raise TemplateInvalid(f"the template failed: {exc}") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateInvalid(f"the template failed: {type(exc).__name__}: {exc}") from exc
    return out.strip()


def opt_out_line(texts: Mapping[str, str], language: str | None) -> str:
    return texts.get(language or "") or texts["en"]


def with_opt_out(body: str, line: str) -> str:
    """``body`` and the opt-out line on its own line, unless the body already
    says STOP / «لغو» (a marketer who wrote their own)."""
    words = set(keyword(body).split())
    if words & _OPT_OUT_WORDS:
        return body
    return f"{body}\n{line}"


@dataclass(frozen=True, slots=True)
class Rendered:
    body: str
    language: str
    segments: int
    encoding: str
    units: int


def message_for(
    template: Any,
    values: Mapping[str, Any],
    *,
    language: str | None,
    template_language: str | None,
    opt_out_texts: Mapping[str, str] | None,
) -> Rendered:
    """The SMS one recipient gets: rendered, the opt-out line in their language
    (else the template's, else the message's), measured."""
    body = render(template, values)
    if not body:
        raise TemplateInvalid("the message is empty for this recipient")
    lang = language or template_language or detect_language(body) or "en"
    if opt_out_texts:
        body = with_opt_out(body, opt_out_line(opt_out_texts, lang))
    if len(body) > MAX_BODY_CHARS:
        raise TemplateInvalid(f"the message has {len(body)} characters; Twilio takes at most {MAX_BODY_CHARS}")
    seg = sms_segments(body)
    return Rendered(body=body, language=lang, segments=seg.segments, encoding=seg.encoding, units=seg.units)
