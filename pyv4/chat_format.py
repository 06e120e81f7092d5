"""DeepSeek-V4 chat format: prompt rendering, completion parsing, DSML tool calls, streaming.

Prompt layout (spec §6; there is no Jinja template for V4)::

    BOS [effort paragraph] system-text [## Tools ...]
    <｜User｜>{user}<｜Assistant｜><think>{reasoning}</think>{answer}[\\n\\n<DSML tool calls>]<｜end▁of▁sentence｜>
    <｜User｜><tool_result>{result}</tool_result><｜Assistant｜><think> ...

* After a user/developer turn that is followed by an assistant turn (or ends the list) the
  renderer writes ``<｜Assistant｜>`` plus ``<think>`` (thinking mode) or ``</think>`` (chat mode,
  and historical turns whose reasoning is dropped). The ``<think>`` is therefore part of the
  prompt; an assistant message renders as ``{reasoning}</think>{content}{calls}EOS``.
* ``drop_thinking`` (default) removes the reasoning of assistant turns before the last
  user/developer turn (and drops developer turns before it); it is disabled when any message
  defines ``tools``.
* Tool results are not a role: consecutive ``tool`` messages (and a following ``user``
  message) become one user turn of ``<tool_result>...</tool_result>`` blocks joined by
  ``\\n\\n``, ordered like the calls of the preceding assistant turn.
* ``latest_reminder`` renders as ``<｜latest_reminder｜>{content}``; ``developer`` as a user turn.
* Quick-instruction tasks (``message["task"]``): ``action`` on a user turn writes
  ``<｜Assistant｜>`` + think token + ``<｜action｜>``; ``query``/``authority``/``domain``/
  ``read_url`` append their token right after the user text; ``title`` on an assistant turn
  appends ``<｜title｜>`` after its EOS. The reply to a task turn carries no reasoning.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
LATEST_REMINDER = "<｜latest_reminder｜>"
DSML = "｜DSML｜"

TOOL_CALLS_OPEN = f"<{DSML}tool_calls>"
TOOL_CALLS_CLOSE = f"</{DSML}tool_calls>"
INVOKE_OPEN = f"<{DSML}invoke"
INVOKE_CLOSE = f"</{DSML}invoke>"
PARAM_OPEN = f"<{DSML}parameter"
PARAM_CLOSE = f"</{DSML}parameter>"
# In a reply, a tool-call block is introduced by a blank line.
TOOL_CALLS_START = "\n\n" + TOOL_CALLS_OPEN

TASK_TOKENS = {
    "action": "<｜action｜>",
    "query": "<｜query｜>",
    "authority": "<｜authority｜>",
    "domain": "<｜domain｜>",
    "title": "<｜title｜>",
    "read_url": "<｜read_url｜>",
}

THINKING_MODES = ("chat", "thinking")
REASONING_EFFORTS = (None, "none", "low", "medium", "high", "max")

# Text the model was trained on; must match the reference byte for byte.
REASONING_EFFORT_MAX_PREFIX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n"
)

_TOOLS_HEADER = (
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools "
    f'by writing a "{TOOL_CALLS_OPEN}" block like the following:\n\n'
    f"{TOOL_CALLS_OPEN}\n"
    f'{INVOKE_OPEN} name="$TOOL_NAME">\n'
    f'{PARAM_OPEN} name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE{PARAM_CLOSE}\n'
    "...\n"
    f"{INVOKE_CLOSE}\n"
    f'{INVOKE_OPEN} name="$TOOL_NAME2">\n'
    "...\n"
    f"{INVOKE_CLOSE}\n"
    f"{TOOL_CALLS_CLOSE}\n\n"
    'String parameters should be specified as is and set `string="true"`. For all other types '
    '(numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.'
    "\n\n"
    f"If thinking_mode is enabled (triggered by {THINK_START}), you MUST output your complete "
    f"reasoning inside {THINK_START}...{THINK_END} BEFORE any tool calls or final response.\n\n"
    f"Otherwise, output directly after {THINK_END} with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n"
)
_TOOLS_FOOTER = (
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke "
    "tool calls.\n"
)
_RESPONSE_FORMAT_HEADER = (
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
)


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps(value, ensure_ascii=True, default=str)


def render_tools(tools: Sequence[dict]) -> str:
    """The ``## Tools`` section for a list of OpenAI-style tools (or bare function dicts)."""
    schemas = []
    for t in tools:
        fn = t.get("function", t) if isinstance(t, dict) else t
        schemas.append(_json(fn))
    return _TOOLS_HEADER + "\n".join(schemas) + _TOOLS_FOOTER


