"""An OpenAI-compatible HTTP server on one Engine: `tinfinite serve --model DIR --port 8000`.

    GET  /v1/models             the one model, named after its folder
    POST /v1/chat/completions   messages -> the model's chat template -> a reply
    POST /v1/completions        prompt -> its continuation

Both POSTs answer whole or streamed (`"stream": true`: server-sent events, `data: {...}`
chunks, then `data: [DONE]`). Fields: model, messages / prompt, max_tokens (or
max_completion_tokens), temperature (default 1, as OpenAI's), top_p, stop, seed, n (1 only),
stream, stream_options.include_usage, user; and two extensions that vLLM also takes, top_k
and ignore_eos. Any other field, a wrong type or a value out of range is refused with HTTP
400 and an OpenAI-style error naming the field; an unknown model is a 404.

One engine, one cache: a single worker thread runs the requests one at a time, in the order
they came. A request whose prompt token ids begin with everything the cache holds (the
previous prompt and reply: a chat that goes on) feeds only its new tokens, and says how many
it reused in usage.prompt_tokens_details.cached_tokens. A streaming client that goes away
stops its generation at the next token.
"""
import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from tinfinite import settings
from tinfinite.engine import Engine
from tinfinite.errors import UserError
from tinfinite.tokenizer import TextStream

MAX_TOKENS = 1 << 20  # a bound on one reply (the context itself has none)
TEMPERATURE = 1.0     # OpenAI's default when a request gives none (the command line's: 0)
ROLES = ("system", "developer", "user", "assistant")
COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream",
          "stream_options", "user", "top_k", "ignore_eos"}
