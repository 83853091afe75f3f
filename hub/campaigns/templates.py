"""Campaign templates: Jinja2 in its immutable sandbox, given nothing but the
recipient's variables, so a template can neither reach Python objects
(``''.__class__.__mro__``, ``cycler.__init__.__globals__``) nor change the data
it is given, nor make the renderer build gigantic strings or numbers or loop
for ever. Rendered bodies get the opt-out line in the recipient's language and
their SMS encoding and segment count.

Languages, wherever they come from (a CSV, a contact's attribute, the
campaign), are reduced to a primary code (``fa-IR``, ``Persian`` and ``فارسی``
are all ``fa``) by :func:`language_code`: the opt-out line is looked up by it.

The limits, all per rendered message: every value a template builds (strings,
lists, nested ones counted whole) and the output stay under
:data:`MAX_VALUE_SIZE`; widths and counts given to padding and repeating
operations (``center``, ``'{0:>9}'.format``, ``'%9s' %``, ``batch``...) too,
checked before the operation runs; integers under :data:`MAX_INT_BITS`;
the work of one render (each loop iteration, filter, call and operator, plus
the size of what it builds) at most :data:`MAX_WORK`; no recursive loops;
brackets, expressions and blocks nested at most :data:`MAX_NESTING` deep.
"""

from __future__ import annotations

import inspect
import operator
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from difflib import get_close_matches
from functools import lru_cache, update_wrapper
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import do_wordwrap
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.visitor import NodeTransformer

from hub.text import detect_language, keyword, normalize, sms_segments

MAX_TEMPLATE_CHARS = 5000
# Twilio takes at most 1,600 characters per message; a campaign message is one message.
MAX_BODY_CHARS = 1600
# A template's intermediate strings and sequences, its widths and counts, and
# its output stay under this size (an SMS is 1,600 characters at most).
MAX_VALUE_SIZE = 10_000
# Integers a template computes stay under this many bits (about 1,200 digits).
MAX_INT_BITS = 4096
# Loop iterations, filters, calls and operators of one render, and the
# characters and items they build: a few thousand for a real SMS template.
MAX_WORK = 200_000
# A call (a macro's above all) is work of its own: many times a loop iteration.
_CALL_WORK = 20
# JSON indentation (``tojson(indent=...)``).
MAX_JSON_INDENT = 16
# Brackets inside brackets, and expressions and blocks inside one another: a
# real SMS template needs a handful. Jinja parses and compiles templates
# recursively, so a few hundred levels (well under MAX_TEMPLATE_CHARS) exhaust
# the stack, and Python refuses the code made of a few dozen nested blocks.
MAX_NESTING = 50


class TemplateInvalid(ValueError):
    """The template cannot be used; the message says where and why."""


class UnknownVariables(TemplateInvalid):
    """The template uses a name no recipient is ever given (see :func:`check_variables`)."""


class _TooLong(SecurityError):
    """The output outgrew :data:`MAX_VALUE_SIZE`: too long for this recipient."""


# What the render in progress may still spend (None outside ``render``).
_WORK: ContextVar[list[int] | None] = ContextVar("template_work", default=None)


def _spend(work: int = 1) -> None:
    left = _WORK.get()
    if left is not None:
        left[0] -= work
        if left[0] < 0:
            raise SecurityError(
                f"the template does too much work for one message (more than {MAX_WORK:,} steps of "
                "loop iterations, filters, calls and the text they build)"
            )


def _size(value: Any, limit: int = MAX_VALUE_SIZE) -> int:
    """Characters and items of ``value``, nested values counted whole (a list
    holding one list 10,000 times is as large as what printing it makes);
    stops counting once past ``limit``."""
    total = 0
    todo = [value]
    while todo and total <= limit:
        v = todo.pop()
        if isinstance(v, str | bytes):
            total += len(v)
        elif isinstance(v, list | tuple | set | frozenset):
            total += len(v)
            if total <= limit:
                todo.extend(v)
        elif isinstance(v, Mapping):
            total += len(v)
            if total <= limit:
                todo.extend(v.keys())
                todo.extend(v.values())
        else:
            total += 1
    return total


def _built(value: Any, what: str) -> Any:
    """``value``, just built by ``what``: bounded, and its size is work done."""
    size = _size(value)
    if size > MAX_VALUE_SIZE:
        raise SecurityError(f"{what} would build a value larger than {MAX_VALUE_SIZE} characters or items")
    _spend(1 + size)
    return value