# --------------------------------------------------------------------------------------------
# DSML tool calls
# --------------------------------------------------------------------------------------------


def _call_name_args(call: dict) -> tuple[str, Any]:
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    return fn.get("name", ""), fn.get("arguments", {})


def _arguments_dict(arguments: Any) -> dict:
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return {"arguments": arguments}
        if isinstance(parsed, dict):
            return parsed
    return {"arguments": arguments}


def encode_tool_call(call: dict) -> str:
    """One ``<｜DSML｜invoke ...>...</｜DSML｜invoke>`` element. ``call`` is OpenAI-style
    (``{"function": {"name", "arguments"}}``) or ``{"name", "arguments"}``; arguments may be a
    JSON string or a dict. String values are written raw (``string="true"``), everything else as
    JSON (``string="false"``)."""
    name, arguments = _call_name_args(call)
    lines = [f'{INVOKE_OPEN} name="{name}">']
    for key, value in _arguments_dict(arguments).items():
        if isinstance(value, str):
            lines.append(f'{PARAM_OPEN} name="{key}" string="true">{value}{PARAM_CLOSE}')
        else:
            lines.append(f'{PARAM_OPEN} name="{key}" string="false">{_json(value)}{PARAM_CLOSE}')
    lines.append(INVOKE_CLOSE)
    return "\n".join(lines)


def encode_tool_calls(calls: Sequence[dict]) -> str:
    """A ``<｜DSML｜tool_calls>`` block (without the blank line that precedes it in a reply)."""
    return "\n".join([TOOL_CALLS_OPEN] + [encode_tool_call(c) for c in calls] + [TOOL_CALLS_CLOSE])


_INVOKE_RE = re.compile(
    re.escape(INVOKE_OPEN) + r'\s+name="(?P<name>[^"]*)"\s*>(?P<body>.*?)' + re.escape(INVOKE_CLOSE),
    re.DOTALL,
)
_PARAM_RE = re.compile(
    re.escape(PARAM_OPEN)
    + r'\s+name="(?P<name>[^"]*)"(?:\s+string="(?P<string>true|false)")?\s*>(?P<value>.*?)'
    + re.escape(PARAM_CLOSE),
    re.DOTALL,
)


def _parse_invoke(name: str, body: str) -> dict:
    args: dict[str, Any] = {}
    for m in _PARAM_RE.finditer(body):
        value = m.group("value")
        if m.group("string") == "false":
            try:
                args[m.group("name")] = json.loads(value)
            except ValueError:
                args[m.group("name")] = value  # not valid JSON: keep the text
        else:
            args[m.group("name")] = value
    return {"type": "function", "function": {"name": name, "arguments": _json(args)}}


def parse_tool_calls(text: str) -> list[dict]:
    """Every complete ``<｜DSML｜invoke>`` in ``text`` as an OpenAI-style tool call
    ``{"type": "function", "function": {"name": ..., "arguments": "<JSON object>"}}``.
    ``string="true"`` values are taken raw, ``string="false"`` values are parsed as JSON."""
    return [_parse_invoke(m.group("name"), m.group("body")) for m in _INVOKE_RE.finditer(text)]


