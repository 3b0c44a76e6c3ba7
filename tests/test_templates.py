"""Chat templates are untrusted code from the model folder: they run with a time and a size
limit, and every way they can fail is one line naming the template's file."""
import time
from pathlib import Path

import pytest

from tests.tiny import tiny_llama
from tinfinite import chat_template, cli
from tinfinite.errors import UserError

SOURCE = Path("model/chat_template.jinja")
MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
BIG = "{% set s = 'x' * 100000 %}"  # 100,000 characters, well within the limit


def render(template: str, messages=MESSAGES) -> str:
    return chat_template.render(template, SOURCE, messages=messages, bos_token="<s>",
                                eos_token="</s>", add_generation_prompt=True)


def refused(template: str, *words) -> str:
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        render(template)
    # A guard against hanging for hours, not a measurement: the limit itself is 1 s.
    assert time.monotonic() - start < 15
    message = str(e.value)
    assert message.startswith(f"chat template in {SOURCE} failed: ") and "\n" not in message
    for word in words:
        assert word in message
    return message


@pytest.mark.parametrize("template", [
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "{% for a in range(100000) %}{% for b in 'x' * 100000 %}{% endfor %}{% endfor %}",
    "{% macro f() %}{% for a in range(100000) %}{% endfor %}{{ f() }}{% endmacro %}{{ f() }}",
], ids=["nested-range", "nested-string", "macro-loops"])
def test_endless_loops_hit_the_time_limit(template):
    refused(template, "time limit")


@pytest.mark.parametrize("template", [
    "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    BIG + "{% for i in range(100000) %}{{ s }}{% endfor %}",
    BIG + "{% macro m() %}{% for i in range(100000) %}{{ s }}{% endfor %}{% endmacro %}"
          "{% set t = m() %}",
    "{{ 'x' * 10**9 }}",
    "{{ ['x'] * 10**9 }}",
    "{{ 2 ** (10**9) }}",
    BIG + "{% set ns = namespace(s=s) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
          "{% endfor %}",
    BIG + "{{ s.replace('x', s) }}",
    BIG + "{{ s|replace('x', s) }}",
    BIG + "{{ s.join([s] * 1000) }}",
    BIG + "{{ ([s] * 1000)|join(s) }}",
    "{{ 'x'.center(10**10) }}",
    "{{ 'x'|center(10**10) }}",
    "{{ 'x'|indent(10**10, true) }}",
    "{{ '%999999999d' % 1 }}",
    "{{ '%*d' % (999999999, 1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:>{}}'.format(1, 999999999) }}",
    "{{ '%999999999d'|format(1) }}",
], ids=["nested-output", "output", "macro-output", "str-times", "list-times", "power",
        "doubling", "replace", "replace-filter", "join", "join-filter", "center",
        "center-filter", "indent-filter", "percent-width", "percent-star", "format-width",
        "format-nested", "format-filter"])
def test_huge_results_hit_the_size_limit(template):
    refused(template, "characters, past the limit")


@pytest.mark.parametrize("template, words", [
    ("{{ 1 / 0 }}", ["ZeroDivisionError: division by zero"]),
    ("{{ messages.nope() }}", ["has no attribute 'nope'"]),
    ("{{ raise_exception('Conversation roles must alternate\nuser/assistant') }}",
     ["Conversation roles must alternate user/assistant"]),
    ("{% for m in messages %}", ["line 1"]),
    ("{{ ''.__class__.__mro__ }}", ["unsafe"]),
    ("{{ messages.append(1) }}", ["unsafe"]),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", ["RecursionError"]),
    ("{{ 'x' + 1 }}", ["TypeError"]),
    ("{{ (10**5000)|string }}", ["ValueError"]),
], ids=["zero-division", "undefined-method", "raise_exception", "syntax", "dunder", "mutation",
        "recursion", "type", "int-to-str"])
def test_template_errors_are_one_line(template, words):
    refused(template, *words)


def test_ordinary_templates_still_work():
    assert render("{% for m in messages %}{{ m.content }}{% if not loop.last %}, "
                  "{% endif %}{% else %}none{% endfor %}") == "Hi, Hello"
    assert render("{% for x in [1, 2] %}{{ x * 2 }}{% endfor %}{{ '%03d' % 7 }}"
                  "{{ '{}-{}'.format(1, 'a') }}{{ 'ab'|center(6) }}") == "24007" "1-a" "  ab  "
    assert render("{% for x in [[1, [2]], [3]] recursive %}{{ x if x is number else loop(x) }}"
                  "{% endfor %}") == "123"
    book = "word " * 1_000_000  # 5 MB of messages: the size limit grows with them
    assert len(render("{{ messages[0].content }}", [{"role": "user", "content": book}])) == \
        len(book)


def test_command_line_names_the_template_file(tmp_path, capsys):
    model = tiny_llama(tmp_path / "model")
    (model / "chat_template.jinja").write_text("{{ 1 / 0 }}")
    rc = cli.main(["--model", str(model), "--prompt-text", "hi", "--chat"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err == (f"tinfinite: error: chat template in {model / 'chat_template.jinja'} failed: "
                   f"ZeroDivisionError: division by zero; check the messages or fix the "
                   f"template\n")
