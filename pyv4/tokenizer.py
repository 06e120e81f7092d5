"""DeepSeek-V4 tokenizer: byte-level BPE backed by the `tokenizers` library.

Sources of the vocabulary:

* ``Tokenizer.from_file(path)``: an official ``tokenizer.json``.
* ``Tokenizer.from_gguf(path)``: the ``tokenizer.huggingface.json`` metadata string when the GGUF
  carries one (our converter embeds it), otherwise a tokenizer rebuilt from llama.cpp's
  ``tokenizer.ggml.*`` keys (model ``gpt2``, tokens, token_type, merges) with the DeepSeek-V3/V4
  pre-tokenizer, so community GGUFs work too.

``gguf_tokenizer_metadata(tokenizer_json_path)`` produces the ``tokenizer.ggml.*`` keys the same way
llama.cpp's converter writes them for this model, and ``write_gguf_tokenizer(writer, ...)`` writes
them into a ``gguf.GGUFWriter`` with the right value types.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"

# llama.cpp token types (gguf.TokenType)
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# The DeepSeek-V3/V4 pre-tokenizer (same as the official tokenizer.json and llama.cpp's
# LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM): digit runs of 1-3, CJK/kana runs, a GPT-style split,
# then byte-level mapping without a prefix space.
_PRE_DIGITS = r"\p{N}{1,3}"
_PRE_CJK = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_PRE_MAIN = (
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
    r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)


def _deepseek_pre_tokenizer() -> dict:
    def split(rx: str) -> dict:
        return {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False}

    return {
        "type": "Sequence",
        "pretokenizers": [
            split(_PRE_DIGITS),
            split(_PRE_CJK),
            split(_PRE_MAIN),
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }


def _byte_level_tables() -> tuple[dict[int, str], dict[str, int]]:
    """GPT-2 byte <-> printable unicode char mapping used by byte-level BPE."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping, {c: b for b, c in mapping.items()}


_BYTE_TO_CHAR, _CHAR_TO_BYTE = _byte_level_tables()


def _byte_level_to_bytes(piece: str) -> bytes:
    out = bytearray()
    for ch in piece:
        b = _CHAR_TO_BYTE.get(ch)
        if b is None:  # not a byte-level char: take it literally
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


def _looks_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or (
        text.startswith("<｜") and text.endswith("｜>")
    )


# --------------------------------------------------------------------------------------------
# GGUF metadata (llama.cpp layout)
# --------------------------------------------------------------------------------------------


def _merges_as_strings(merges: Sequence[Any]) -> list[str]:
    out = []
    for m in merges:
        if isinstance(m, str):
            out.append(m)
        else:
            a, b = m
            out.append(f"{a} {b}")
    return out


def gguf_tokenizer_metadata(tokenizer_json_path, vocab_size: int | None = None,
                            include_hf_json: bool = False) -> dict[str, Any]:
    """Tokenizer metadata keys as llama.cpp's converter writes them for DeepSeek-V4 (gpt2 BPE).

    Returns ``{key: value}`` with plain Python values: ``str``, ``bool``, ``int`` (write token ids
    as UINT32), ``list[str]`` and ``list[int]`` (token_type: INT32). ``vocab_size`` defaults to
    the largest id + 1 (129,280 for V4, equal to the model vocab). With ``include_hf_json`` the
    raw tokenizer.json text is added under ``tokenizer.huggingface.json``.
    """
    path = Path(tokenizer_json_path)
    raw = path.read_text(encoding="utf-8")
    tj = json.loads(raw)
    model = tj["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: expected a BPE tokenizer, got {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    added = {int(t["id"]): t for t in tj.get("added_tokens", [])}
    n = max(max(vocab.values(), default=-1), max(added, default=-1)) + 1
    if vocab_size is None:
        vocab_size = n
    if vocab_size < n:
        raise ValueError(f"vocab_size {vocab_size} < tokenizer size {n}")

    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i in added:
            a = added[i]
            text = a["content"]
            if a.get("special") or _looks_special(text):
                types.append(TOKEN_CONTROL)
            else:
                text = text.replace("\u2581", " ")  # llama.cpp pre-normalises user-defined spaces
                types.append(TOKEN_USER_DEFINED)
            tokens.append(text)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(TOKEN_NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)

    def find(content: str) -> int | None:
        for i, a in added.items():
            if a["content"] == content:
                return i
        return vocab.get(content)

    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "deepseek-v3",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": _merges_as_strings(model.get("merges", [])),
    }
    bos, eos = find(BOS_TOKEN), find(EOS_TOKEN)
    if bos is not None:
        meta["tokenizer.ggml.bos_token_id"] = bos
    if eos is not None:
        meta["tokenizer.ggml.eos_token_id"] = eos
        meta["tokenizer.ggml.padding_token_id"] = eos  # tokenizer_config: pad = EOS
    meta["tokenizer.ggml.add_bos_token"] = False
    meta["tokenizer.ggml.add_eos_token"] = False
    if include_hf_json:
        meta["tokenizer.huggingface.json"] = raw
    return meta