def tool_call_arguments(call: dict) -> dict:
    """The arguments of a parsed tool call as a dict."""
    return _arguments_dict(_call_name_args(call)[1])


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _parts_text(parts: Any) -> str:
    """Flatten OpenAI content parts (list of {"type": "text", ...}) to text."""
    if parts is None:
        return ""
    if isinstance(parts, str):
        return parts
    out = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
        elif p.get("type") == "text":
            out.append(p.get("text", ""))
        else:
            out.append(f"[Unsupported {p.get('type')}]")
    return "\n\n".join(out)


def _merge_tool_turns(messages: Sequence[dict]) -> list[dict]:
    """Fold ``tool`` messages (and a user message right after them) into user turns made of
    blocks, and order tool results like the calls of the latest assistant turn."""
    out: list[dict] = []
    call_order: dict[str, int] = {}
    for msg in messages:
        role = msg.get("role")
        if role == "assistant" and msg.get("tool_calls"):
            call_order = {}
            for i, c in enumerate(msg["tool_calls"]):
                cid = c.get("id") or (c.get("function") or {}).get("id")
                if cid:
                    call_order[cid] = i
        if role == "tool":
            block = ("tool", msg.get("tool_call_id") or "", _parts_text(msg.get("content")))
            prev = out[-1] if out else None
            if prev is not None and prev.get("role") == "user" and "_blocks" in prev:
                prev["_blocks"].append(block)
            else:
                out.append({"role": "user", "_blocks": [block], "_order": call_order})
        elif role == "user":
            block = ("text", None, _parts_text(msg.get("content")))
            prev = out[-1] if out else None
            if (prev is not None and prev.get("role") == "user" and "_blocks" in prev
                    and prev.get("task") is None):
                prev["_blocks"].append(block)
                if msg.get("task") is not None:
                    prev["task"] = msg["task"]
            else:
                new = dict(msg)
                new["_blocks"] = [block]
                new["_order"] = call_order
                out.append(new)
        else:
            out.append(dict(msg))
    for msg in out:
        blocks = msg.get("_blocks")
        order = msg.pop("_order", None)
        if not blocks:
            continue
        tool_blocks = [b for b in blocks if b[0] == "tool"]
        if len(tool_blocks) > 1 and order:
            ranked = iter(sorted(tool_blocks, key=lambda b: order.get(b[1], 0)))
            msg["_blocks"] = [next(ranked) if b[0] == "tool" else b for b in blocks]
    return out


def _user_text(msg: dict) -> str:
    blocks = msg.get("_blocks")
    if blocks is None:
        return _parts_text(msg.get("content"))
    return "\n\n".join(f"<tool_result>{t}</tool_result>" if kind == "tool" else t
                       for kind, _, t in blocks)


