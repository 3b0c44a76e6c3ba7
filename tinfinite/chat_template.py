"""A model folder's chat template, rendered in Jinja's sandbox with a time and a size limit.

The template is code that comes with the model, so it is untrusted input. Jinja's sandbox
already keeps it away from Python's internals (no `_attributes`, no changing lists or dicts,
range() capped at 100,000 items); this adds the two limits it lacks:

- time: every loop iteration and every call checks a deadline (TIME_LIMIT), so nested loops
  end in about a second instead of running for hours;
- size: printed text is counted as it is made, and the operations that build a big value in
  one step (`*`, `+`, `**`, `%`, the str methods center, ljust, rjust, zfill, expandtabs,
  replace, join and format, the filters center, indent, replace, join, format and batch)
  refuse a result past the limit before building it. The limit is MAX_CHARS plus four
  times the size of the messages, so a book-length prompt still fits.

Any failure (a limit, a syntax error, 1/0, raise_exception) becomes one UserError line that
names the template's file. Not covered: other single built-in calls on values the template
already holds, e.g. `|sum` over a list of long lists, take time and memory in proportion.
"""
import functools
import json
import re
import time
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox

from tinfinite.errors import UserError

TIME_LIMIT = 1.0      # seconds; real chat templates take milliseconds
MAX_CHARS = 1 << 20   # characters a template may make beyond 4x its messages


class TemplateLimit(Exception):
    """The template ran past a limit."""


def _raise_exception(message):
    # Templates call this to refuse a conversation (e.g. roles that do not alternate).
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson HTML-escapes; chat templates expect plain JSON, as in transformers.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    # Llama 3.x templates print today's date in their system prompt.
    return datetime.now().strftime(fmt)


@jinja2.pass_context  # (also keeps Jinja from running it at compile time on constant lists)
def _guarded(context, iterable):
    """What every {% for %} iterates over: the iterable, with a deadline check per item."""
    for item in iterable:
        context.environment.tick()
        yield item


def _format_size(fmt: str, values: list) -> int:
    """A bound on the length of fmt % values or fmt.format(*values): the text, the strings,
    and every width it may ask for (numbers in fmt; int values where widths come from them)."""
    widths = [int(n) for n in re.findall(r"\d+", fmt)]
    if "*" in fmt or re.search(r":[^}]*\{", fmt):  # "%*d", "{:{}}"
        widths += [v for v in values if isinstance(v, int)]
    return len(fmt) + sum(widths) + sum(len(v) for v in values if isinstance(v, str))


def _values(args) -> list:
    """The values a % or format applies: a tuple's items, a mapping's values, or one value."""
    if isinstance(args, dict):
        return list(args.values())
    return list(args) if isinstance(args, (tuple, list)) else [args]


def _join_size(items, sep) -> int:
    if not isinstance(items, (list, tuple)):
        return 0  # a generator: its items are printed as they come
    return len(str(sep)) * len(items) + sum(len(i) for i in items if isinstance(i, str))


def _replace_size(s, old, new, *count) -> int:
    s, old, new = str(s), str(old), str(new)
    return len(s) + (s.count(old) if old else len(s) + 1) * len(new)


def _pad_size(s, width=0, *rest) -> int:
    return max(len(str(s)), width if isinstance(width, int) else 0)


def _indent_size(s, width=4, *rest, **kwargs) -> int:
    width = len(width) if isinstance(width, str) else width
    return len(str(s)) + (str(s).count("\n") + 1) * max(width, 0)


def _batch_size(items, count, fill_with=None) -> int:
    return count if fill_with is not None and isinstance(count, int) else 0


# The result size of str methods (given the string and the call's arguments) and of filters
# (given the filter's arguments) that can build a big value in one step.
METHOD_SIZES = {
    "center": _pad_size, "ljust": _pad_size, "rjust": _pad_size, "zfill": _pad_size,
    "expandtabs": lambda s, tab=8: len(s) + s.count("\t") * tab,
    "replace": _replace_size,
    "join": lambda sep, items: _join_size(items, sep),
    "format": lambda s, *args, **kwargs: _format_size(s, [*args, *kwargs.values()]),
    "format_map": lambda s, mapping: _format_size(s, _values(mapping)),
}
FILTER_SIZES = {
    "center": _pad_size, "indent": _indent_size, "replace": _replace_size,
    "join": lambda items, d="", attribute=None: _join_size(items, d),
    "format": lambda s, *args, **kwargs: _format_size(str(s), [*args, *kwargs.values()]),
    "batch": _batch_size,
}


class Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with a deadline and a size limit (see the module docstring)."""

    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def __init__(self, max_chars: int = MAX_CHARS):
        super().__init__(trim_blocks=True, lstrip_blocks=True, finalize=self._count,
                         extensions=[jinja2.ext.loopcontrols])
        self.max_chars = max_chars
        self.deadline = float("inf")
        self.printed = 0
        self.filters["tojson"] = _tojson
        self.filters["_guarded"] = _guarded
        for name, size in FILTER_SIZES.items():
            self.filters[name] = self._sized(self.filters[name], size)
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)

    def compile_template(self, source: str) -> jinja2.Template:
        """The template, with every {% for %} iterating through _guarded."""
        tree = self.parse(source)
        for loop in tree.find_all(jinja2.nodes.For):
            loop.iter = jinja2.nodes.Filter(loop.iter, "_guarded", [], [], None, None,
                                            lineno=loop.lineno).set_environment(self)
        return self.from_string(tree)

    def render(self, template: jinja2.Template, **variables) -> str:
        """template's text, made within TIME_LIMIT and max_chars."""
        self.deadline, self.printed = time.monotonic() + TIME_LIMIT, 0
        pieces, size = [], 0
        for piece in template.generate(**variables):  # literal text and {{ }} as they come
            size += len(piece)
            self.check_size(size)
            pieces.append(piece)
        return "".join(pieces)

    def tick(self):
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"it ran past the time limit of {TIME_LIMIT:g} s "
                                f"(an endless loop?)")

    def check_size(self, size: int):
        if size > self.max_chars:
            raise TemplateLimit(f"it would make {size} characters, past the limit of "
                                f"{self.max_chars}")

    def _count(self, value):
        """Every {{ }} in the template, also inside macros and {% set %} blocks."""
        self.printed += len(str(value))
        self.check_size(self.printed)
        return value

    def _sized(self, f, size):
        skip = 1 if getattr(f, "jinja_pass_arg", None) else 0  # eval context or environment

        @functools.wraps(f)  # keeps jinja_pass_arg
        def checked(*args, **kwargs):
            self.tick()
            self.check_size(_bound(size, *args[skip:], **kwargs))
            return f(*args, **kwargs)
        return checked

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        __self.tick()
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        if isinstance(getattr(method, "__self__", None), str) and \
                getattr(method, "__name__", None) in METHOD_SIZES:
            __self.check_size(_bound(METHOD_SIZES[method.__name__], method.__self__,
                                     *args, **kwargs))
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context, operator, left, right):
        self.tick()
        self.check_size(_binop_size(operator, left, right))
        return super().call_binop(context, operator, left, right)


def _bound(size, *args, **kwargs) -> int:
    """size(*args, **kwargs), or 0 when the arguments are wrong: the call itself then fails
    with its own message."""
    try:
        return size(*args, **kwargs)
    except (TypeError, ValueError, AttributeError):
        return 0


def _binop_size(operator: str, left, right) -> int:
    """A bound on the size of `left operator right` (characters, items or decimal digits)."""
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                return len(seq) * max(n, 0)
        if isinstance(left, int) and isinstance(right, int):
            return (abs(left).bit_length() + abs(right).bit_length()) // 3
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        return abs(left).bit_length() * right // 3
    if operator == "+" and isinstance(left, (str, list, tuple)) and \
            isinstance(right, (str, list, tuple)):
        return len(left) + len(right)
    if operator == "%" and isinstance(left, str):
        return _format_size(left, _values(right))
    return 0


def render(template: str, source: Path, **variables) -> str:
    """Render a chat template from file `source` with variables (messages, ...)."""
    sandbox = Sandbox(MAX_CHARS + 4 * len(str(variables)))
    try:
        return sandbox.render(sandbox.compile_template(template), **variables)
    except jinja2.TemplateSyntaxError as e:
        detail = f"{e.message} (line {e.lineno})"
    except (jinja2.TemplateError, TemplateLimit) as e:
        detail = str(e)
    except Exception as e:  # 1/0, a wrong type, a recursion too deep: the template's bug
        detail = f"{type(e).__name__}: {e}"
    detail = " ".join(detail.split())  # one line
    detail = detail if len(detail) <= 300 else detail[:300] + "..."
    raise UserError(f"chat template in {source} failed: {detail}; check the messages or fix "
                    f"the template")
