"""`pyv4 serve`: an OpenAI-compatible HTTP server over the batched scheduler.

    pyv4 serve MODEL|demo [--host 127.0.0.1] [--port 8080] [--parallel 4]
               [--api-key KEY | --api-key-file F] [--ctx N] [--kv fp8]
               [--prompt-cache DIR --prompt-cache-bytes N] [--threads N] [--device cpu|cuda[:N]]

FastAPI on uvicorn (what vLLM and SGLang serve with): a well-kept ASGI stack
whose streaming responses are cancelled when the client goes away, which is
how a disconnect frees its slot here. The HTTP side only validates requests
(pyv4/openai_api.py), hands jobs to the Scheduler (pyv4/batching.py) and turns
their events into JSON or server-sent events; all model work runs on the
scheduler's thread. The port opens at once; the model loads in the background
(GET /health answers 503 until it is ready).
"""


import argparse
import asyncio
import hmac
import json
import os
import sys
import threading
import time
from typing import Any

from .openai_api import (ApiError, RequestSpec, chat_logprobs, completion_logprobs, envelope,
                         finish_reason, new_id, parse_chat, parse_completion, tool_call_json, usage)

ARG_FRAGMENT = 24  # characters of tool-call arguments per streamed fragment


class ServerState:
    """The loaded model and scheduler (once ready) and the request counters."""

    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.model = self.scheduler = self.tokenizer = None
        self.model_name = ""
        self.n_ctx = 0
        self.created = int(time.time())
        self.requests: dict[tuple[str, int], int] = {}
        self.disconnects = 0

    def load(self, loader) -> None:
        """Runs `loader()` -> (model, scheduler, name, n_ctx) on a thread."""
        def run():
            try:
                self.model, self.scheduler, self.model_name, self.n_ctx = loader()
                self.tokenizer = self.model.tokenizer
                from .tool_choice import vocab_index
                vocab_index(self.tokenizer)  # built once here, not on a request's clock
            except Exception as e:  # reported by /health
                self.load_error = f"{type(e).__name__}: {e}"
            self.ready.set()

        threading.Thread(target=run, name="pyv4-load", daemon=True).start()


def _json(obj: Any, status: int = 200):
    from fastapi.responses import JSONResponse

    return JSONResponse(obj, status_code=status)