def _last_user_index(messages: Sequence[dict]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") in ("user", "developer"):
            return i
    return -1


def _system_extras(msg: dict) -> str:
    s = ""
    if msg.get("tools"):
        s += "\n\n" + render_tools(msg["tools"])
    if msg.get("response_format"):
        s += "\n\n" + _RESPONSE_FORMAT_HEADER + _json(msg["response_format"])
    return s


def render_chat(
    messages: Sequence[dict],
    thinking_mode: str = "chat",
    reasoning_effort: str | None = None,
    drop_thinking: bool = True,
    add_generation_prompt: bool | None = None,
    tools: Sequence[dict] | None = None,
    response_format: dict | None = None,
    add_bos: bool = True,
) -> str:
    """Render OpenAI-style messages to the DeepSeek-V4 prompt text.

    ``thinking_mode``: ``"chat"`` (the prompt ends ``<｜Assistant｜></think>``) or ``"thinking"``
    (ends ``<｜Assistant｜><think>``). ``reasoning_effort="max"`` (thinking mode only) prepends
    the maximum-effort paragraph; other values change nothing. ``tools``/``response_format``
    given here are attached to the first system message (one is created if needed), the same as
    putting them on that message. ``add_generation_prompt``: ``None`` (default) follows the
    reference (the assistant header is written after a trailing user/developer/tool turn);
    ``False`` leaves it out.
    """
    if thinking_mode not in THINKING_MODES:
        raise ValueError(f"thinking_mode must be 'chat' or 'thinking', got {thinking_mode!r}")
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, got {reasoning_effort!r}")
    thinking = thinking_mode == "thinking"

    msgs = [dict(m) for m in messages]
    if tools or response_format:
        target = next((m for m in msgs if m.get("role") == "system"), None)
        if target is None:
            target = {"role": "system", "content": ""}
            msgs.insert(0, target)
        if tools:
            target["tools"] = list(tools)
        if response_format:
            target["response_format"] = response_format

    msgs = _merge_tool_turns(msgs)
    drop = drop_thinking and not any(m.get("tools") for m in msgs)
    last_user = _last_user_index(msgs)
    if thinking and drop:
        kept = []
        for i, m in enumerate(msgs):
            role = m.get("role")
            if i < last_user and role == "assistant":
                m = dict(m)
                m.pop("reasoning_content", None)
            elif i < last_user and role not in ("user", "system", "latest_reminder"):
                continue  # developer turns before the last user turn are dropped
            kept.append(m)
        msgs = kept
        last_user = _last_user_index(msgs)

    out = [BOS] if add_bos else []
    if thinking and reasoning_effort == "max":
        out.append(REASONING_EFFORT_MAX_PREFIX)

    n = len(msgs)
    for i, m in enumerate(msgs):
        role = m.get("role")
        if role == "system":
            out.append(_parts_text(m.get("content")) + _system_extras(m))
        elif role == "developer":
            out.append(USER + _parts_text(m.get("content")) + _system_extras(m))
        elif role == "user":
            out.append(USER + _user_text(m))
        elif role == "latest_reminder":
            out.append(LATEST_REMINDER + _parts_text(m.get("content")))
        elif role == "assistant":
            prev_task = i > 0 and msgs[i - 1].get("task") is not None
            part = ""
            if thinking and not prev_task and (not drop or i > last_user):
                part = (m.get("reasoning_content") or "") + THINK_END
            part += _parts_text(m.get("content"))
            if m.get("tool_calls"):
                part += "\n\n" + encode_tool_calls(m["tool_calls"])
            if not m.get("wo_eos", False):
                part += EOS
            out.append(part)
        else:
            raise ValueError(f"unknown message role {role!r}")

        # What follows a turn: the assistant header, a task token, or nothing.
        is_last = i == n - 1
        if not is_last and msgs[i + 1].get("role") not in ("assistant", "latest_reminder"):
            continue
        if is_last and add_generation_prompt is False:
            continue
        task = m.get("task")
        if task is not None:
            if task not in TASK_TOKENS:
                raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_TOKENS)}")
            if task == "action":
                out.append(ASSISTANT + (THINK_START if thinking else THINK_END) + TASK_TOKENS[task])
            else:
                out.append(TASK_TOKENS[task])
        elif role in ("user", "developer"):
            open_think = thinking and (not drop or i >= last_user)
            out.append(ASSISTANT + (THINK_START if open_think else THINK_END))
    return "".join(out)


def generation_prompt(thinking_mode: str = "chat") -> str:
    """The assistant header written after a user turn."""
    return ASSISTANT + (THINK_START if thinking_mode == "thinking" else THINK_END)


# --------------------------------------------------------------------------------------------
# Parsing a completed reply
# --------------------------------------------------------------------------------------------


def _find_tool_calls_start(text: str, start: int = 0) -> tuple[int, int]:
    """(position where content ends, position after the opening tag) or (-1, -1)."""
    pos = text.find(TOOL_CALLS_OPEN, start)
    if pos < 0:
        return -1, -1
    cut = pos - 2 if pos - 2 >= start and text.startswith("\n\n", pos - 2) else pos
    return cut, pos + len(TOOL_CALLS_OPEN)