def _check_count(value: Any, what: str) -> None:
    """A width or count: at most :data:`MAX_VALUE_SIZE`."""
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_VALUE_SIZE:
        shown = f"{value:g}" if isinstance(value, float) or value.bit_length() <= 64 else "a huge number"
        raise SecurityError(f"{what}: {shown} is more than {MAX_VALUE_SIZE}")


def _check_estimate(size: int, what: str) -> None:
    if size > MAX_VALUE_SIZE:
        raise SecurityError(f"{what} would build a value larger than {MAX_VALUE_SIZE} characters")


_SPEC_NUMBER = re.compile(r"\d+")


def _check_spec(spec: str, what: str) -> None:
    """Widths and precisions in a format spec (``>100``, ``.2f``, ``%-9s``)."""
    for number in _SPEC_NUMBER.findall(spec):
        if len(number) > 6 or int(number) > MAX_VALUE_SIZE:
            raise SecurityError(f"{what}: a width or precision of {number} is more than {MAX_VALUE_SIZE}")


_PRINTF = re.compile(r"%(?:\([^)]*\))?([-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?)[hlL]?[a-zA-Z%]")


def _check_printf(fmt: str | bytes, args: Any, what: str) -> None:
    """``fmt % args``: widths bounded, and what the placeholders can repeat."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    specs = _PRINTF.findall(text)
    values = list(args.values()) if isinstance(args, Mapping) else list(args) if isinstance(args, tuple) else [args]
    for spec in specs:
        _check_spec(spec, what)
        if "*" in spec:
            for v in values:
                _check_count(v, what)
    biggest = max((_size(v) for v in values), default=0)
    _check_estimate(len(text) + len(specs) * biggest, what)


def _check_str_format(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    biggest = max((_size(v) for v in (*args, *kwargs.values())), default=0)
    fields = sum(1 for _, name, _, _ in string.Formatter().parse(fmt) if name is not None)
    _check_estimate(len(fmt) + fields * biggest, "str.format")


class _Formatter(SandboxedFormatter):
    """``str.format`` in the sandbox, with widths checked once nested fields
    (``{0:>{1}}``) are filled in."""

    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_spec(format_spec, "str.format")
        return super().format_field(value, format_spec)


def _bounded_concat(pieces: Iterable[str]) -> str:
    """The output (and ``{% set %}`` blocks, macros), stopped as soon as it is
    longer than any message could be."""
    out: list[str] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > MAX_VALUE_SIZE:
            raise _TooLong(f"the message would be longer than {MAX_VALUE_SIZE} characters")
        out.append(piece)
    return "".join(out)


def _bounded_loop(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _spend()
        yield item


class _Guard(NodeTransformer):
    """Loops count their iterations; literals and ``~`` are size-checked;
    recursive loops (``loop(...)``, unbounded) are refused."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        if node.recursive:
            raise TemplateSyntaxError("recursive loops are not allowed in a campaign template", node.lineno)
        loop = self.generic_visit(node)
        assert isinstance(loop, nodes.For)
        loop.iter = nodes.Filter(loop.iter, "_loop", [], [], None, None, lineno=node.lineno)
        return loop

    def _sized(self, node: nodes.Expr) -> nodes.Node:
        value = self.generic_visit(node)
        return nodes.Filter(value, "_sized", [], [], None, None, lineno=node.lineno)

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        return self._sized(node) if node.ctx == "load" else self.generic_visit(node)

    visit_List = _sized
    visit_Dict = _sized
    visit_Concat = _sized

    def visit_Name(self, node: nodes.Name) -> nodes.Node:
        # Jinja hands every template `self` (its blocks, as a TemplateReference):
        # nothing a message needs, and only a Python repr to print.
        if node.name == "self" and node.ctx == "load":
            raise TemplateSyntaxError("'self' is not available in a campaign template", node.lineno)
        return self.generic_visit(node)


