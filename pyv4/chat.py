"""`pyv4.Chat`: a multi-turn conversation on one session, in the official
DeepSeek-V4 chat format (pyv4/chat_format.py), streaming reasoning, content
and tool calls separately.

Each turn renders the whole conversation, tokenizes it, and feeds the session
only what it does not hold yet: the longest common token prefix with the
session is kept (rolling the session back where the rendering changed, e.g.
reasoning dropped from earlier turns), the rest is prefilled."""

from __future__ import annotations

import time
from typing import Iterator, Sequence

from .chat_format import ReplyEvent, ReplyStream, render_chat
from .generate import generate
from .sampling import SamplingParams


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Chat:
    def __init__(self, model, system: str | None = None, thinking: bool = False, tools=None,
                 reasoning_effort: str | None = None, params: SamplingParams | None = None, session=None):
        self.model = model
        self.thinking = thinking
        self.tools = list(tools) if tools else None
        self.reasoning_effort = reasoning_effort
        self.params = params or SamplingParams(temperature=1.0, top_p=1.0, max_tokens=1024)
        self.session = session or model.new_session()
        self.messages: list[dict] = []
        if system is not None:
            self.messages.append({"role": "system", "content": system})
        self.last_reply: dict | None = None

    @property
    def thinking_mode(self) -> str:
        return "thinking" if self.thinking else "chat"

    def reset(self) -> None:
        """Forget the conversation (keeps the system prompt, tools and mode)."""
        self.messages = [m for m in self.messages if m.get("role") == "system"]
        self.session.reset()

    def add_tool_result(self, content: str, name: str | None = None, tool_call_id: str | None = None) -> None:
        msg = {"role": "tool", "content": content}
        if name is not None:
            msg["name"] = name
        if tool_call_id is not None:
            msg["tool_call_id"] = tool_call_id
        self.messages.append(msg)

    def prompt_tokens(self) -> list[int]:
        text = render_chat(self.messages, thinking_mode=self.thinking_mode,
                           reasoning_effort=self.reasoning_effort, tools=self.tools)
        return self.model.tokenizer.encode(text)

    def _sync(self, ids: list[int]) -> list[int]:
        """Rolls the session back to the common prefix with `ids`; returns the suffix to feed."""
        held = self.session.tokens.tolist()
        keep = _common_prefix(held, ids)
        if keep == len(ids):  # need at least one token to get logits
            keep -= 1
        if keep < len(held):
            if keep > 0:
                self.session.truncate(keep)
            else:
                self.session.reset()
        return ids[keep:]

    def stream(self, text: str | None, params: SamplingParams | None = None) -> Iterator[ReplyEvent]:
        """Adds a user turn (or continues after tool results when text is None)
        and yields reasoning / content / tool-call events as they are generated.
        When the generator ends (or is interrupted) the assistant turn is
        recorded and `last_reply` holds the result."""
        if text is not None:
            self.messages.append({"role": "user", "content": text})
        elif not self.messages or self.messages[-1].get("role") not in ("tool", "user"):
            raise ValueError("send(None) continues only after a user turn or tool results")
        ids = self.prompt_tokens()
        if len(ids) >= self.model.n_ctx:
            raise ValueError(f"conversation of {len(ids)} tokens does not fit the context of {self.model.n_ctx}")
        suffix = self._sync(ids)
        params = params or self.params
        room = self.model.n_ctx - len(ids)
        if params.max_tokens is None or params.max_tokens > room:
            params = params.replace(max_tokens=room)
        parser = ReplyStream(self.thinking_mode)
        info: dict = {}
        t0 = time.perf_counter()
        n_tokens = 0
        try:
            for chunk in generate(self.session, suffix, params, result=info):
                n_tokens += chunk.token >= 0
                yield from parser.feed(chunk.text)
            yield from parser.finish()
        finally:
            reply = parser.result()
            msg = {"role": "assistant", "content": reply["content"]}
            if reply["reasoning_content"]:
                msg["reasoning_content"] = reply["reasoning_content"]
            if reply["tool_calls"]:
                msg["tool_calls"] = reply["tool_calls"]
            self.messages.append(msg)
            reply.update(
                finish_reason=info.get("finish_reason", "interrupted"),
                n_prefilled=len(suffix),
                n_generated=n_tokens,
                seconds=time.perf_counter() - t0,
                n_context=self.session.n_tokens,
            )
            self.last_reply = reply

    def send(self, text: str | None, params: SamplingParams | None = None, on_event=None) -> dict:
        """Like stream(), but runs to the end; `on_event(event)` sees each event.
        Returns {reasoning_content, content, tool_calls, finish_reason,
        n_prefilled, n_generated, seconds, n_context}."""
        for ev in self.stream(text, params):
            if on_event is not None:
                on_event(ev)
        return self.last_reply