def parse_completion(text: str, thinking_mode: str = "chat") -> dict:
    """Split a generated assistant reply (the text after the generation prompt) into
    ``{"role": "assistant", "reasoning_content", "content", "tool_calls"}``.

    Lenient: a missing EOS is fine (generation usually stops on the EOS id), a reply cut off
    inside the reasoning gives all of it as reasoning, and only complete invokes count as calls.
    """
    if thinking_mode not in THINKING_MODES:
        raise ValueError(f"thinking_mode must be 'chat' or 'thinking', got {thinking_mode!r}")
    eos = text.find(EOS)
    if eos >= 0:
        text = text[:eos]
    reasoning = ""
    rest = text
    if thinking_mode == "thinking":
        if rest.startswith(THINK_START):
            rest = rest[len(THINK_START):]
        end = rest.find(THINK_END)
        tc_cut, _ = _find_tool_calls_start(rest)
        if end >= 0 and (tc_cut < 0 or end <= tc_cut):
            reasoning, rest = rest[:end], rest[end + len(THINK_END):]
        elif tc_cut >= 0:
            reasoning, rest = rest[:tc_cut], rest[tc_cut:]
        else:
            reasoning, rest = rest, ""
    elif rest.startswith(THINK_END):
        rest = rest[len(THINK_END):]
    content = rest
    calls: list[dict] = []
    tc_cut, tc_body = _find_tool_calls_start(rest)
    if tc_cut >= 0:
        content = rest[:tc_cut]
        close = rest.find(TOOL_CALLS_CLOSE, tc_body)
        block = rest[tc_body:close] if close >= 0 else rest[tc_body:]
        calls = parse_tool_calls(block)
        if close >= 0:
            tail = rest[close + len(TOOL_CALLS_CLOSE):]
            if tail.strip():
                content += tail
    content = content.replace(THINK_START, "").replace(THINK_END, "")
    return {"role": "assistant", "reasoning_content": reasoning, "content": content,
            "tool_calls": calls}


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


@dataclass
class ReplyEvent:
    """One streaming event: ``kind`` is ``"reasoning"``, ``"content"`` or ``"tool_call"``."""

    kind: str
    text: str = ""
    tool_call: dict | None = None
    index: int = 0  # tool-call index within the reply

    def as_dict(self) -> dict:
        if self.kind == "tool_call":
            return {"kind": self.kind, "index": self.index, "tool_call": self.tool_call}
        return {"kind": self.kind, "text": self.text}


_REASONING_MARKERS = (THINK_END, TOOL_CALLS_START, TOOL_CALLS_OPEN, EOS)
_CONTENT_MARKERS = (TOOL_CALLS_START, TOOL_CALLS_OPEN, EOS, THINK_END, THINK_START)
_TOOLS_MARKERS = (INVOKE_CLOSE, TOOL_CALLS_CLOSE, EOS)


def _earliest(buf: str, markers: Iterable[str]) -> tuple[int, str | None]:
    best, which = -1, None
    for mk in markers:
        p = buf.find(mk)
        if p >= 0 and (best < 0 or p < best or (p == best and len(mk) > len(which or ""))):
            best, which = p, mk
    return best, which