class Gate:
    """ASGI middleware: the API key (every path but /health) and per-path
    request counts. Plain ASGI, so streaming responses and their
    cancellation pass through untouched."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if self.state.api_key is not None and path != "/health":
                headers = dict(scope.get("headers") or [])
                auth = headers.get(b"authorization", b"").decode("latin-1")
                given = auth[7:] if auth.lower().startswith("bearer ") else ""
                if not hmac.compare_digest(given.encode(), self.state.api_key.encode()):
                    err = ApiError("invalid or missing API key (send 'Authorization: Bearer KEY')",
                                   status=401, type_="authentication_error", code="invalid_api_key")
                    return await _json(err.body, 401)(scope, receive, send_wrapper)
            await self.app(scope, receive, send_wrapper)
        finally:
            key = (path, status["code"])
            self.state.requests[key] = self.state.requests.get(key, 0) + 1


def create_app(state: ServerState):
    from fastapi import FastAPI, Request
    from fastapi.responses import PlainTextResponse, StreamingResponse

    app = FastAPI(title="pyv4", docs_url=None, redoc_url=None, openapi_url=None)

    def need_model():
        if not state.ready.is_set():
            raise ApiError("the model is still loading", status=503, type_="unavailable_error")
        if state.load_error:
            raise ApiError(f"the model failed to load: {state.load_error}", status=503,
                           type_="unavailable_error")

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(f"the request body is not valid JSON: {e}") from None

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return _json(exc.body, exc.status)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        return _json(ApiError(f"internal error: {type(exc).__name__}: {exc}", status=500,
                              type_="server_error").body, 500)

    @app.get("/health")
    async def health():
        if not state.ready.is_set():
            return _json({"status": "loading"}, 503)
        if state.load_error:
            return _json({"status": "error", "message": state.load_error}, 503)
        return _json({"status": "ok"})

    @app.get("/v1/models")
    async def models():
        need_model()
        return _json({"object": "list", "data": [
            {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "pyv4",
             "max_model_len": state.n_ctx}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        need_model()
        spec = parse_chat(await body_of(request), state.tokenizer, state.n_ctx)
        return await run(request, spec)

    @app.post("/v1/completions")
    async def completions(request: Request):
        need_model()
        spec = parse_completion(await body_of(request), state.tokenizer, state.n_ctx)
        return await run(request, spec)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        need_model()
        body = await body_of(request)
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object")
        if "messages" in body:
            ids = parse_chat({**body, "max_tokens": 1}, state.tokenizer, 1 << 62).prompt_ids
        else:
            text = body.get("content", body.get("prompt"))
            if not isinstance(text, str):
                raise ApiError("invalid value for 'content': expected a string", param="content")
            ids = state.tokenizer.encode(text)
        return _json({"tokens": ids, "count": len(ids), "max_model_len": state.n_ctx})

    @app.post("/detokenize")
    async def detokenize(request: Request):
        need_model()
        body = await body_of(request)
        ids = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(ids, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
            raise ApiError("invalid value for 'tokens': expected an array of token ids", param="tokens")
        bad = [t for t in ids if not 0 <= t < state.tokenizer.n_vocab]
        if bad:
            raise ApiError(f"invalid value for 'tokens': id {bad[0]} is outside the vocabulary", param="tokens")
        text = state.tokenizer.decode(ids)
        return _json({"content": text, "prompt": text})

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(render_metrics(state), media_type="text/plain; version=0.0.4")

    async def run(request: Request, spec: RequestSpec):
        from .batching import Job
        from .generate import Generation
        from .tool_choice import constraint_for

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        eos = state.model.config["eos_token_id"]
        jobs = []
        for i in range(spec.n):
            constraint = (constraint_for(spec.tool_choice, spec.tools, state.tokenizer, spec.thinking, eos)
                          if spec.kind == "chat" else None)
            gen = Generation(state.tokenizer, eos, spec.prompt_ids, spec.params[i], constraint, spec.logprobs)
            jobs.append(Job(prompt=spec.prompt_ids, gen=gen, on_event=(
                lambda kind, payload, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, kind, payload)))))
        state.scheduler.submit(jobs)
        reply = Reply(spec, jobs, state)
        if spec.stream:
            return StreamingResponse(reply.sse(queue), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            while not reply.finished:
                try:
                    item = await asyncio.wait_for(queue.get(), 0.2)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        state.disconnects += 1
                        return _json({}, 499)
                    continue
                reply.take(*item)
        finally:
            for j in jobs:
                j.cancel()
        errors = [j.error for j in jobs if j.error]
        if errors:
            raise ApiError(f"generation failed: {errors[0]}", status=500, type_="server_error")
        return _json(reply.whole())

    app.add_middleware(Gate, state=state)
    return app


class Reply:
    """The reply to one request, built from its jobs' events: whole (JSON) or
    as server-sent events."""

    def __init__(self, spec: RequestSpec, jobs, state: "ServerState"):
        from .chat_format import ReplyStream

        self.spec, self.jobs, self.state = spec, jobs, state
        self.kind = spec.kind
        self.id = new_id("chatcmpl" if self.kind == "chat" else "cmpl")
        self.created = int(time.time())
        mode = "thinking" if spec.thinking else "chat"
        self.streams = [ReplyStream(mode) for _ in jobs] if self.kind == "chat" else None
        self.text = ["" for _ in jobs]
        self.calls: list[list[dict]] = [[] for _ in jobs]
        self.lp_sent = [0 for _ in jobs]
        self.done = [False for _ in jobs]
        self.pending: list[dict] = []  # stream chunks not yet sent

    @property
    def finished(self) -> bool:
        return all(self.done)

    def _chunk(self, i: int, delta: dict | None = None, text: str | None = None,
               finish: str | None = None, logprobs: dict | None = None) -> None:
        env = envelope("chat.chunk" if self.kind == "chat" else "completion.chunk", self.id,
                       self.state.model_name, self.created)
        if self.kind == "chat":
            choice = {"index": i, "delta": delta or {}, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": i, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        self.pending.append({**env, "choices": [choice]})

    def _new_logprobs(self, i: int) -> dict | None:
        entries = self.jobs[i].gen.logprobs[self.lp_sent[i]:]
        if not self.spec.logprobs or not entries:
            return None
        self.lp_sent[i] += len(entries)
        conv = chat_logprobs if self.kind == "chat" else completion_logprobs
        return conv(entries, self.state.tokenizer)

    def take(self, i: int, kind: str, payload) -> None:
        """One event of job i: ("chunks", [Chunk]) or ("done", job)."""
        if kind == "chunks":
            text = "".join(c.text for c in payload)
            if self.kind == "completion":
                self.text[i] += text
                if text or self.spec.logprobs:
                    self._chunk(i, text=text, logprobs=self._new_logprobs(i))
                return
            self._events(i, self.streams[i].feed(text))
            return
        if self.kind == "chat":
            self._events(i, self.streams[i].finish())
        job = self.jobs[i]
        self.done[i] = True
        if job.error:
            self.pending.append({"error": ApiError(f"generation failed: {job.error}", status=500,
                                                   type_="server_error").body["error"]})
        fr = finish_reason(job.gen.finish_reason, bool(self.calls[i]))
        if self.kind == "chat":
            self._chunk(i, {}, finish=fr, logprobs=self._new_logprobs(i))
        else:
            self._chunk(i, text="", finish=fr, logprobs=self._new_logprobs(i))

    def _events(self, i: int, events) -> None:
        sent_lp = False
        for ev in events:
            lp = None if sent_lp else self._new_logprobs(i)
            sent_lp = True
            if ev.kind == "tool_call":
                call = tool_call_json(ev.tool_call, index=len(self.calls[i]))
                self.calls[i].append(call)
                args = call["function"]["arguments"]
                head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
                self._chunk(i, {"tool_calls": [head]}, logprobs=lp)
                for k in range(0, len(args), ARG_FRAGMENT):
                    frag = {"index": call["index"], "function": {"arguments": args[k:k + ARG_FRAGMENT]}}
                    self._chunk(i, {"tool_calls": [frag]})
            else:
                key = "reasoning_content" if ev.kind == "reasoning" else "content"
                self._chunk(i, {key: ev.text}, logprobs=lp)
        if not sent_lp:
            lp = self._new_logprobs(i)
            if lp is not None:
                self._chunk(i, {}, logprobs=lp)

    def _usage(self) -> dict:
        n_completion = sum(len(j.gen.tokens) for j in self.jobs)
        return usage(len(self.spec.prompt_ids), n_completion, self.jobs[0].cached_tokens)

    def whole(self) -> dict:
        choices = []
        for i, job in enumerate(self.jobs):
            fr = finish_reason(job.gen.finish_reason, bool(self.calls[i]))
            lp = None
            if self.spec.logprobs:
                conv = chat_logprobs if self.kind == "chat" else completion_logprobs
                lp = conv(job.gen.logprobs, self.state.tokenizer)
            if self.kind == "chat":
                rs = self.streams[i]
                msg = {"role": "assistant", "content": rs.content if (rs.content or not self.calls[i]) else None,
                       "reasoning_content": rs.reasoning_content or None}
                if self.calls[i]:
                    msg["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in self.calls[i]]
                choices.append({"index": i, "message": msg, "logprobs": lp, "finish_reason": fr})
            else:
                choices.append({"index": i, "text": self.text[i], "logprobs": lp, "finish_reason": fr})
        env = envelope(self.kind, self.id, self.state.model_name, self.created)
        return {**env, "choices": choices, "usage": self._usage()}

    async def sse(self, queue: asyncio.Queue):
        """Server-sent events: a first chunk with the role (chat), the deltas,
        each choice's finish_reason once, a usage chunk when asked, [DONE]."""
        try:
            if self.kind == "chat":
                for i in range(len(self.jobs)):
                    self._chunk(i, {"role": "assistant", "content": ""})
            while True:
                for obj in self.pending:
                    yield f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
                self.pending = []
                if self.finished:
                    break
                self.take(*(await queue.get()))
            if self.spec.include_usage:
                env = envelope("chat.chunk" if self.kind == "chat" else "completion.chunk", self.id,
                               self.state.model_name, self.created)
                yield f"data: {json.dumps({**env, 'choices': [], 'usage': self._usage()})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not self.finished:
                self.state.disconnects += 1
            for j in self.jobs:  # a client that went away stops its generation
                j.cancel()


