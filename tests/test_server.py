"""`tinfinite serve` end to end: a real uvicorn server on 127.0.0.1, the official `openai`
client as the client, raw HTTP (httpx) for the requests a client library would not send.

The model is a tiny random Llama whose tokens are single ASCII characters, so that whatever
it replies reads back as the same token ids, as a real model's replies do (a conversation's
next turn then begins with exactly the ids the cache holds)."""
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import tokenizers
import uvicorn
from tokenizers import decoders, models, pre_tokenizers, trainers

from tests.tiny import make_tiny_model
from tinfinite.engine import Engine
from tinfinite.server import make_app

REPO = Path(__file__).resolve().parents[1]
# ChatML, refusing a conversation that starts with the assistant as real templates do
TEMPLATE = ("{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('the conversation "
            "must start with the user') }}{% endif %}{% for m in messages %}<|im_start|>"
            "{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def ascii_llama(folder: Path) -> Path:
    """A tiny random Llama with a chat template; its vocabulary: printable ASCII, newline and
    </s>, no merges (and no BOS, which a reply could hold but its text would not)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = "".join(chr(c) for c in range(32, 127)) + "\n"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = sorted(set("".join(piece for piece, _ in byte_level.pre_tokenize_str(chars))))
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = byte_level, decoders.ByteLevel()
    tok.train_from_iterator([chars], trainers.BpeTrainer(
        vocab_size=len(alphabet) + 1, special_tokens=["</s>"], show_progress=False,
        initial_alphabet=alphabet))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    make_tiny_model(folder, vocab_size=tok.get_vocab_size(), bos_token_id=None, eos_token_id=0)
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return ascii_llama(tmp_path_factory.mktemp("server") / "tiny")


@pytest.fixture(scope="module")
def server(model):
    """(base URL, the server's engine), serving on a free loopback port in a thread."""
    engine = Engine.load(model)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(make_app(engine, "tiny"), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", engine
    srv.should_exit = True
    thread.join(timeout=30)
    sock.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def fresh(model):
    """A second engine: what a server that never saw the earlier requests would say."""
    return Engine.load(model)


def greedy(engine, ids, n) -> str:
    return engine.tokenizer.decode(list(engine.generate_ids(ids, max_new_tokens=n,
                                                            temperature=0.0)))


def chat_ids(engine, messages) -> list[int]:
    return engine.tokenizer.encode(engine.tokenizer.chat_prompt(messages), add_bos=False)


def test_models_lists_the_one_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_whole_and_streamed(client, fresh):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12,
                                       temperature=0)
    reply = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert reply == greedy(fresh, chat_ids(fresh, messages), 12)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(chat_ids(fresh, messages))
    assert r.usage.completion_tokens == 12 == r.usage.total_tokens - r.usage.prompt_tokens
    chunks = list(client.chat.completions.create(
        model="tiny", messages=messages, max_completion_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_completions_whole_streamed_and_stopped(client, fresh):
    ids = fresh.tokenizer.encode("The fox")
    text = greedy(fresh, ids, 16)
    r = client.completions.create(model="tiny", prompt="The fox", max_tokens=16, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == text
    assert r.usage.prompt_tokens == len(ids)
    streamed = list(client.completions.create(model="tiny", prompt="The fox", max_tokens=16,
                                              temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text
    stop = text[5:8]
    r = client.completions.create(model="tiny", prompt="The fox", max_tokens=16, temperature=0,
                                  stop=[stop, "never"])
    assert r.choices[0].text == text[:text.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_sampling_follows_the_seed(client):
    ask = dict(model="tiny", prompt="The fox", max_tokens=16, temperature=1.0, top_p=0.9,
               extra_body={"top_k": 20})
    a, b = (client.completions.create(seed=7, **ask).choices[0].text for _ in range(2))
    assert a == b != client.completions.create(seed=8, **ask).choices[0].text


def test_a_conversation_that_goes_on_reuses_the_cache(client, fresh):
    """Turns 2 and 3 resend the whole conversation; the server feeds only what is new, and
    replies what a fresh engine replies to the whole conversation (well past the window)."""
    messages, held = [], 0
    for turn, said in enumerate(["Hello there, how are you today?", "Tell me more please.",
                                 "And then what happened next?"]):
        messages.append({"role": "user", "content": said})
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=24,
                                           temperature=0)
        reply = r.choices[0].message.content
        ids = chat_ids(fresh, messages)
        assert reply == greedy(fresh, ids, 24)
        assert r.usage.prompt_tokens == len(ids)
        assert r.usage.prompt_tokens_details.cached_tokens == held  # 0 on the first turn
        held = len(ids) + r.usage.completion_tokens
        messages.append({"role": "assistant", "content": reply})
    assert held > 3 * 64  # the window of the tiny model


def test_requests_are_served_one_at_a_time_in_arrival_order(server, client, fresh,
                                                            monkeypatch):
    """Two clients at once: the second request starts on the engine after the first ended."""
    engine, calls = server[1], []
    generate_ids = engine.generate_ids

    def logged(ids, **options):  # the engine's calls, as they start and end
        calls.append(("start", len(ids)))
        try:
            yield from generate_ids(ids, **options)
        finally:
            calls.append(("end", len(ids)))

    monkeypatch.setattr(engine, "generate_ids", logged)
    prompts, texts = ["A small engine", "The quick brown fox jumps"], {}

    def ask(prompt):
        stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=40,
                                           temperature=0, stream=True)
        texts[prompt] = "".join(chunk.choices[0].text for chunk in stream)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    threads[0].start()
    for _ in range(600):  # the first is on the engine before the second is sent
        if calls:
            break
        time.sleep(0.05)
    threads[1].start()
    for t in threads:
        t.join(120)
    lengths = [len(fresh.tokenizer.encode(p)) for p in prompts]
    assert calls == [("start", lengths[0]), ("end", lengths[0]),
                     ("start", lengths[1]), ("end", lengths[1])]
    for p in prompts:
        assert texts[p] == greedy(fresh, fresh.tokenizer.encode(p), 40)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_stops_its_generation(server, client, stream):
    url, engine = server
    body = {"model": "tiny", "prompt": "The fox", "max_tokens": 100000, "stream": stream,
            "ignore_eos": True}
    if stream:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
    else:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up waiting
            httpx.post(url + "/v1/completions", json=body, timeout=2)
    # the connection is closed: the count of tokens made stops growing
    before, seen = -1, engine.stats.new_tokens
    for _ in range(100):
        if seen == before:
            break
        time.sleep(0.3)
        before, seen = seen, engine.stats.new_tokens
    assert seen == before and seen < 100000
    r = client.completions.create(model="tiny", prompt="The fox", max_tokens=3)
    assert r.usage.completion_tokens == 3 and engine.stats.new_tokens == 3


BAD_CHAT = [  # (body, status, param, words in the message)
    ({"model": "tiny"}, 400, "messages", "messages: expected a non-empty list"),
    ({"model": "tiny", "messages": "hi"}, 400, "messages", "expected a non-empty list"),
    ({"model": "tiny", "messages": []}, 400, "messages", "expected a non-empty list"),
    ({"model": "tiny", "messages": [{"content": "hi"}]}, 400, "messages[0]", "role"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0]",
     "role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content", "expected a string or a list of text parts"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, 400,
     "frobnicate", "unknown or unsupported field `frobnicate`"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model", "`model` is required"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model",
     "the model `gpt-4` does not exist"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1 << 30},
     400, "max_tokens", "out of range [1, 1048576]"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400,
     "max_tokens", "out of range"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
      "max_completion_tokens": 2}, 400, "max_tokens", "not both"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
     400, "temperature", 'temperature: expected a number, got "hot"'),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": -0.5},
     400, "temperature", "out of range [0, 2]"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400,
     "top_p", "top_p: 0 is out of range (0, 1]"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "seed": 1.5}, 400,
     "seed", "expected an integer"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n",
     "only 1"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": 5}, 400, "stop",
     "a string or a list of strings"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400,
     "stream", "true or false"),
    ({"model": "tiny", "messages": [{"role": "assistant", "content": "hi"}]}, 400, None,
     "the conversation must start with the user"),  # the engine's own error (chat template)
]
BAD_TEXT = [
    ({"model": "tiny"}, 400, "prompt", "prompt: expected a non-empty string"),
    ({"model": "tiny", "prompt": ""}, 400, "prompt", "non-empty string"),
    ({"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt", "non-empty string"),
    ({"model": "tiny", "prompt": "hi", "messages": []}, 400, "messages", "unknown"),
    ({"model": "tiny", "prompt": "hi", "top_k": -1}, 400, "top_k", "out of range"),
]


@pytest.mark.parametrize("path, body, status, param, words",
                         [("/v1/chat/completions", *case) for case in BAD_CHAT] +
                         [("/v1/completions", *case) for case in BAD_TEXT])
def test_a_bad_request_is_refused_and_named(server, path, body, status, param, words):
    r = httpx.post(server[0] + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["code"] == ("model_not_found" if status == 404 else None)


@pytest.mark.parametrize("method, path, content, status, words", [
    ("POST", "/v1/completions", b"{bad", 400, "not valid JSON"),
    ("POST", "/v1/completions", b"\xff\xfe", 400, "not valid JSON"),
    ("POST", "/v1/chat/completions", b"[1, 2]", 400, "must be a JSON object"),
    ("GET", "/v1/chat/completions", None, 405, "Method Not Allowed"),
    ("POST", "/v1/embeddings", b"{}", 404, "Not Found"),
])
def test_a_request_that_is_not_json_or_not_served(server, method, path, content, status, words):
    r = httpx.request(method, server[0] + path, content=content, timeout=60)
    assert r.status_code == status and words in r.json()["error"]["message"]


def test_the_client_library_sees_the_errors_and_the_server_goes_on(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       n=2)
    assert e.value.status_code == 400 and e.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    r = client.completions.create(model="tiny", prompt="x", max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_serve_command(model, tmp_path):
    """`python main.py serve` in its own process, ended by SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), "serve", "--model",
                             str(model), "--port", str(port)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        assert models["data"][0]["id"] == "tiny"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                       json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert r.json()["usage"]["completion_tokens"] <= 2
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out


def test_serve_without_the_server_extra_says_what_to_install(monkeypatch, model, capsys):
    from tinfinite import cli
    monkeypatch.delitem(sys.modules, "tinfinite.server", raising=False)
    monkeypatch.setitem(sys.modules, "starlette.applications", None)
    assert cli.main(["serve", "--model", str(model)]) == 1
    err = capsys.readouterr().err
    assert "pip install 'tinfinite[server]'" in err and err.count("\n") == 1
