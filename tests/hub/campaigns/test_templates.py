"""The template sandbox, the opt-out line and what each message costs in
segments (GSM-7 / UCS-2, Persian, English, emoji, extension characters)."""

from __future__ import annotations

from typing import Any

import pytest

from hub.campaigns.templates import TemplateInvalid, compile_template, message_for, render, variables

VALUES = variables(
    name="Sara Ahmadi", phone="+989121234567", attributes={"city": "Tehran", "points": 120}, tags=["vip"], stage="lead"
)
OPT_OUT = {"en": "Reply STOP to opt out.", "fa": "برای لغو اشتراک «لغو» را بفرستید."}


def _render(source: str, values: dict[str, Any] | None = None) -> str:
    return render(compile_template(source), VALUES if values is None else values)


def test_variables_render() -> None:
    text = (
        "Hi {{ first_name }} from {{ contact.city }}: {{ contact.points + 10 }} points"
        "{{ ' (VIP)' if 'vip' in contact.tags }}"
    )
    assert _render(text) == "Hi Sara from Tehran: 130 points (VIP)"
    assert _render("{{ contact.language or 'en' }} {{ contact.email | default('-', true) }}") == "en -"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ range.__self__ }}",
        "{{ contact.__class__ }}",
        "{{ contact.update({'name': 'x'}) }}",
        "{{ contact.tags.append('x') }}",
        "{{ contact|attr('__class__') }}",
        "{{ self.__init__.__globals__ }}",
        "{{ config }}",
        "{{ request.application.__globals__ }}",
        "{{ 'x' * 100000000 }}",
        "{{ 2 ** 100000000 }}",
        "{{ (first_name * 1000) * 1000 }}",
        "{{ '{0.__class__.__mro__}'.format(first_name) }}",
        "{% for i in range(100000000) %}x{% endfor %}",
        "{{ (first_name|list).pop() }}",
    ],
)
def test_escape_attempts_are_refused(source: str) -> None:
    with pytest.raises(TemplateInvalid):
        _render(source)


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(TemplateInvalid, match="line 2"):
        compile_template("Hello\n{{ first_name ")
    with pytest.raises(TemplateInvalid, match="empty"):
        compile_template("   ")


def test_unknown_variable_is_an_error_for_that_recipient() -> None:
    with pytest.raises(TemplateInvalid, match="unknown variable"):
        _render("{{ contact.shoe_size }}")


@pytest.mark.parametrize(
    ("source", "language", "encoding", "segments", "line"),
    [
        # Plain English: GSM-7; the line adds characters, not a segment.
        ("Hi {{ first_name }}, sale today!", None, "GSM-7", 1, "Reply STOP to opt out."),
        # Persian (and the Persian line): UCS-2, 70 per segment.
        ("سلام {{ first_name }}، حراج امروز", None, "UCS-2", 1, "برای لغو اشتراک «لغو» را بفرستید."),
        # One emoji turns English into UCS-2.
        ("Hi {{ first_name }} 🎉 sale today, everything must go, come early", None, "UCS-2", 2, "Reply STOP"),
        # Extension characters count twice: 75 x '[' = 150 septets + the line is over 160.
        ("{{ '[' * 75 }}", "en", "GSM-7", 2, "Reply STOP"),
        # 153 per part: 306 plain characters with the line need 3 parts.
        ("{{ 'a' * 300 }}", "en", "GSM-7", 3, "Reply STOP"),
        # The recipient's language decides the line: an English text to a Persian speaker.
        ("Hi {{ first_name }}", "fa", "UCS-2", 1, "برای لغو اشتراک"),
    ],
)
def test_encoding_segments_and_opt_out_line(
    source: str, language: str | None, encoding: str, segments: int, line: str
) -> None:
    msg = message_for(
        compile_template(source), VALUES, language=language, template_language=None, opt_out_texts=OPT_OUT
    )
    assert (msg.encoding, msg.segments) == (encoding, segments)
    assert msg.body.splitlines()[-1].startswith(line)


def test_no_second_opt_out_line_and_none_when_not_required() -> None:
    own = message_for(
        compile_template("Sale! Text STOP to end."),
        VALUES,
        language="en",
        template_language=None,
        opt_out_texts=OPT_OUT,
    )
    assert own.body == "Sale! Text STOP to end."
    bare = message_for(compile_template("Sale!"), VALUES, language="en", template_language=None, opt_out_texts=None)
    assert bare.body == "Sale!"


def test_too_long_for_one_twilio_message() -> None:
    with pytest.raises(TemplateInvalid, match="1600"):
        message_for(
            compile_template("{{ 'a' * 1700 }}"), VALUES, language="en", template_language=None, opt_out_texts=None
        )