def render_metrics(state: ServerState) -> str:
    lines = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]):
        lines.append(f"# HELP pyv4_{name} {help_}")
        lines.append(f"# TYPE pyv4_{name} {kind}")
        for labels, v in samples:
            lines.append(f"pyv4_{name}{labels} {v}")

    metric("requests_total", "counter", "HTTP requests by path and status.",
           [(f'{{path="{p}",status="{s}"}}', n) for (p, s), n in sorted(state.requests.items())])
    metric("client_disconnects_total", "counter", "Requests whose client went away before the reply ended.",
           [("", state.disconnects)])
    sch = state.scheduler
    if sch is not None:
        st = sch.stats
        metric("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", [("", st["prompt_tokens"])])
        metric("prompt_tokens_cached_total", "counter", "Prompt tokens resumed from a cached prefix.",
               [("", st["cached_tokens"])])
        metric("prompt_cache_hits_total", "counter", "Requests that resumed a cached prefix.",
               [("", st["cache_hits"])])
        metric("generated_tokens_total", "counter", "Tokens generated.", [("", st["generated_tokens"])])
        metric("generations_total", "counter", "Generations (choices) by outcome.",
               [('{outcome="done"}', st["jobs_done"]), ('{outcome="cancelled"}', st["jobs_cancelled"]),
                ('{outcome="failed"}', st["jobs_failed"])])
        metric("batch_steps_total", "counter", "Batched forward passes.", [("", st["steps"])])
        metric("batch_rows_total", "counter", "Token rows over all batched forward passes.", [("", st["batch_rows"])])
        metric("queue_length", "gauge", "Generations waiting for a slot.", [("", sch.queued)])
        metric("active_generations", "gauge", "Generations in a slot.", [("", sch.active)])
        metric("tokens_per_second", "gauge", "Tokens fed per second over the last 10 s.",
               [("", round(sch.tokens_per_second(), 3))])
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