def _filter_checks(name: str, a: dict[str, Any]) -> None:
    """What a filter would build, judged from its arguments ``a`` before it
    runs (a generator given to ``join`` is made a list in ``a``, to be counted)."""
    what = f"the {name} filter"
    s = a.get("s", a.get("value"))
    if name == "center":
        _check_count(a.get("width"), what)
    if name == "indent" and isinstance(s, str):
        width = a.get("width")
        if isinstance(width, str):
            _check_estimate(len(s) + (s.count("\n") + 1) * len(width), what)
        elif isinstance(width, int):
            _check_count(width, what)
            _check_estimate(len(s) + (s.count("\n") + 1) * width, what)
    if name in ("batch", "slice"):
        _check_count(a.get("linecount", a.get("slices")), what)
    if name == "tojson":
        indent = a.get("indent")
        if (isinstance(indent, int) and indent > MAX_JSON_INDENT) or (
            isinstance(indent, str) and len(indent) > MAX_JSON_INDENT
        ):
            raise SecurityError(f"{what}: indent is at most {MAX_JSON_INDENT}")
    if name == "replace" and isinstance(s, str):
        _check_replace(s, a.get("old"), a.get("new"), a.get("count"), what)
    if name == "join":
        if not isinstance(a.get("value"), str | list | tuple):
            a["value"] = list(a["value"])  # a generator (map, select): counted, then joined
        _check_join(a.get("value"), a.get("d", ""), what)
    if name == "format" and isinstance(a.get("value"), str):
        _check_printf(a["value"], tuple(a.get("args", ())) or dict(a.get("kwargs", {})), what)
    if name == "urlize":
        raise SecurityError("the urlize filter (HTML links) is not for SMS")


def _check_replace(s: str | bytes, old: Any, new: Any, count: Any, what: str) -> None:
    if not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return
    n = len(s) + 1 if not old else s.count(old)  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    _check_estimate(len(s) + n * max(len(new) - len(old), 0), what)


def _check_join(items: Any, sep: Any, what: str) -> None:
    if isinstance(items, str | list | tuple) and isinstance(sep, str | bytes):
        _check_estimate(_size(items) + max(len(items) - 1, 0) * len(sep), what)


def _wordwrap_checked(f: Callable[..., Any]) -> Callable[..., Any]:
    """wordwrap joins its lines with ``wrapstring``: counted on a dry run with
    one character."""

    def wrapper(env: Any, s: str, width: int = 79, break_long_words: bool = True, wrapstring: str | None = None,
                break_on_hyphens: bool = True) -> str:  # fmt: skip
        _check_count(width, "the wordwrap filter")
        if wrapstring is not None and len(wrapstring) > 1:
            dry = f(env, s, width, break_long_words, "\n", break_on_hyphens)
            joins = dry.count("\n") - s.count("\n")
            _check_estimate(len(dry) + max(joins, 0) * len(wrapstring), "the wordwrap filter")
        return str(f(env, s, width, break_long_words, wrapstring, break_on_hyphens))

    return update_wrapper(wrapper, f)


_CHECKED_FILTERS = {"center", "indent", "batch", "slice", "tojson", "replace", "join", "format", "urlize"}


def _guarded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(f) if name in _CHECKED_FILTERS else None
    # Jinja hands some filters an argument their signature does not show
    # (those made async-capable get the evaluation context first).
    hidden = int(
        getattr(f, "jinja_pass_arg", None) is not None
        and signature is not None
        and next(iter(signature.parameters), "") not in ("environment", "env", "eval_ctx", "context")
    )

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if signature is not None:
            try:
                bound = signature.bind(*args[hidden:], **kwargs)
            except TypeError:
                pass  # the filter itself says what is wrong with its arguments
            else:
                _filter_checks(name, bound.arguments)
                args, kwargs = (*args[:hidden], *bound.args), bound.kwargs
        return _built(f(*args, **kwargs), f"the {name} filter")

    return update_wrapper(wrapper, f)


# str / bytes methods that pad, repeat or join, and their checks.
_PADDING = {"center", "ljust", "rjust", "zfill"}