FIELDS = {"chat": COMMON | {"messages", "max_completion_tokens"}, "text": COMMON | {"prompt"}}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def error_response(message: str, param=None, status=400, code=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": param, "code": code}}, status_code=status)


def number(body: dict, name: str, default, lo, hi, integer=False, above=False):
    """body[name] checked to be a number (an integer) in [lo, hi], or (lo, hi] if above;
    default if absent or null."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise BadRequest(f"{name}: expected {'an integer' if integer else 'a number'}, got "
                         f"{json.dumps(value)[:40]}", name)
    if not (lo < value if above else lo <= value) or not value <= hi:  # NaN fails too
        raise BadRequest(f"{name}: {value} is out of range {'(' if above else '['}{lo}, {hi}]",
                         name)
    return value


def text_of(content, param: str) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and
                                         isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(f"{param}: expected a string or a list of text parts", param)


def parse(body: dict, kind: str, model_name: str, tokenizer) -> tuple[list[int], dict]:
    """The prompt's token ids and the generation options of a request body, checked."""
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        raise BadRequest(f"unknown or unsupported field `{unknown[0]}`", unknown[0])
    if "model" not in body:
        raise BadRequest("`model` is required", "model")
    if body["model"] != model_name:
        raise BadRequest(f"the model `{body['model']}` does not exist; this server serves "
                         f"`{model_name}`", "model", 404, "model_not_found")
    if number(body, "n", 1, 1, 1 << 31, integer=True) != 1:
        raise BadRequest("n: only 1 is supported", "n")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise BadRequest("give max_tokens or max_completion_tokens, not both", "max_tokens")
    cap = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop: expected a string or a list of strings", "stop")
    for flag in ("stream", "ignore_eos"):
        if not isinstance(body.get(flag, False), bool):
            raise BadRequest(f"{flag}: expected true or false", flag)
    usage = body.get("stream_options") or {}
    if not isinstance(usage, dict) or set(usage) - {"include_usage"}:
        raise BadRequest("stream_options: only {\"include_usage\": true|false}", "stream_options")
    options = dict(
        max_new_tokens=number(body, cap, settings.MAX_NEW_TOKENS, 1, MAX_TOKENS, integer=True),
        temperature=number(body, "temperature", TEMPERATURE, 0, 2),
        top_p=number(body, "top_p", 1.0, 0, 1, above=True),
        top_k=number(body, "top_k", 0, 0, 1 << 31, integer=True),
        seed=number(body, "seed", None, -2**63, 2**64 - 1, integer=True),
        ignore_eos=body.get("ignore_eos", False), stop=[s for s in stop if s],
        stream=body.get("stream", False), include_usage=bool(usage.get("include_usage")))
    if kind == "text":
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            raise BadRequest("prompt: expected a non-empty string", "prompt")
        return tokenizer.encode(body["prompt"]), options
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: expected a non-empty list of {role, content}", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
            raise BadRequest(f"messages[{i}]: expected {{\"role\": one of {', '.join(ROLES)}, "
                             f"\"content\": ...}}", f"messages[{i}]")
    chat = [{"role": "system" if m["role"] == "developer" else m["role"],
             "content": text_of(m["content"], f"messages[{i}].content")}
            for i, m in enumerate(messages)]
    return tokenizer.encode(tokenizer.chat_prompt(chat), add_bos=False), options


class Worker:
    """The engine on its own thread: jobs run one at a time, in the order submitted.

    `context` is the token ids the engine's cache holds (prompt and reply of the last job; the
    reply's last token may still be unfed, which prefill(resume=True) feeds first)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinfinite-engine")
        self.context: list[int] = []

    def generate(self, ids: list[int], options: dict, emit, cancelled: threading.Event) -> dict:
        """On the worker thread: emit(text) piece by piece; return how it ended."""
        n = len(self.context)
        cached = n if n < len(ids) and ids[:n] == self.context else 0
        self.context = []  # until this job ends cleanly the cache holds nothing reusable
        text, tokens, finish = TextStream(self.engine.tokenizer, options["stop"]), [], "length"
        steps = self.engine.generate_ids(
            ids[cached:], resume=cached > 0, max_new_tokens=options["max_new_tokens"],
            temperature=options["temperature"], top_k=options["top_k"], top_p=options["top_p"],
            seed=options["seed"], ignore_eos=options["ignore_eos"])
        try:
            for token in steps:
                tokens.append(token)
                emit(text.push(token))
                if text.stopped or cancelled.is_set():
                    break
            else:
                if len(tokens) < options["max_new_tokens"]:
                    finish = "stop"  # end of sequence
        finally:
            steps.close()
        if not text.stopped:
            emit(text.flush())
        if text.stopped:
            finish = "stop"
        self.context = ids + tokens
        return {"finish_reason": finish, "prompt_tokens": len(ids), "cached_tokens": cached,
                "completion_tokens": len(tokens)}

    async def run(self, ids: list[int], options: dict):
        """Queue a job; yield ("text", piece)... then ("done", summary). Closing this
        generator (a client gone) cancels the job, queued or running."""
        loop, queue, cancelled = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

        def send(kind, value):
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def job():
            if cancelled.is_set():
                return
            try:
                send("done", self.generate(ids, options, lambda t: t and send("text", t),
                                           cancelled))
            except Exception as e:  # noqa: BLE001 -- handed to the request, which reports it
                send("error", e)

        self.thread.submit(job)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "done":
                    return
        finally:
            cancelled.set()


def make_app(engine: Engine, model_name: str) -> Starlette:
    worker = Worker(engine)
    created = int(time.time())

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": model_name, "object": "model", "created": created, "owned_by": "tinfinite"}]})

    async def complete(request: Request, kind: str):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            return error_response(f"the body is not valid JSON ({e})")
        if not isinstance(body, dict):
            return error_response("the body must be a JSON object")
        reply = Reply(kind, model_name)
        try:
            ids, options = parse(body, kind, model_name, engine.tokenizer)
            events = worker.run(ids, options)
            first = await anext(events)  # prefill errors are still a plain 400
            if options["stream"]:
                return StreamingResponse(reply.stream(first, events, options["include_usage"]),
                                         media_type="text/event-stream")
            text = []
            async for what, value in _chain(first, events):
                if what == "text":
                    text.append(value)
                if await request.is_disconnected():  # nobody waits for the answer: stop
                    await events.aclose()
                    return error_response("the client went away")
            return JSONResponse(reply.whole("".join(text), value))  # value: the summary
        except BadRequest as e:
            return error_response(str(e), e.param, e.status, e.code)
        except UserError as e:
            return error_response(str(e))

    async def chat(request):
        return await complete(request, "chat")

    async def text(request):
        return await complete(request, "text")

    async def http_error(request, exc: HTTPException):
        return error_response(f"{request.method} {request.url.path}: {exc.detail}",
                              status=exc.status_code)

    return Starlette(routes=[Route("/v1/models", models),
                             Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/completions", text, methods=["POST"])],
                     exception_handlers={HTTPException: http_error})


class Reply:
    """OpenAI's response shapes for one request: chat.completion(.chunk) or text_completion."""

    def __init__(self, kind: str, model: str):
        self.kind, self.model, self.created = kind, model, int(time.time())
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex

    def envelope(self, choices: list, chunk: bool) -> dict:
        obj = "text_completion" if self.kind == "text" else \
            "chat.completion.chunk" if chunk else "chat.completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}

    def choice(self, text: str | None, finish: str | None, chunk: bool) -> dict:
        if self.kind == "text":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        key, body = ("delta", {} if text is None else {"content": text}) if chunk else \
            ("message", {"role": "assistant", "content": text})
        return {"index": 0, key: body, "logprobs": None, "finish_reason": finish}

    @staticmethod
    def usage(s: dict) -> dict:
        return {"prompt_tokens": s["prompt_tokens"], "completion_tokens": s["completion_tokens"],
                "total_tokens": s["prompt_tokens"] + s["completion_tokens"],
                "prompt_tokens_details": {"cached_tokens": s["cached_tokens"]}}

    def whole(self, text: str, summary: dict) -> dict:
        return {**self.envelope([self.choice(text, summary["finish_reason"], False)], False),
                "usage": self.usage(summary)}

    async def stream(self, first, events, include_usage: bool):
        def sse(obj) -> str:
            return f"data: {json.dumps(obj)}\n\n"
        if self.kind == "chat":
            yield sse(self.envelope([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None}], True))
        try:
            async for what, value in _chain(first, events):
                if what == "text":
                    yield sse(self.envelope([self.choice(value, None, True)], True))
                    continue
                yield sse(self.envelope([self.choice(None, value["finish_reason"], True)], True))
                if include_usage:
                    yield sse({**self.envelope([], True), "usage": self.usage(value)})
        except UserError as e:  # after the first token: the stream can only say so and end
            yield sse({"error": {"message": str(e), "type": "invalid_request_error",
                                 "param": None, "code": None}})
        finally:
            await events.aclose()  # the client is gone: cancel the job (a no-op once done)
        yield "data: [DONE]\n\n"


async def _chain(first, events):
    yield first
    async for event in events:
        yield event


def serve(engine: Engine, model_name: str, host: str = "127.0.0.1", port: int = 8000):
    """Serve until Ctrl-C (uvicorn)."""
    import uvicorn
    uvicorn.run(make_app(engine, model_name), host=host, port=port, log_level="info")
