"""`tool_choice` "required" / a named function: decoding that always ends in a
well-formed DSML tool call (pyv4/chat_format.py), whatever the model.

The model writes the call, but the structure is forced: the tool-call block's
tags are appended as forced text, the function name is sampled only among the
allowed names, and each parameter of the function's JSON schema gets a value
of its type: strings are sampled freely until the model writes a tag (`<`), an
EOS or a special token, or reaches a length cap; integers and numbers from
digit tokens; booleans and enums among their values; other types (objects,
arrays) as the JSON the schema's `default` gives, else an empty one. So the
call's arguments are valid JSON of the requested function. This is what
grammar-constrained servers (llama.cpp, vLLM) do for these modes; with "auto"
nothing is forced (the model decides, and the reply parser finds its calls).

In thinking mode the model first reasons freely; the call is forced once it
closes `</think>` (or writes EOS). A reply cut by max_tokens before that has
no call (finish_reason "length").
"""

from __future__ import annotations

import json
import weakref
from typing import Sequence

import numpy as np

from .chat_format import (INVOKE_CLOSE, INVOKE_OPEN, PARAM_CLOSE, PARAM_OPEN, THINK_END,
                          TOOL_CALLS_CLOSE, TOOL_CALLS_START)
from .generate import Force, Sample

STRING_CAP = 32  # tokens of one free string value
NUMBER_CAP = 6   # digit tokens of one number


class VocabIndex:
    """Per tokenizer, built once: each token's text, the ids of each text, and
    which tokens are all digits or end a free string value."""

    def __init__(self, tokenizer):
        n = tokenizer.n_vocab
        self.text: list[str] = []  # special tokens included (e.g. "</think>")
        self.by_text: dict[str, list[int]] = {}  # ordinary tokens only
        self.digits = np.zeros(n, dtype=bool)  # all-digit tokens
        self.lead_digits = np.zeros(n, dtype=bool)  # ... that may start a JSON number
        self.ends_string = np.zeros(n, dtype=bool)
        for i in range(n):
            special = tokenizer.is_special(i)
            t = tokenizer.token_bytes(i).decode("utf-8", errors="replace")
            self.text.append(t)
            if t and not special:
                self.by_text.setdefault(t, []).append(i)
            self.digits[i] = not special and t.isascii() and t.isdigit()
            self.lead_digits[i] = self.digits[i] and (t == "0" or not t.startswith("0"))
            self.ends_string[i] = special or not t or "<" in t or "\ufffd" in t

    def prefix_mask(self, done: str, choices: Sequence[str]) -> np.ndarray:
        """Tokens that extend `done` towards one of `choices`."""
        mask = np.zeros(len(self.text), dtype=bool)
        for c in choices:
            if c.startswith(done):
                rest = c[len(done):]
                for k in range(1, len(rest) + 1):
                    for i in self.by_text.get(rest[:k], ()):
                        mask[i] = True
        return mask


_INDEX_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def vocab_index(tokenizer) -> VocabIndex:
    """The tokenizer's VocabIndex, built on first use and kept while the tokenizer lives."""
    index = _INDEX_CACHE.get(tokenizer)
    if index is None:
        index = _INDEX_CACHE[tokenizer] = VocabIndex(tokenizer)
    return index


def _schema_default(schema: dict) -> str:
    if "default" in schema:
        return json.dumps(schema["default"], ensure_ascii=False)
    t = schema.get("type")
    return {"array": "[]", "null": "null"}.get(t if isinstance(t, str) else "", "{}")