def write_gguf_tokenizer(writer, tokenizer_json_path, vocab_size: int | None = None,
                         include_hf_json: bool = True) -> None:
    """Write the tokenizer keys into a ``gguf.GGUFWriter`` (ids as UINT32, token_type as INT32)."""
    meta = gguf_tokenizer_metadata(tokenizer_json_path, vocab_size=vocab_size,
                                   include_hf_json=include_hf_json)
    for key, val in meta.items():
        if isinstance(val, bool):
            writer.add_bool(key, val)
        elif isinstance(val, int):
            writer.add_uint32(key, val)
        elif isinstance(val, str):
            writer.add_string(key, val)
        elif key == "tokenizer.ggml.token_type":
            writer.add_array(key, [int(v) for v in val])
        else:
            writer.add_array(key, list(val))


def _tokenizer_json_from_ggml(tokens: Sequence[str], types: Sequence[int] | None,
                              merges: Sequence[str]) -> dict:
    """Rebuild a tokenizer.json dict from llama.cpp gpt2-style vocab keys."""
    if types is None:
        types = [TOKEN_NORMAL] * len(tokens)
    # Every id goes into the BPE vocab so that ids stay dense: `tokenizers` resolves an added
    # token's id through the model vocab. Added-token strings (outside the byte-level alphabet or
    # absent from the merges) can never be produced by a merge, so this changes no encoding.
    vocab: dict[str, int] = {}
    added = []
    for i, (text, ty) in enumerate(zip(tokens, types)):
        ty = int(ty)
        if text not in vocab:
            vocab[text] = i
        if ty in (TOKEN_CONTROL, TOKEN_USER_DEFINED):
            added.append({
                "id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": ty == TOKEN_USER_DEFINED, "special": ty == TOKEN_CONTROL,
            })
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": []},
        "pre_tokenizer": _deepseek_pre_tokenizer(),
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [m.split(" ", 1) for m in merges],
        },
    }


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


