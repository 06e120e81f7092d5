"""The OpenAI-compatible request and response shapes of `pyv4 serve`, without
HTTP: validation of /v1/chat/completions and /v1/completions bodies into a
`RequestSpec` (every problem an `ApiError` naming the field), and the JSON of
replies and stream chunks. pyv4/server.py does the HTTP.

Field names and semantics follow OpenAI's API; DeepSeek's own request fields
choose the thinking mode (`thinking: {"type": "enabled" | "disabled"}`,
`reasoning_effort`), as do `chat_template_kwargs` `thinking` /
`enable_thinking` (what vLLM and SGLang clients send). The reasoning comes back
as `reasoning_content`, as DeepSeek's API returns it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from .chat_format import REASONING_EFFORTS, render_chat
from .sampling import SamplingParams

MAX_N = 8
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    """An error reply: HTTP status and OpenAI's error object."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type_: str = "invalid_request_error", code: str | None = None, **extra):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}


def _err(param: str, what: str) -> ApiError:
    return ApiError(f"invalid value for '{param}': {what}", param=param)


def _num(body: dict, key: str, lo: float | None = None, hi: float | None = None, default=None,
         integer: bool = False):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise _err(key, f"expected {'an integer' if integer else 'a number'}, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _err(key, f"must be in [{lo}, {hi}], got {v!r}")
    return v


@dataclass
class RequestSpec:
    """What a validated request asks for."""

    kind: str  # "chat" | "completion"
    prompt_ids: list[int]
    params: list[SamplingParams]  # one per choice (seeds differ)
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: int = 0  # 0: none; else 1 + alternatives
    thinking: bool = False
    tools: list[dict] | None = None
    tool_choice: Any = None


def _sampling(body: dict, n_ctx_left: int, default_max: int | None) -> SamplingParams:
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or any(not isinstance(s, str) or not s for s in stop) or len(stop) > MAX_STOP:
        raise _err("stop", f"a non-empty string or a list of at most {MAX_STOP} non-empty strings")
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
        raise _err(key, f"must be a positive integer, got {mt!r}")
    if mt is None:
        mt = default_max if default_max is not None else n_ctx_left
    seed = _num(body, "seed", integer=True)
    if seed is not None and seed < 0:
        raise _err("seed", "must be >= 0")
    try:
        return SamplingParams(
            temperature=float(_num(body, "temperature", 0.0, 2.0, 1.0)),
            top_p=float(_num(body, "top_p", 0.0, 1.0, 1.0)),
            top_k=int(_num(body, "top_k", 0, None, 0, integer=True)),
            min_p=float(_num(body, "min_p", 0.0, 1.0, 0.0)),
            presence_penalty=float(_num(body, "presence_penalty", -2.0, 2.0, 0.0)),
            frequency_penalty=float(_num(body, "frequency_penalty", -2.0, 2.0, 0.0)),
            repetition_penalty=float(_num(body, "repetition_penalty", 0.0, None, 1.0)),
            seed=seed, max_tokens=int(min(mt, n_ctx_left)), stop=stop)
    except ValueError as e:  # "invalid sampling parameter: top_p must be ..."
        msg = str(e)
        param = msg.split(": ", 1)[-1].split(" ", 1)[0]
        raise ApiError(msg, param=param if param in body else None) from None


def _choices_params(base: SamplingParams, n: int) -> list[SamplingParams]:
    if base.seed is None:
        return [base] * n
    return [base.replace(seed=base.seed + i) for i in range(n)]


def _common(body: dict, spec: RequestSpec) -> None:
    spec.n = int(_num(body, "n", 1, MAX_N, 1, integer=True))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _err("stream", "expected a boolean")
    spec.stream = stream
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise _err("stream_options", "expected an object")
        spec.include_usage = bool(so.get("include_usage", False))
    model = body.get("model", "")
    if model is not None and not isinstance(model, str):
        raise _err("model", "expected a string")


def _check_context(n_prompt: int, n_ctx: int, param: str) -> None:
    if n_prompt >= n_ctx:
        raise ApiError(
            f"the request exceeds the available context size: the prompt has {n_prompt} tokens, the "
            f"context holds {n_ctx} (prompt and reply together)",
            param=param, type_="exceed_context_size_error", code="exceed_context_size_error",
            n_prompt_tokens=n_prompt, n_ctx=n_ctx)


_ROLES = ("system", "user", "assistant", "tool", "developer", "latest_reminder")


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _err("messages", "expected a non-empty array of messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _err(where, "expected an object")
        role = m.get("role")
        if role not in _ROLES:
            raise _err(f"{where}.role", f"expected one of {', '.join(_ROLES)}, got {role!r}")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _err(f"{where}.content", "expected a string or an array of content parts")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _err(f"{where}.content[{j}]", "only text parts are supported")
        if content is None and not (role == "assistant" and m.get("tool_calls")):
            raise _err(f"{where}.content", "missing")
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, list):
                raise _err(f"{where}.tool_calls", "an array, on assistant messages only")
            for j, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise _err(f"{where}.tool_calls[{j}].function", "expected {name, arguments}")
        out.append(dict(m))
    return out


def _tools(body: dict) -> tuple[list[dict] | None, Any]:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _err("tools", "expected an array")
        for i, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
                raise _err(f"tools[{i}]", 'expected {"type": "function", "function": {...}}')
            if not isinstance(fn.get("name"), str) or not fn["name"]:
                raise _err(f"tools[{i}].function.name", "expected a non-empty string")
            params = fn.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise _err(f"tools[{i}].function.parameters", "expected a JSON schema object")
        tools = tools or None
    choice = body.get("tool_choice")
    if choice is None:
        return tools, None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise _err("tool_choice", f'expected "auto", "none", "required" or a function, got {choice!r}')
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if not isinstance(name, str):
            raise _err("tool_choice", 'expected {"type": "function", "function": {"name": ...}}')
        if not tools or name not in [t["function"]["name"] for t in tools]:
            raise _err("tool_choice", f"function {name!r} is not among the tools")
    else:
        raise _err("tool_choice", "expected a string or an object")
    if choice in ("required",) and not tools:
        raise _err("tool_choice", '"required" needs tools')
    return tools, choice


def _thinking(body: dict) -> tuple[bool, str | None]:
    thinking = False
    t = body.get("thinking")
    if t is not None:
        if not isinstance(t, dict) or t.get("type") not in ("enabled", "disabled"):
            raise _err("thinking", 'expected {"type": "enabled" | "disabled"}')
        thinking = t["type"] == "enabled"
    kw = body.get("chat_template_kwargs")
    if kw is not None:
        if not isinstance(kw, dict):
            raise _err("chat_template_kwargs", "expected an object")
        for key in ("thinking", "enable_thinking"):
            if key in kw:
                if not isinstance(kw[key], bool):
                    raise _err(f"chat_template_kwargs.{key}", "expected a boolean")
                thinking = kw[key]
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise _err("reasoning_effort", f"expected one of {', '.join(e for e in REASONING_EFFORTS if e)}")
    if t is None and kw is None and effort not in (None, "none"):
        thinking = True  # asking for an effort asks for reasoning
    if effort == "none":
        thinking = False
    return thinking, effort


def parse_chat(body: Any, tokenizer, n_ctx: int) -> RequestSpec:
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    msgs = _messages(body)
    tools, choice = _tools(body)
    thinking, effort = _thinking(body)
    spec = RequestSpec(kind="chat", prompt_ids=[], params=[], thinking=thinking, tools=tools,
                       tool_choice=choice)
    _common(body, spec)
    lp = body.get("logprobs", False)
    if not isinstance(lp, bool):
        raise _err("logprobs", "expected a boolean")
    top = int(_num(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, 0, integer=True))
    if top and not lp:
        raise _err("top_logprobs", "needs logprobs: true")
    spec.logprobs = (1 + top) if lp else 0
    forced = choice == "required" or isinstance(choice, dict)
    if forced and spec.logprobs:
        raise _err("logprobs", "not supported together with a forced tool_choice")
    try:
        text = render_chat(msgs, thinking_mode="thinking" if thinking else "chat",
                           reasoning_effort=effort if thinking else None,
                           tools=tools if choice != "none" else None)
    except (ValueError, TypeError, KeyError) as e:
        raise ApiError(f"cannot render the messages: {e}", param="messages") from None
    spec.prompt_ids = tokenizer.encode(text)
    _check_context(len(spec.prompt_ids), n_ctx, "messages")
    spec.params = _choices_params(_sampling(body, n_ctx - len(spec.prompt_ids), None), spec.n)
    return spec


def parse_completion(body: Any, tokenizer, n_ctx: int) -> RequestSpec:
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise _err("prompt", "must not be empty")
        ids = tokenizer.encode(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
        bad = [t for t in ids if not 0 <= t < tokenizer.n_vocab]
        if bad:
            raise _err("prompt", f"token id {bad[0]} is outside the vocabulary [0, {tokenizer.n_vocab})")
    else:
        raise _err("prompt", "expected a non-empty string or an array of token ids (one prompt per request)")
    if body.get("echo"):
        raise _err("echo", "not supported")
    spec = RequestSpec(kind="completion", prompt_ids=ids, params=[])
    _common(body, spec)
    lp = _num(body, "logprobs", 0, 5, None, integer=True)
    spec.logprobs = 0 if lp is None else 1 + lp
    _check_context(len(ids), n_ctx, "prompt")
    spec.params = _choices_params(_sampling(body, n_ctx - len(ids), 16), spec.n)
    return spec


# ------------------------------------------------------------------------- replies


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def finish_reason(gen_reason: str | None, has_tool_calls: bool) -> str:
    if gen_reason == "length":
        return "length"
    return "tool_calls" if has_tool_calls else "stop"


def usage(n_prompt: int, n_completion: int, cached: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
            "total_tokens": n_prompt + n_completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def tool_call_json(call: dict, index: int | None = None) -> dict:
    out = {"id": "call_" + secrets.token_hex(12), "type": "function",
           "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}}
    if index is not None:
        out["index"] = index
    return out


def chat_logprobs(entries: list[dict], tokenizer) -> dict:
    def one(tok: int, lp: float) -> dict:
        b = tokenizer.token_bytes(tok)
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}

    return {"content": [{**one(e["token"], e["logprob"]),
                         "top_logprobs": [one(t, lp) for t, lp in e["top"]]} for e in entries]}


def completion_logprobs(entries: list[dict], tokenizer) -> dict:
    text = lambda t: tokenizer.token_bytes(t).decode("utf-8", errors="replace")  # noqa: E731
    return {"tokens": [text(e["token"]) for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{text(t): lp for t, lp in e["top"]} for e in entries],
            "text_offset": []}


def envelope(kind: str, rid: str, model: str, created: int | None = None) -> dict:
    obj = {"chat": "chat.completion", "chat.chunk": "chat.completion.chunk",
           "completion": "text_completion", "completion.chunk": "text_completion"}[kind]
    return {"id": rid, "object": obj, "created": created or int(time.time()), "model": model,
            "system_fingerprint": "pyv4"}