class ToolCallConstraint:
    """The Generation constraint (pyv4/generate.py) for one forced tool call.

    tools: OpenAI-style tools; name: the function to call (None: any of them).
    eos_id: the tokenizer's EOS (ends a string value)."""

    def __init__(self, tokenizer, tools: Sequence[dict], name: str | None, thinking: bool, eos_id: int):
        self.vi = vocab_index(tokenizer)
        self.fns = {}
        for t in tools:
            fn = t.get("function", t)
            self.fns[fn["name"]] = fn.get("parameters") or {}
        if name is not None and name not in self.fns:
            raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
        self.names = [name] if name is not None else list(self.fns)
        self.eos = eos_id
        self.finished = False
        self._plan: list = []  # pending steps: ("force", text) | ("name",) | ("value", pname, schema)
        self._reasoning = thinking
        self._reason_text = ""
        self._name = ""
        self._value = ""  # text of the value being sampled
        self._value_tokens = 0
        if not thinking:
            self._start()

    # -- plan ----------------------------------------------------------------------------
    def _start(self) -> None:
        self._reasoning = False
        head = ("" if self._reason_text.endswith(THINK_END) or not self._reason_text
                else THINK_END)
        self._plan = [("force", head + TOOL_CALLS_START + "\n" + INVOKE_OPEN + ' name="'),
                      ("name",)]

    def _after_name(self) -> None:
        params = self.fns[self._name]
        props = params.get("properties") or {}
        required = params.get("required")
        keys = [k for k in props if required is None or k in required]
        plan: list = [("force", '">\n')]
        for k in keys:
            schema = props[k] if isinstance(props[k], dict) else {}
            plan.append(("force", f'{PARAM_OPEN} name="{k}" string="{self._is_string(schema)}">'))
            plan.append(("value", k, schema))
            plan.append(("force", PARAM_CLOSE + "\n"))
        plan.append(("force", INVOKE_CLOSE + "\n" + TOOL_CALLS_CLOSE))
        plan.append(("end",))
        self._plan = plan

    @staticmethod
    def _is_string(schema: dict) -> str:
        if "enum" in schema:
            return "true" if all(isinstance(v, str) for v in schema["enum"]) else "false"
        return "true" if schema.get("type", "string") == "string" else "false"

    # -- the Generation protocol -----------------------------------------------------------
    def directive(self):
        if self._reasoning:
            return Sample()
        while True:
            step = self._plan[0]
            kind = step[0]
            if kind == "force":
                self._plan.pop(0)
                if self._plan and self._plan[0][0] == "end":
                    self.finished = True
                return Force(step[1])
            if kind == "name":
                mask = self.vi.prefix_mask(self._name, self.names)
                if not mask.any():  # no token spells the rest: write it
                    name = next(n for n in self.names if n.startswith(self._name))
                    rest, self._name = name[len(self._name):], name
                    self._plan.pop(0)
                    self._after_name()
                    self._plan.insert(0, ("force", rest))
                    continue
                return Sample(mask)
            if kind == "value":
                schema = step[2]
                t = schema.get("type", "string")
                if "enum" in schema or t == "boolean":
                    choices = self._choices(schema)
                    mask = self.vi.prefix_mask(self._value, choices)
                    if not mask.any():  # no token spells the rest: write it
                        value = next(c for c in choices if c.startswith(self._value))
                        self._plan[0] = ("force", value[len(self._value):])
                        self._value, self._value_tokens = "", 0
                        continue
                    return Sample(mask)
                if t in ("integer", "number"):
                    # the first token must start a JSON number; then any token may end it
                    if not self._value:
                        return Sample(self.vi.lead_digits)
                    return Sample(None if self._value != "0" else ~self.vi.digits)
                if t == "string":
                    return Sample()
                # objects, arrays, ...: their default JSON
                self._plan[0] = ("force", _schema_default(schema))
                continue
            raise AssertionError(f"unexpected plan step {step!r}")

    @staticmethod
    def _choices(schema: dict) -> list[str]:
        if "enum" in schema:
            return [v if isinstance(v, str) else json.dumps(v) for v in schema["enum"]]
        return ["true", "false"]

    def accept(self, token: int) -> bool:
        text = self.vi.text[token]
        if self._reasoning:
            self._reason_text += text
            if THINK_END in self._reason_text or token == self.eos:
                self._start()
                return token != self.eos  # an EOS in the reasoning is not fed: the call follows
            return True
        step = self._plan[0]
        if step[0] == "name":
            self._name += text
            if self._name in self.names and not any(n != self._name and n.startswith(self._name)
                                                    for n in self.names):
                self._plan.pop(0)
                self._after_name()
            return True
        schema = step[2]
        closed = False
        if "enum" in schema or schema.get("type") == "boolean":
            self._value += text
            choices = self._choices(schema)
            closed = self._value in choices and not any(c != self._value and c.startswith(self._value)
                                                        for c in choices)
            accepted = True
        elif schema.get("type") in ("integer", "number"):
            accepted = bool(self.vi.digits[token]) and self._value_tokens < NUMBER_CAP
            if accepted:
                self._value += text
                self._value_tokens += 1
            closed = not accepted or self._value_tokens >= NUMBER_CAP
        else:  # string
            accepted = token != self.eos and not self.vi.ends_string[token]
            if accepted:
                self._value += text
                self._value_tokens += 1
            closed = not accepted or self._value_tokens >= STRING_CAP
        if closed:
            self._plan.pop(0)
            self._value, self._value_tokens = "", 0
        return accepted


def constraint_for(tool_choice, tools, tokenizer, thinking: bool, eos_id: int):
    """The constraint for an OpenAI `tool_choice` value, or None (auto / none)."""
    if tool_choice in (None, "auto", "none") or not tools:
        return None
    if tool_choice == "required":
        return ToolCallConstraint(tokenizer, tools, None, thinking, eos_id)
    name = tool_choice["function"]["name"]
    return ToolCallConstraint(tokenizer, tools, name, thinking, eos_id)