class Tokenizer:
    """Byte-level BPE tokenizer for DeepSeek-V4 (129,280 ids)."""

    def __init__(self, hf_tokenizer, bos_id: int | None = None, eos_id: int | None = None,
                 n_vocab: int | None = None):
        self._tok = hf_tokenizer
        self.n_vocab = int(n_vocab if n_vocab is not None
                           else hf_tokenizer.get_vocab_size(with_added_tokens=True))
        if bos_id is None:
            bos_id = hf_tokenizer.token_to_id(BOS_TOKEN)
        if eos_id is None:
            eos_id = hf_tokenizer.token_to_id(EOS_TOKEN)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self._added: dict[int, str] = {
            int(i): t.content for i, t in hf_tokenizer.get_added_tokens_decoder().items()
        }
        self._special_ids = frozenset(
            int(i) for i, t in hf_tokenizer.get_added_tokens_decoder().items() if t.special
        )
        self._bytes: list[bytes | None] | None = None

    # ---- construction ----

    @classmethod
    def from_file(cls, tokenizer_json_path) -> "Tokenizer":
        from tokenizers import Tokenizer as _HFTokenizer

        return cls(_HFTokenizer.from_file(str(tokenizer_json_path)))

    @classmethod
    def from_str(cls, tokenizer_json: str) -> "Tokenizer":
        from tokenizers import Tokenizer as _HFTokenizer

        return cls(_HFTokenizer.from_str(tokenizer_json))

    @classmethod
    def from_gguf(cls, path) -> "Tokenizer":
        from tokenizers import Tokenizer as _HFTokenizer

        from ._core import GGUFFile

        f = path if hasattr(path, "get") and hasattr(path, "keys") else GGUFFile(str(path))
        bos = f.get("tokenizer.ggml.bos_token_id", None)
        eos = f.get("tokenizer.ggml.eos_token_id", None)
        hf_json = f.get("tokenizer.huggingface.json", None)
        if hf_json:
            if isinstance(hf_json, (bytes, bytearray)):
                hf_json = hf_json.decode("utf-8")
            hf = _HFTokenizer.from_str(hf_json)
            n_vocab = hf.get_vocab_size(with_added_tokens=True)
        else:
            model = f.get("tokenizer.ggml.model", None)
            tokens = f.get("tokenizer.ggml.tokens", None)
            if tokens is None:
                raise ValueError(f"{path}: no tokenizer in this GGUF (tokenizer.ggml.tokens missing)")
            if model not in (None, "gpt2"):
                raise ValueError(f"{path}: unsupported tokenizer model {model!r} (need gpt2 BPE)")
            types = f.get("tokenizer.ggml.token_type", None)
            merges = f.get("tokenizer.ggml.merges", None) or []
            tokens = [t.decode("utf-8") if isinstance(t, (bytes, bytearray)) else t for t in tokens]
            merges = [m.decode("utf-8") if isinstance(m, (bytes, bytearray)) else m for m in merges]
            tj = _tokenizer_json_from_ggml(tokens, types, merges)
            hf = _HFTokenizer.from_str(json.dumps(tj, ensure_ascii=False))
            n_vocab = len(tokens)
        return cls(hf, bos_id=None if bos is None else int(bos),
                   eos_id=None if eos is None else int(eos), n_vocab=n_vocab)

    # ---- encode / decode ----

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of ``text``. Special/added tokens written in the text are recognised.
        ``add_special=True`` prepends BOS (the model config has add_bos_token = false)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_special and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def encode_batch(self, texts: Iterable[str], add_special: bool = False) -> list[list[int]]:
        out = [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        if add_special and self.bos_id is not None:
            out = [[self.bos_id] + ids for ids in out]
        return out

    def _table(self) -> list[bytes | None]:
        if self._bytes is None:
            table: list[bytes | None] = [None] * self.n_vocab
            for piece, i in self._tok.get_vocab(with_added_tokens=False).items():
                if 0 <= i < self.n_vocab:
                    table[i] = _byte_level_to_bytes(piece)
            for i, content in self._added.items():
                if 0 <= i < self.n_vocab:
                    table[i] = content.encode("utf-8")
            self._bytes = table
        return self._bytes

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token (a byte-level piece may be an incomplete UTF-8 sequence)."""
        table = self._table()
        if not 0 <= token_id < len(table) or table[token_id] is None:
            return b""
        return table[token_id]  # type: ignore[return-value]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._table()
        n = len(table)
        return b"".join(table[i] or b"" for i in ids if 0 <= i < n)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self._special_ids]
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def __len__(self) -> int:
        return self.n_vocab

    def __repr__(self) -> str:
        return f"Tokenizer(n_vocab={self.n_vocab}, bos_id={self.bos_id}, eos_id={self.eos_id})"


class StreamDecoder:
    """Incremental detokenizer: feed ids one at a time, get only complete UTF-8 text.

    Bytes of a multibyte character split across tokens are held back until the character is
    complete; invalid sequences become U+FFFD. ``flush()`` returns whatever is left.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._dec.decode(self._tok.token_bytes(int(token_id)), final=False)

    def feed_many(self, ids: Iterable[int]) -> str:
        return self._dec.decode(self._tok.decode_bytes(int(i) for i in ids), final=False)

    def flush(self) -> str:
        out = self._dec.decode(b"", final=True)
        self._dec.reset()
        return out

    @property
    def pending(self) -> bytes:
        """Bytes held back (an incomplete UTF-8 sequence)."""
        return self._dec.getstate()[0]

    def reset(self) -> None:
        self._dec.reset()