def _check_method(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """The checks of a method call; returns its arguments (a generator given
    to ``join`` as a list, counted)."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    what = f".{name}()"
    if isinstance(owner, str | bytes):
        if name in _PADDING:
            for v in (*args, *kwargs.values()):
                _check_count(v, what)
        elif name == "expandtabs":
            for v in (*args, *kwargs.values()):
                _check_count(v, what)
                if isinstance(v, int):
                    _check_estimate(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * v, what)  # type: ignore[arg-type]
        elif name == "replace":
            values = [*args, *kwargs.values()]
            if len(values) >= 2:
                _check_replace(owner, values[0], values[1], values[2] if len(values) > 2 else None, what)
        elif name == "join" and args:
            if not isinstance(args[0], str | bytes | list | tuple):
                args = (list(args[0]), *args[1:])
            _check_join(args[0], owner, what)
        elif name in ("translate", "maketrans"):
            raise SecurityError(f"{what} is not allowed in a template")
    elif isinstance(owner, int) and name == "to_bytes":
        for v in (*args, *kwargs.values()):
            _check_count(v, what)
    return args


class _Sandbox(ImmutableSandboxedEnvironment):
    """No globals (no ``range``, ``cycler``, ``lipsum``, ``namespace``...), only
    the variables a render is given; what a template builds is bounded (see
    the module's doc)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_bounded_concat)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Before the parser, which would recurse once per bracket (about a
        # dozen frames each), and before the transformer and code generator,
        # which recurse once per node.
        _check_brackets(self.lexer.tokenize(source, name, filename))
        parsed = super()._parse(source, name, filename)
        _check_depth(parsed)
        tree = _Guard().visit(parsed)
        tree.set_environment(self)
        return tree  # type: ignore[no-any-return]

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        what = f"the {operator_name} operator"
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError("exponent too large in a template")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_INT_BITS:
                raise SecurityError(f"a template may not compute numbers over {MAX_INT_BITS} bits")
            return _built(operator.pow(left, right), what)
        if operator_name == "+":
            if isinstance(left, str | bytes | list | tuple) and isinstance(right, str | bytes | list | tuple):
                _check_estimate(_size(left) + _size(right), what)
            return _built(operator.add(left, right), what)
        if operator_name == "%":
            if isinstance(left, str | bytes):
                _check_printf(left, right, what)
            return _built(operator.mod(left, right), what)
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"a template may not compute numbers over {MAX_INT_BITS} bits")
            return _built(operator.mul(left, right), what)
        size = 0
        for a, b in ((left, right), (right, left)):
            if isinstance(a, str | bytes | list | tuple) and isinstance(b, int):
                size = _size(a) * b
        if size > MAX_VALUE_SIZE:
            raise SecurityError(f"a template may not build values longer than {MAX_VALUE_SIZE}")
        return _built(operator.mul(left, right), what)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend(_CALL_WORK)
        args = _check_method(__obj, args, kwargs)
        return _built(super().call(__context, __obj, *args, **kwargs), "a call")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """As the sandbox's, with the widths checked and the size of what the
        placeholders repeat bounded."""
        if super().wrap_str_format(value) is None:
            return None
        fmt: str = value.__self__
        is_format_map = value.__name__ == "format_map"
        formatter = _Formatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs, args = args[0], ()
            _check_str_format(fmt, args, kwargs)
            return type(fmt)(formatter.vformat(fmt, args, kwargs))

        return update_wrapper(wrapper, value)


_OPENING = frozenset({"lparen", "lbracket", "lbrace"})
_CLOSING = frozenset({"rparen", "rbracket", "rbrace"})


def _check_brackets(tokens: Iterable[Any]) -> None:
    depth = 0
    for token in tokens:
        if token.type in _OPENING:
            depth += 1
            if depth > MAX_NESTING:
                raise TemplateSyntaxError(f"brackets are nested more than {MAX_NESTING} deep", token.lineno)
        elif token.type in _CLOSING:
            depth -= 1


def _check_depth(tree: nodes.Node) -> None:
    """Without recursion: the point is to refuse trees too deep to recurse over."""
    todo = [(tree, 1)]
    while todo:
        node, depth = todo.pop()
        if depth > MAX_NESTING:
            raise TemplateSyntaxError(
                f"expressions or blocks are nested more than {MAX_NESTING} deep (operators, filters, 'not', "
                "tags inside one another); simplify it",
                node.lineno,
            )
        todo.extend((child, depth + 1) for child in node.iter_child_nodes())


def _environment() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.globals.clear()
    # attr() reaches any attribute by name, methods included (the sandbox
    # refuses only the unsafe ones): `contact.x` already reads what a message may.
    del env.filters["attr"]
    for name, f in list(env.filters.items()):
        env.filters[name] = _guarded_filter(name, f)
    env.filters["wordwrap"] = _guarded_filter("wordwrap", _wordwrap_checked(do_wordwrap))
    env.filters["_loop"] = _bounded_loop
    env.filters["_sized"] = lambda value: _built(value, "a literal or ~")
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
    except (RecursionError, MemoryError) as exc:
        # What the nesting checks cannot see coming: the parser recursing into
        # hundreds of unary operators ("not not not ...", "- - - 1").
        raise TemplateInvalid(
            "the template is nested too deeply to be read (brackets, operators or 'not' inside one another "
            "hundreds of times); simplify it"
        ) from exc
    except SyntaxError as exc:
        # Python's own limits on the code Jinja makes of the template (20
        # nested loops, 100 levels of indentation).
        raise TemplateInvalid(f"the template is nested too deeply: {exc.msg}; simplify it") from exc


#: The names :func:`variables` gives every render; the template sees nothing else.
TEMPLATE_VARIABLES = ("first_name", "name", "phone", "contact")


def check_variables(source: str) -> None:
    """:class:`UnknownVariables` when ``source`` (a template that compiles)
    uses a name outside :data:`TEMPLATE_VARIABLES` that it does not define
    itself (``{{ firstname }}``, ``{{ lipsum() }}``, ``{{ loop }}`` outside a
    loop): it would fail for every recipient. Only ``contact.<attribute>`` may
    be missing for some recipients and not others, so it is not checked here."""
    try:
        used = meta.find_undeclared_variables(_ENV.parse(source))
    except TemplateSyntaxError as exc:
        raise TemplateInvalid(f"template line {exc.lineno}: {exc.message}") from exc
    unknown = sorted(used - set(TEMPLATE_VARIABLES))
    if not unknown:
        return
    said = []
    for name in unknown:
        close = get_close_matches(name, TEMPLATE_VARIABLES, n=1, cutoff=0.6)
        said.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise UnknownVariables(
        f"unknown variable{'s' if len(unknown) > 1 else ''} {', '.join(said)}: a template has only "
        f"{', '.join(TEMPLATE_VARIABLES)} (contact.<attribute> for the contact's attributes)"
    )


def variables(
    *, name: str | None, phone: str, attributes: Mapping[str, Any], tags: list[str], stage: str | None
) -> dict[str, Any]:
    """What a template may use: ``{{ first_name }}``, ``{{ name }}``, ``{{ phone }}``,
    ``{{ contact.<attribute> }}`` (and ``contact.name``, ``contact.tags``,
    ``contact.language`` as a code, ...; any other missing attribute is an error for that
    recipient, unless the template says ``contact.city | default('...')``).
    Plain data only (strings, numbers, lists, dicts): nothing with methods worth
    reaching for."""
    # A name from an import or a channel may hold line breaks or tabs: an SMS
    # greeting must not break the line in the middle of "Hi {{ first_name }}".
    full = " ".join((name or "").split())
    # Keys every contact has, so "{% if contact.language == 'fa' %}" works for all.
    contact: dict[str, Any] = {"language": None, "email": None}
    contact.update({str(k): _plain(v) for k, v in attributes.items()})
    contact.update(
        name=full, first_name=full.split()[0] if full else "", phone=phone, tags=list(tags), lifecycle_stage=stage
    )
    # The code the opt-out line goes by: "fa-IR" or "Persian" is "fa" here too.
    contact["language"] = language_code(attributes.get("language"))
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
    """The template for one recipient. A missing variable, a forbidden access, a
    runaway expression or any other error is :class:`TemplateInvalid`: "not
    allowed in a template: ..." for what no recipient may do (escapes,
    resource limits)."""
    token = _WORK.set([MAX_WORK])
    try:
        out = str(template.render(values))
    except UndefinedError as exc:
        raise TemplateInvalid(f"unknown variable: {exc.message}") from exc
    except _TooLong as exc:
        raise TemplateInvalid(str(exc)) from exc
    except SecurityError as exc:
        raise TemplateInvalid(f"not allowed in a template: {exc}") from exc
    except TemplateError as exc:
        raise TemplateInvalid(f"the template failed: {exc}") from exc
    except MemoryError as exc:
        raise TemplateInvalid("not allowed in a template: it needs too much memory") from exc
    except RecursionError as exc:
        raise TemplateInvalid("not allowed in a template: it calls itself too deeply") from exc
    except Exception as exc:
        # Whatever else a filter or an operation raises on this recipient's
        # values (xmlattr or dictsort on a string: AttributeError, truncate(-5):
        # AssertionError, a TypeError...) fails the template for this recipient
        # only, as a missing variable does; never the request or the command.
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise TemplateInvalid(f"the template failed: {detail}") from exc
    finally:
        _WORK.reset(token)
    return out.strip()


# ISO 639-1, the two-letter language codes.
_ISO_639_1_CODES = (
    "aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el en "
    "eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja "
    "jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb "
    "nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq "
    "sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu"
)
_ISO_639_1 = frozenset(_ISO_639_1_CODES.split())
# What people and older systems write for a language instead of its code:
# withdrawn codes (Java still writes iw, in, ji), three-letter ones (ISO 639-2
# and the Persian and Arabic of ISO 639-3) and names, in English and Persian.
_LANGUAGE_ALIASES = {
    "en": "english eng انگلیسی الانجلیزیه",
    "fa": "persian farsi dari fas per pes prs فارسی پارسی دری الفارسیه",
    "ar": "arabic ara arb عربی العربیه",
    "ku": "kurdish kur کردی",
    "az": "azerbaijani azeri aze آذری",
    "ps": "pashto pushto pus پشتو",
    "tr": "turkish tur",
    "ur": "urdu urd",
    "hi": "hindi hin",
    "bn": "bengali bangla ben",
    "fr": "french fra fre",
    "de": "german deu ger",
    "es": "spanish castilian spa",
    "pt": "portuguese por",
    "it": "italian ita",
    "nl": "dutch nld dut",
    "ru": "russian rus",
    "uk": "ukrainian ukr",
    "pl": "polish pol",
    "el": "greek ell gre",
    "he": "hebrew heb iw",
    "hy": "armenian hye arm",
    "ka": "georgian kat geo",
    "zh": "chinese mandarin zho chi cmn",
    "ja": "japanese jpn",
    "ko": "korean kor",
    "vi": "vietnamese vie",
    "th": "thai tha",
    "id": "indonesian ind in",
    "ms": "malay msa may",
    "sv": "swedish swe",
    "tg": "tajik tgk",
    "uz": "uzbek uzb",
    "yi": "yiddish yid ji",
}
_ALIASES = {normalize(alias): code for code, aliases in _LANGUAGE_ALIASES.items() for alias in aliases.split()}
# A BCP 47 tag (en, fa-IR, zh-Hant-TW; pt_BR as locales write it): only its primary language counts.
_TAG = re.compile(r"([a-z]{2,3})(?:[-_][a-z0-9]{1,8})*")
_FIRST_WORD = re.compile(r"[^\W\d_]+")


def language_code(value: object) -> str | None:
    """The primary language code of ``value`` (``fa`` for ``fa-IR``, ``FA``,
    ``Persian``, ``Farsi``, ``فارسی``; ``en`` for ``english-us``); ``None`` for
    anything that names no language (``None``, ``""``, ``IR``, ``portugues``).
    At most three letters: it always fits where a language is stored."""
    if not isinstance(value, str) or not value.strip():
        return None
    return _language_code(value)


@lru_cache(maxsize=1024)
def _language_code(value: str) -> str | None:
    text = normalize(value)
    if tag := _TAG.fullmatch(text):
        primary = _ALIASES.get(tag[1], tag[1])
        # Two letters must be a real code ("IR", "US" are countries); three
        # may be any of ISO 639-2/3's thousands, kept as they are.
        return primary if len(primary) == 3 or primary in _ISO_639_1 else None
    # A name, perhaps with more after it: "English (US)", "english-us".
    word = _FIRST_WORD.match(text)
    return _ALIASES.get(word[0]) if word else None


def opt_out_line(texts: Mapping[str, str], language: str | None) -> str:
    if language:
        if texts.get(language):
            return texts[language]
        # Configured under a longer tag ("fa-IR") or another case.
        for key, text in texts.items():
            if text and language_code(key) == language:
                return text
    return texts["en"]


def _words(text: str) -> str:
    return " ".join(keyword(text).split())


def with_opt_out(body: str, line: str, configured: Iterable[str] = ()) -> str:
    """``body`` and the opt-out line on its own line, unless the body already
    has that line or another configured one (case, punctuation and spacing
    aside). A body that merely uses the word ("Non-stop deals", «لغو رایگان»)
    still gets it: only the configured wording is known to tell the customer
    how to opt out."""
    have = f" {_words(body)} "
    if any(f" {w} " in have for w in map(_words, (line, *configured)) if w):
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
    (else the template's, else the message's), measured. Languages that name
    no language count as unknown."""
    body = render(template, values)
    if not body:
        raise TemplateInvalid("the message is empty for this recipient")
    lang = language_code(language) or language_code(template_language) or detect_language(body) or "en"
    if opt_out_texts:
        body = with_opt_out(body, opt_out_line(opt_out_texts, lang), opt_out_texts.values())
    if len(body) > MAX_BODY_CHARS:
        raise TemplateInvalid(f"the message has {len(body)} characters; Twilio takes at most {MAX_BODY_CHARS}")
    seg = sms_segments(body)
    return Rendered(body=body, language=lang, segments=seg.segments, encoding=seg.encoding, units=seg.units)