def _partial_suffix(buf: str, markers: Iterable[str]) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of a marker."""
    best = 0
    for mk in markers:
        for k in range(min(len(mk) - 1, len(buf)), best, -1):
            if buf.endswith(mk[:k]):
                best = k
                break
    return best


class ReplyStream:
    """Turn generated text deltas into reasoning / content / tool-call events.

    Text that could still be the start of ``</think>``, a DSML tag or EOS is held back until
    it is decided, so no partial tag is ever emitted as text. Tool calls are emitted whole, one
    event per completed ``</｜DSML｜invoke>``. Concatenating the events gives the same result
    as ``parse_completion`` on the whole text.
    """

    def __init__(self, thinking_mode: str = "chat"):
        if thinking_mode not in THINKING_MODES:
            raise ValueError(f"thinking_mode must be 'chat' or 'thinking', got {thinking_mode!r}")
        self.thinking_mode = thinking_mode
        self.state = "reasoning" if thinking_mode == "thinking" else "content"
        self._buf = ""
        self._n_calls = 0
        self._started = False
        self.reasoning_content = ""
        self.content = ""
        self.tool_calls: list[dict] = []

    @property
    def done(self) -> bool:
        return self.state == "done"

    def _emit(self, events: list[ReplyEvent], kind: str, text: str) -> None:
        if not text:
            return
        if kind == "reasoning":
            self.reasoning_content += text
        else:
            self.content += text
        if events and events[-1].kind == kind:
            events[-1].text += text
        else:
            events.append(ReplyEvent(kind, text))

    def feed(self, delta: str) -> list[ReplyEvent]:
        events: list[ReplyEvent] = []
        if self.state == "done" or not delta:
            return events
        self._buf += delta
        if not self._started:
            # a leading <think> (thinking) or </think> (chat) repeats the prompt: skip it
            lead = THINK_START if self.state == "reasoning" else THINK_END
            if lead.startswith(self._buf):
                return events
            if self._buf.startswith(lead):
                self._buf = self._buf[len(lead):]
            self._started = True
        self._run(events)
        return events

    def finish(self) -> list[ReplyEvent]:
        """End of generation: flush what was held back (never a partial tag)."""
        events: list[ReplyEvent] = []
        if self.state == "done":
            return events
        if not self._started:
            self._started = True
            lead = THINK_START if self.state == "reasoning" else THINK_END
            if self._buf == lead:
                self._buf = ""
        self._run(events)
        tail, self._buf = self._buf, ""
        if self.state in ("reasoning", "content"):
            # The held-back tail is the possible beginning of a tag. Newlines and a lone "<"
            # are text; anything longer that starts with "<" is a cut-off tag and is dropped.
            stripped = tail.lstrip("\n")
            if len(stripped) < 2 or not stripped.startswith("<"):
                self._emit(events, self.state, tail)
        self.state = "done"
        return events

    def _run(self, events: list[ReplyEvent]) -> None:
        while self._buf and self.state != "done":
            if self.state == "tools":
                pos, mk = _earliest(self._buf, _TOOLS_MARKERS)
                if mk is None:
                    return
                if mk == INVOKE_CLOSE:
                    chunk = self._buf[:pos + len(mk)]
                    self._buf = self._buf[pos + len(mk):]
                    for call in parse_tool_calls(chunk):
                        self.tool_calls.append(call)
                        events.append(ReplyEvent("tool_call", tool_call=call, index=self._n_calls))
                        self._n_calls += 1
                elif mk == TOOL_CALLS_CLOSE:
                    self._buf = self._buf[pos + len(mk):]
                    self.state = "after_tools"
                else:  # EOS inside an unfinished block
                    self._buf, self.state = "", "done"
                continue
            if self.state == "after_tools":
                pos, mk = _earliest(self._buf, (EOS, TOOL_CALLS_START, TOOL_CALLS_OPEN))
                head = self._buf if mk is None else self._buf[:pos]
                if head.strip():
                    self.state = "content"  # unexpected text after the calls: show it
                elif mk is None:
                    return
                else:
                    self._buf = self._buf[pos + len(mk):]
                    self.state = "done" if mk == EOS else "tools"
                    if mk == EOS:
                        self._buf = ""
                continue
            markers = _REASONING_MARKERS if self.state == "reasoning" else _CONTENT_MARKERS
            pos, mk = _earliest(self._buf, markers)
            if mk is None:
                keep = _partial_suffix(self._buf, markers)
                self._emit(events, self.state, self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                return
            self._emit(events, self.state, self._buf[:pos])
            self._buf = self._buf[pos + len(mk):]
            if mk == EOS:
                self.state = "done"
                self._buf = ""
            elif mk == THINK_END and self.state == "reasoning":
                self.state = "content"
            elif mk in (TOOL_CALLS_START, TOOL_CALLS_OPEN):
                self.state = "tools"
            # stray <think>/</think> in content are dropped

    def result(self) -> dict:
        """The reply so far in ``parse_completion``'s shape."""
        return {"role": "assistant", "reasoning_content": self.reasoning_content,
                "content": self.content, "tool_calls": list(self.tool_calls)}
