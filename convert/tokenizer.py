"""Tokenizer metadata: the full ``tokenizer.json`` for pyv4 plus llama.cpp's ``tokenizer.ggml.*`` keys.

The DeepSeek-V4 tokenizer is a byte-level BPE (llama.cpp model ``gpt2``). Its
pre-tokenizer is the DeepSeek-V3 one: llama.cpp identifies it by hashing the token ids
of a probe text, and the V4 tokenizer gives the hash llama.cpp lists as
``deepseek-v3``, so that is the ``tokenizer.ggml.pre`` value written here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConvertError

TOKEN_NORMAL = 1
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5

PRE_TOKENIZER = "deepseek-v3"


@dataclass
class KV:
    """One metadata entry: ``kind`` is one of string, uint32, bool, array."""
    key: str
    kind: str
    value: Any


@dataclass
class TokenizerInfo:
    entries: list[KV] = field(default_factory=list)
    n_tokens: int = 0
    note: str = ""


def _looks_special(text: str) -> bool:
    return ((text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>")))


def _content(tok) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def tokenizer_metadata(src_dir: Path | str, n_vocab: int, bos_id: int | None, eos_id: int | None) -> TokenizerInfo:
    """Metadata entries for the tokenizer found in ``src_dir`` (or just the ids when there is none)."""
    src = Path(src_dir)
    path = src / "tokenizer.json"
    info = TokenizerInfo()
    if not path.is_file():
        if bos_id is not None:
            info.entries.append(KV("tokenizer.ggml.bos_token_id", "uint32", bos_id))
        if eos_id is not None:
            info.entries.append(KV("tokenizer.ggml.eos_token_id", "uint32", eos_id))
        info.note = "no tokenizer.json in the source folder: wrote the vocabulary size and bos/eos ids only"
        return info
    try:
        text = path.read_text(encoding="utf-8")
        tj = json.loads(text)
        model = tj["model"]
        vocab: dict[str, int] = model["vocab"]
        merges = model.get("merges") or []
        added = tj.get("added_tokens") or []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConvertError(f"{path}: cannot read tokenizer.json ({e})") from None
    if model.get("type") != "BPE":
        raise ConvertError(f"{path}: tokenizer model {model.get('type')!r} is not BPE")

    by_id: dict[int, str] = {int(i): t for t, i in vocab.items()}
    added_by_id: dict[int, dict] = {}
    for a in added:
        added_by_id[int(a["id"])] = a
        by_id[int(a["id"])] = a["content"]
    top = max(by_id) + 1 if by_id else 0
    if top > n_vocab:
        raise ConvertError(f"{path}: token id {top - 1} is beyond the model's vocab_size {n_vocab}")

    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
        elif i in added_by_id:
            a = added_by_id[i]
            if a.get("special") or _looks_special(tok):
                types.append(TOKEN_CONTROL)
            else:
                tok = tok.replace("\u2581", " ")  # llama.cpp expects user-defined tokens pre-normalised
                types.append(TOKEN_USER_DEFINED)
            tokens.append(tok)
        else:
            tokens.append(tok)
            types.append(TOKEN_NORMAL)
    merge_strs = [m if isinstance(m, str) else " ".join(m) for m in merges]

    # special ids and flags: tokenizer_config.json if present, else the model config
    add_bos = add_eos = None
    pad_id = None
    tc_path = src / "tokenizer_config.json"
    if tc_path.is_file():
        try:
            tc = json.loads(tc_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConvertError(f"{tc_path}: cannot read tokenizer_config.json ({e})") from None
        content_to_id = {t: i for i, t in by_id.items()}
        for key, cur in (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "pad")):
            c = _content(tc.get(key))
            if c is not None and c in content_to_id:
                if cur == "bos":
                    bos_id = content_to_id[c]
                elif cur == "eos":
                    eos_id = content_to_id[c]
                else:
                    pad_id = content_to_id[c]
        if isinstance(tc.get("add_bos_token"), bool):
            add_bos = tc["add_bos_token"]
        if isinstance(tc.get("add_eos_token"), bool):
            add_eos = tc["add_eos_token"]

    e = info.entries
    e.append(KV("tokenizer.ggml.model", "string", "gpt2"))
    e.append(KV("tokenizer.ggml.pre", "string", PRE_TOKENIZER))
    e.append(KV("tokenizer.ggml.tokens", "array", tokens))
    e.append(KV("tokenizer.ggml.token_type", "array", types))
    if merge_strs:
        e.append(KV("tokenizer.ggml.merges", "array", merge_strs))
    if bos_id is not None:
        e.append(KV("tokenizer.ggml.bos_token_id", "uint32", bos_id))
    if eos_id is not None:
        e.append(KV("tokenizer.ggml.eos_token_id", "uint32", eos_id))
    if pad_id is not None:
        e.append(KV("tokenizer.ggml.padding_token_id", "uint32", pad_id))
    if add_bos is not None:
        e.append(KV("tokenizer.ggml.add_bos_token", "bool", add_bos))
    if add_eos is not None:
        e.append(KV("tokenizer.ggml.add_eos_token", "bool", add_eos))
    e.append(KV("tokenizer.huggingface.json", "string", text))
    info.n_tokens = len(tokens)
    return info
