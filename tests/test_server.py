"""`pyv4 serve` driven as a real server process through the official `openai`
client (and raw HTTP where the client would hide what is checked): replies,
streaming, thinking, tool calls, stop strings, n, seeds, concurrency,
disconnects, auth, bad input, metrics. The server runs the demo model (random
weights), so tests compare replies with each other, never with fixed text."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

openai = pytest.importorskip("openai")

KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp, *args: str):
        self.port = _free_port()
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache"))
        self.log = open(tmp / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyv4.cli", "serve", "demo", "--port", str(self.port), "--threads", "2", *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp)  # outside the source tree
        deadline = time.time() + 180
        while time.time() < deadline:
            assert self.proc.poll() is None, open(self.log.name).read()
            try:
                if self.get("/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("server did not become healthy: " + open(self.log.name).read())

    def get(self, path: str, key: str | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str, body, key: str | None = KEY):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def client(self):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=KEY, max_retries=0, timeout=120)

    def metrics(self) -> dict[str, float]:
        status, text = self.get("/metrics", KEY)
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    s = Server(tmp, "--parallel", "4", "--api-key", KEY, "--ctx", "4096",
               "--prompt-cache", str(tmp / "pc"), "--prompt-cache-bytes", "64MiB")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def _chat(client, text: str, **kw):
    return client.chat.completions.create(model="pyv4-demo", messages=[{"role": "user", "content": text}], **kw)


def _stream(client, text: str, **kw):
    chunks = list(_chat(client, text, stream=True, **kw))
    return chunks


def _joined(chunks, field: str = "content", index: int = 0) -> str:
    return "".join(getattr(c.choices[0].delta, field, None) or "" for c in chunks
                   if c.choices and c.choices[0].index == index)


def test_health_and_models(server, client):
    assert server.get("/health") == (200, '{"status":"ok"}')  # no key needed
    ids = [m.id for m in client.models.list().data]
    assert ids == ["pyv4-demo"]


def test_stream_equals_whole_reply_at_temperature_0(client):
    whole = _chat(client, "Tell me about the sea.", max_tokens=12, temperature=0)
    chunks = _stream(client, "Tell me about the sea.", max_tokens=12, temperature=0)
    assert whole.choices[0].message.content == _joined(chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert whole.usage.completion_tokens <= 12
    # the legacy endpoint too
    w = client.completions.create(model="pyv4-demo", prompt="Once upon a time", max_tokens=10, temperature=0)
    s = list(client.completions.create(model="pyv4-demo", prompt="Once upon a time", max_tokens=10,
                                       temperature=0, stream=True))
    assert w.choices[0].text == "".join(c.choices[0].text for c in s if c.choices)
    assert w.usage.prompt_tokens > 0


def test_include_usage_is_a_last_chunk_without_choices(client):
    chunks = _stream(client, "Count.", max_tokens=7, temperature=0, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    whole = _chat(client, "Count.", max_tokens=7, temperature=0)
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens


def test_thinking_on_and_off(server, client):
    msgs = [{"role": "user", "content": "Why?"}]
    on = server.post("/tokenize", {"messages": msgs, "thinking": {"type": "enabled"}})[1]["tokens"]
    off = server.post("/tokenize", {"messages": msgs, "thinking": {"type": "disabled"}})[1]["tokens"]
    kw_on = server.post("/tokenize", {"messages": msgs, "chat_template_kwargs": {"enable_thinking": True}})[1]
    assert kw_on["tokens"] == on != off
    assert server.post("/detokenize", {"tokens": on[-1:]})[1]["content"] == "<think>"
    assert server.post("/detokenize", {"tokens": off[-1:]})[1]["content"] == "</think>"
    # With thinking on, the random model never closes </think>: everything is reasoning.
    r = client.chat.completions.create(model="m", messages=msgs, max_tokens=10, temperature=0,
                                       extra_body={"thinking": {"type": "enabled"}})
    m = r.choices[0].message
    assert m.reasoning_content and not m.content
    chunks = list(client.chat.completions.create(model="m", messages=msgs, max_tokens=10, temperature=0,
                                                 stream=True, extra_body={"thinking": {"type": "enabled"}}))
    assert _joined(chunks, "reasoning_content") == m.reasoning_content
    r = client.chat.completions.create(model="m", messages=msgs, max_tokens=10, temperature=0)
    assert r.choices[0].message.content and not getattr(r.choices[0].message, "reasoning_content", None)


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}, "alerts": {"type": "boolean"}},
            "required": ["city", "days", "unit", "alerts"]}}},
    {"type": "function", "function": {
        "name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                         "required": ["query"]}}},
]


def _check_weather_args(args: str) -> None:
    a = json.loads(args)
    assert set(a) == {"city", "days", "unit", "alerts"}
    assert isinstance(a["city"], str) and isinstance(a["days"], int) and not isinstance(a["days"], bool)
    assert a["unit"] in ("celsius", "fahrenheit") and isinstance(a["alerts"], bool)


def test_named_tool_call_streamed_fragments_join_into_valid_json(client):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    chunks = _stream(client, "Weather in Paris?", tools=TOOLS, tool_choice=choice, max_tokens=200, temperature=0.8,
                     seed=3)
    calls: dict[int, dict] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            cur = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            if tc.id:
                assert cur["id"] is None  # id, type and name come once
                cur["id"], cur["name"] = tc.id, tc.function.name
                assert tc.type == "function"
            cur["args"] += tc.function.arguments or ""
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"]
    _check_weather_args(calls[0]["args"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    whole = _chat(client, "Weather in Paris?", tools=TOOLS, tool_choice=choice, max_tokens=200, temperature=0.8,
                  seed=3)
    msg = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls" and msg.tool_calls[0].function.name == "get_weather"
    assert json.loads(msg.tool_calls[0].function.arguments) == json.loads(calls[0]["args"])


def test_required_tool_call_picks_one_of_the_tools(client):
    for seed in range(3):
        r = _chat(client, "Do something.", tools=TOOLS, tool_choice="required", max_tokens=200, seed=seed)
        call = r.choices[0].message.tool_calls[0].function
        assert call.name in ("get_weather", "search")
        if call.name == "get_weather":
            _check_weather_args(call.arguments)
        else:
            assert isinstance(json.loads(call.arguments)["query"], str)


def test_stop_strings_straddling_tokens_never_leak(client):
    base = _chat(client, "Write a story.", max_tokens=24, temperature=0, logprobs=True)
    text = base.choices[0].message.content
    toks = [e.token for e in base.choices[0].logprobs.content]
    assert "".join(toks) == text
    # a stop string made of the end of one token and the start of the next
    k = next(i for i in range(2, len(toks) - 2) if len(toks[i]) >= 2 and len(toks[i + 1]) >= 2)
    pos = sum(len(t) for t in toks[: k + 1])
    stop = text[pos - 2 : pos + 2]
    expect = text[: text.find(stop)]
    r = _chat(client, "Write a story.", max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].message.content == expect and r.choices[0].finish_reason == "stop"
    chunks = _stream(client, "Write a story.", max_tokens=24, temperature=0, stop=[stop])
    assert _joined(chunks) == expect  # nothing of the stop string was streamed, not even its start


def test_n_choices_and_seeds(client):
    a = _chat(client, "Pick words.", max_tokens=10, temperature=1.0, n=2, seed=11)
    b = _chat(client, "Pick words.", max_tokens=10, temperature=1.0, n=2, seed=11)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.choices[0].message.content != a.choices[1].message.content
    # choice i samples with seed + i: seed 12 alone repeats choice 1, seed 20 is new
    assert _chat(client, "Pick words.", max_tokens=10, temperature=1.0, seed=12).choices[0].message.content == \
        a.choices[1].message.content
    c = _chat(client, "Pick words.", max_tokens=10, temperature=1.0, seed=20)
    assert c.choices[0].message.content not in (a.choices[0].message.content, a.choices[1].message.content)
    g = _chat(client, "Pick words.", max_tokens=10, temperature=0, n=2)
    assert g.choices[0].message.content == g.choices[1].message.content
    s = _stream(client, "Pick words.", max_tokens=10, temperature=1.0, n=2, seed=11)
    assert [_joined(s, index=i) for i in (0, 1)] == [ch.message.content for ch in a.choices]


def test_eight_concurrent_clients_get_their_sequential_replies(server):
    prompts = [f"Question number {i}: what is {i} + {i}?" for i in range(8)]

    def ask(i):
        c = server.client()
        if i % 2:
            return _joined(_stream(c, prompts[i], max_tokens=16, temperature=0))
        return _chat(c, prompts[i], max_tokens=16, temperature=0).choices[0].message.content

    sequential = [ask(i) for i in range(8)]
    steps0 = server.metrics()["pyv4_batch_steps_total"]
    rows0 = server.metrics()["pyv4_batch_rows_total"]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        concurrent_ = list(ex.map(ask, range(8)))
    assert concurrent_ == sequential
    m = server.metrics()
    # batched: fewer forward passes than rows
    assert m["pyv4_batch_rows_total"] - rows0 > 1.5 * (m["pyv4_batch_steps_total"] - steps0)


def test_prefix_reuse_reports_cached_tokens(client):
    msgs = [{"role": "user", "content": "Remember the number 4711."}]
    first = client.chat.completions.create(model="m", messages=msgs, max_tokens=6, temperature=0)
    again = client.chat.completions.create(model="m", messages=msgs, max_tokens=6, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert again.choices[0].message.content == first.choices[0].message.content
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And now?"}]
    turn2 = client.chat.completions.create(model="m", messages=msgs, max_tokens=6, temperature=0)
    assert turn2.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


def test_logprobs(client):
    r = _chat(client, "Hello", max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert abs(e.logprob - max(t.logprob for t in e.top_logprobs)) < 1e-6  # greedy: the best one


def test_auth(server):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for key in (None, "wrong"):
        status, err = server.post("/v1/chat/completions", body, key=key)
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
    assert server.get("/v1/models")[0] == 401
    assert server.get("/health")[0] == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="nope",
                      max_retries=0).models.list()


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 99}, "n"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": TOOLS,
      "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
])
def test_bad_requests_are_400_naming_the_field(server, body, param):
    status, err = server.post("/v1/chat/completions", body)
    assert status == 400, err
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["message"]
    assert err["error"]["param"] == param


def test_prompt_over_the_context_is_refused_before_any_work(server):
    before = server.metrics()["pyv4_prompt_tokens_total"]
    status, err = server.post("/v1/completions", {"model": "m", "prompt": "word " * 5000, "max_tokens": 4})
    assert status == 400
    e = err["error"]
    assert e["type"] == "exceed_context_size_error" and e["n_ctx"] == 4096 and e["n_prompt_tokens"] > 4096
    assert server.metrics()["pyv4_prompt_tokens_total"] == before


def test_disconnect_cancels_the_generation(tmp_path):
    s = Server(tmp_path, "--parallel", "1", "--ctx", "8192")
    try:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Go on forever."}],
                           "max_tokens": 8000, "temperature": 1.0, "stream": True}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        for _ in range(5):
            assert resp.fp.readline()
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        # With one slot, the next request runs only once the first is gone.
        t0 = time.time()
        r = s.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4, temperature=0)
        assert r.choices[0].finish_reason == "length"
        assert time.time() - t0 < 20  # the 8000-token reply would take minutes
        m = s.metrics()
        assert m['pyv4_generations_total{outcome="cancelled"}'] == 1
        assert m["pyv4_client_disconnects_total"] == 1
        assert m["pyv4_generated_tokens_total"] < 4000
    finally:
        s.stop()


def test_metrics_count_what_happened(server, client):
    before = server.metrics()
    _chat(client, "Metrics!", max_tokens=5, temperature=0)
    server.post("/v1/chat/completions", {"model": "m"})
    server.post("/v1/chat/completions", {"model": "m"}, key=None)
    after = server.metrics()
    ok = 'pyv4_requests_total{path="/v1/chat/completions",status="200"}'
    bad = 'pyv4_requests_total{path="/v1/chat/completions",status="400"}'
    unauth = 'pyv4_requests_total{path="/v1/chat/completions",status="401"}'
    assert after[ok] == before.get(ok, 0) + 1
    assert after[bad] == before.get(bad, 0) + 1
    assert after[unauth] == before.get(unauth, 0) + 1
    assert after["pyv4_generated_tokens_total"] >= before["pyv4_generated_tokens_total"] + 5
    assert after['pyv4_generations_total{outcome="done"}'] == before['pyv4_generations_total{outcome="done"}'] + 1
    assert after["pyv4_queue_length"] == 0 and after["pyv4_active_generations"] == 0


@pytest.mark.parametrize("args, msg", [
    (["--device", "cuda"], "cuda:0 requested"),
    (["--device", "tpu"], "device must be"),
    (["--parallel", "0"], "--parallel must be >= 1"),
    (["--api-key-file", "/nonexistent/key"], "cannot read --api-key-file"),
])
def test_serve_usage_errors_exit_2_before_listening(args, msg, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pyv4.cli", "serve", "demo", "--port", str(_free_port()), *args],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and msg in r.stderr and r.stderr.startswith("pyv4 serve: error:")