def _size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30,
             "kb": 10**3, "mb": 10**6, "gb": 10**9}
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    try:
        return int(float(num) * units[t[len(num):]])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 500M, 1000000)") from None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pyv4 serve", description="OpenAI-compatible HTTP server.")
    ap.add_argument("model", help="a deepseek4 GGUF file, or 'demo' for the built-in demo model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--parallel", type=int, default=4, help="requests decoded together (default 4)")
    key = ap.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None)
    key.add_argument("--api-key-file", default=None, help="a file holding the API key")
    ap.add_argument("--ctx", type=int, default=None, help="context per request (default: the model's)")
    ap.add_argument("--kv", default="fp8", choices=["fp8", "bf16", "f32"])
    ap.add_argument("--prompt-cache", default=None, metavar="DIR", help="keep finished sessions on disk here")
    ap.add_argument("--prompt-cache-bytes", type=_size, default=_size("4GiB"))
    from .cli_commands import _add_device_args

    _add_device_args(ap)
    ap.add_argument("--model-name", default=None, help="the id /v1/models reports")
    a = ap.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"pyv4 serve: error: {msg}", file=sys.stderr)
        return 2

    if a.parallel < 1:
        return fail("--parallel must be >= 1")
    if a.ctx is not None and a.ctx < 2:
        return fail("--ctx must be >= 2")
    if not 0 <= a.port < 65536:
        return fail("--port must be in [0, 65535]")
    if a.threads is not None and a.threads < 1:
        return fail("--threads must be >= 1")
    from .device import DeviceError, parse_device, require_cuda

    try:  # before the port opens: a device that cannot work is a usage error
        kind, index = parse_device(a.device)
        if kind == "cuda":
            require_cuda(index)
    except (DeviceError, ValueError) as e:
        return fail(str(e))
    api_key = a.api_key
    if a.api_key_file:
        try:
            api_key = open(a.api_key_file, encoding="utf-8").read().strip()
        except OSError as e:
            return fail(f"cannot read --api-key-file: {e}")
        if not api_key:
            return fail(f"--api-key-file {a.api_key_file} is empty")
    path = a.model
    if path == "demo":
        from .demo import demo_model_path

        path = demo_model_path()
    elif not os.path.exists(path):
        return fail(f"model file not found: {path}")
    if a.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print("pyv4 serve: warning: listening beyond this machine without --api-key", file=sys.stderr)
    try:
        import uvicorn  # noqa: F401
        import fastapi  # noqa: F401
    except ImportError as e:
        return fail(f"{e}. Install the server extras: pip install 'pyv4[serve]'")

    def loader():
        from . import Model
        from .batching import Scheduler

        model = Model(path, threads=a.threads, device=a.device, vram=a.vram, expert_freq=a.expert_freq)
        n_ctx = min(a.ctx, model.n_ctx) if a.ctx else model.n_ctx
        cache = model.prompt_cache(a.prompt_cache, a.prompt_cache_bytes) if a.prompt_cache else None
        sch = Scheduler(model, parallel=a.parallel, kv=a.kv, prompt_cache=cache)
        name = a.model_name or ("pyv4-demo" if a.model == "demo" else os.path.splitext(os.path.basename(path))[0])
        return model, sch, name, n_ctx

    state = ServerState(api_key)
    state.load(loader)
    app = create_app(state)
    import uvicorn

    print(f"pyv4 serve: http://{a.host}:{a.port}/v1 (model loading: GET /health)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0
