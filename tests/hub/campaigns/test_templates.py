"""The template sandbox, the opt-out line and what each message costs in
segments (GSM-7 / UCS-2, Persian, English, emoji, extension characters)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from hub.campaigns.templates import (
    MAX_NESTING,
    MAX_TEMPLATE_CHARS,
    TemplateInvalid,
    compile_template,
    message_for,
    render,
    variables,
)

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


X = "{% set x = 'a' * 9999 %}"


@pytest.mark.parametrize(
    ("source", "error"),
    [
        # Padding and widths, checked before the string is built.
        ("{{ 'a'|center(3000000000) }}", "the center filter: 3e+09 is more than 10000"),
        ("{{ 'a'|center(10 ** 60) }}", "the center filter: a huge number is more than 10000"),
        ("{{ '{0:>100000000}'.format('x') }}", "str.format: a width or precision of 100000000"),
        ("{{ '{0:>{1}}'.format('x', '100000000') }}", "str.format: a width or precision of 100000000"),
        ("{{ '{:.100000000f}'.format(1.5) }}", "str.format: a width or precision of 100000000"),
        ("{{ '%100000000s' % 'x' }}", "the % operator: a width or precision of 100000000"),
        ("{{ '%*s' % (100000000, 'x') }}", "the % operator: 1e+08 is more than 10000"),
        ("{{ '%100000000s'|format('x') }}", "the format filter: a width or precision of 100000000"),
        ("{{ 'x'.ljust(100000000) }}", ".ljust(): 1e+08 is more than 10000"),
        ("{{ 'x'.zfill(100000000) }}", ".zfill(): 1e+08"),
        ("{{ (1).to_bytes(1000000000, 'big') }}", ".to_bytes(): 1e+09"),
        ("{{ 'a'|batch(1000000000, 'x')|list }}", "the batch filter: 1e+09"),
        ("{{ 'a'|slice(1000000000)|list }}", "the slice filter: 1e+09"),
        ("{{ {'a': 1}|tojson(indent=100000000) }}", "the tojson filter: indent is at most 16"),
        # What one operation would multiply, estimated before it runs.
        (X + "{{ x|replace('', x) }}", "the replace filter would build a value larger than 10000"),
        (X + "{{ x.replace('', x) }}", ".replace() would build a value larger than 10000"),
        (X + "{{ x.join(('ab' * 2000)|list) }}", ".join() would build"),
        (X + "{{ ('ab' * 2000)|list|join(x) }}", "the join filter would build"),
        (X + "{{ ('ab' * 2000)|map('upper')|join(x) }}", "the join filter would build"),
        ("{{ ('\n' * 9999)|indent(9999) }}", "the indent filter would build"),
        (X + "{{ x|wordwrap(1, true, x) }}", "the wordwrap filter would build"),
        ("{{ ('\t' * 9999).expandtabs(9999) }}", ".expandtabs() would build"),
        (X + "{{ '{0}{0}{0}{0}{0}{0}'.format(x) }}", "str.format would build"),
        (X + "{{ x.translate({}) }}", ".translate() is not allowed"),
        ("{{ 'x'|urlize }}", "the urlize filter"),
        # Growth by repetition, nesting and doubling.
        ("{{ [[0] * 9999] * 9999 }}", "may not build values longer than 10000"),
        (X + "{{ [x, x, x] }}", "a literal or ~ would build a value larger than 10000"),
        ("{% set x = 'ab' %}" + "{% set x = x ~ x %}" * 40 + "{{ x }}", "a literal or ~ would build"),
        ("{% set x = 'ab' %}" + "{% set x = x + x %}" * 40 + "{{ x }}", "the + operator would build"),
        ("{% set x = [1] %}" + "{% set x = [x, x] %}" * 40 + "{{ x }}", "a literal or ~ would build"),
        # Numbers.
        ("{{ ((10 ** 64) ** 64) ** 64 }}", "numbers over 4096 bits"),
        ("{% set a = 10 ** 64 %}" + "{% set a = a * a %}" * 40 + "{{ a }}", "numbers over 4096 bits"),
        # Loops, recursion and work.
        ("{% for a in 'x' * 9999 %}{% for b in 'x' * 9999 %}{% endfor %}{% endfor %}", "too much work"),
        ("{% set y %}{% for i in 'x' * 9999 %}{{ 'y' * 9999 }}{% endfor %}{% endset %}", "too much work"),
        ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}", "too much work"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "calls itself too deeply"),
    ],
)
def test_resource_abuse_is_refused(source: str, error: str) -> None:
    with pytest.raises(TemplateInvalid, match=r"^not allowed in a template: ") as caught:
        _render(source)
    assert error in str(caught.value)


def test_recursive_loops_are_refused() -> None:
    with pytest.raises(TemplateInvalid, match="line 1: recursive loops are not allowed"):
        compile_template("{% for i in 'ab' recursive %}{{ loop('ab') }}{% endfor %}")


def test_output_longer_than_any_message_fails_for_that_recipient() -> None:
    """Not a forbidden template: a recipient whose data makes it too long is skipped."""
    with pytest.raises(TemplateInvalid, match=r"^the message would be longer than 10000 characters"):
        _render("{% for i in 'x' * 9999 %}{{ 'y' * 9999 }}{% endfor %}")
    long_city = variables(name="A", phone="+15550000000", attributes={"city": "c" * 20000}, tags=[], stage=None)
    with pytest.raises(TemplateInvalid, match=r"^the message would be longer"):
        _render("{{ contact.city }}", long_city)


def test_ordinary_templates_stay_within_the_limits() -> None:
    text = (
        "n={{ '{0:>5}|{1:.2f}'.format(contact.points, 3.14159) }} {{ '%05.1f'|format(2.25) }} {{ 'ab'|center(6) }}|"
        "{% for t in contact.tags %}{{ t|upper }}{% if not loop.last %}, {% endif %}{% endfor %} "
        "{{ [first_name, contact.city]|join(', ') }} {{ contact.tags|map('title')|join('/') }} "
        "{{ contact.city|replace('e', 'E') }} {{ ('x' * 3)|wordwrap(2, true, '-') }} {{ 2 ** 10 * 3 }} "
        "{{ 'Hi %s' % first_name }} {{ ', '.join(contact.tags) }} {{ contact.city.ljust(8, '.') }}"
    )
    assert _render(text) == ("n=  120|3.14 002.2   ab  |VIP Sara, Tehran Vip TEhran xx-x 3072 Hi Sara vip Tehran..")
    many = variables(name="A", phone="+1", attributes={}, tags=[f"t{i}" for i in range(500)], stage=None)
    assert _render("{% for t in contact.tags %}{{ loop.index }}{% endfor %}", many).endswith("499500")


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(TemplateInvalid, match="line 2"):
        compile_template("Hello\n{{ first_name ")
    with pytest.raises(TemplateInvalid, match="empty"):
        compile_template("   ")


@pytest.mark.parametrize(
    ("source", "error"),
    [
        # Under MAX_TEMPLATE_CHARS, each used to exhaust the stack of Jinja's
        # parser, transformer or code generator (RecursionError: a 500), or
        # Python's compiler limits (SyntaxError).
        ("{{ " + "(" * 1200 + "first_name" + ")" * 1200 + " }}", "line 1: brackets are nested more than 50 deep"),
        ("Hi\n{{ " + "[" * 1200 + "]" * 1200 + " }}", "line 2: brackets are nested more than 50 deep"),
        ("{{ " + "not " * 1200 + "first_name }}", "nested too deeply to be read"),
        ("{{ " + "- " * 2000 + "1 }}", "nested too deeply to be read"),
        ("{{ first_name" + "|string" * 700 + " }}", "line 1: expressions or blocks are nested more than 50 deep"),
        ("{{ 1" + "+1" * 2400 + " }}", "expressions or blocks are nested more than 50 deep"),
        ("{{ 1" + " if 1 else 1" * 400 + " }}", "expressions or blocks are nested more than 50 deep"),
        ("{% if first_name %}" * 60 + "x" + "{% endif %}" * 60, "expressions or blocks are nested more than 50 deep"),
        (
            "{% for t in contact.tags %}" * 25 + "x" + "{% endfor %}" * 25,
            "nested too deeply: too many statically nested",
        ),
    ],
)
def test_deeply_nested_templates_are_refused(source: str, error: str) -> None:
    assert len(source) <= MAX_TEMPLATE_CHARS
    with pytest.raises(TemplateInvalid) as caught:
        compile_template(source)
    assert error in str(caught.value)


def test_nesting_up_to_the_limit_is_fine() -> None:
    def parens(n: int) -> str:
        return "{{ " + "(" * n + "first_name" + ")" * n + " }}"

    assert _render(parens(MAX_NESTING)) == "Sara"
    with pytest.raises(TemplateInvalid, match="brackets are nested more than"):
        compile_template(parens(MAX_NESTING + 1))
    filters = "{{ first_name" + "|lower" * (MAX_NESTING - 3) + " }}"
    assert _render(filters) == "sara"
    with pytest.raises(TemplateInvalid, match="expressions or blocks are nested more than"):
        compile_template(filters.replace("|lower", "|lower|lower", 3))


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


@pytest.mark.parametrize(
    ("source", "language"),
    [
        ("Sale! reply stop to opt out", "en"),  # the configured line, case and punctuation aside
        ("Sale!\nReply STOP  to opt out!", "en"),
        ("حراج! برای لغو اشتراک، «لغو» را بفرستید", "fa"),
        ("Sale! Reply STOP to opt out.", "fa"),  # another configured line
    ],
)
def test_no_second_opt_out_line(source: str, language: str) -> None:
    own = message_for(
        compile_template(source), VALUES, language=language, template_language=None, opt_out_texts=OPT_OUT
    )
    assert own.body == source


@pytest.mark.parametrize(
    ("source", "language", "line"),
    [
        # The word alone is no opt-out instruction: the line is still added.
        ("Non-stop deals all week!", "en", OPT_OUT["en"]),
        ("Stop by our store today", "en", OPT_OUT["en"]),
        ("Sale! Text STOP to end.", "en", OPT_OUT["en"]),
        ("امکان لغو رایگان سفارش", "fa", OPT_OUT["fa"]),
        ("بدون توقف؛ لغو نکنید", "fa", OPT_OUT["fa"]),
    ],
)
def test_opt_out_line_added_when_the_word_is_only_used(source: str, language: str, line: str) -> None:
    msg = message_for(
        compile_template(source), VALUES, language=language, template_language=None, opt_out_texts=OPT_OUT
    )
    assert msg.body == f"{source}\n{line}"


def test_no_opt_out_line_when_not_required() -> None:
    bare = message_for(compile_template("Sale!"), VALUES, language="en", template_language=None, opt_out_texts=None)
    assert bare.body == "Sale!"


def test_too_long_for_one_twilio_message() -> None:
    with pytest.raises(TemplateInvalid, match="1600"):
        message_for(
            compile_template("{{ 'a' * 1700 }}"), VALUES, language="en", template_language=None, opt_out_texts=None
        )


@pytest.mark.parametrize(
    ("source", "error"),
    [
        # Filters that raise what the sandbox did not expect: a 500 on the API
        # and a traceback in the CLI, instead of this recipient's failure.
        ("Hi {{ name|xmlattr }}", "AttributeError: 'str' object has no attribute 'items'"),
        ("Hi {{ name|dictsort }}", "AttributeError: 'str' object has no attribute 'items'"),
        ("Hi {{ contact.points|dictsort }}", "AttributeError: 'int' object has no attribute 'items'"),
        ("Hi {{ name|truncate(-5) }}", "AssertionError: expected length >= 3, got -5"),
    ],
)
def test_any_error_of_a_filter_fails_the_template_for_that_recipient(source: str, error: str) -> None:
    with pytest.raises(TemplateInvalid, match=f"^the template failed: {re.escape(error)}$"):
        _render(source)
