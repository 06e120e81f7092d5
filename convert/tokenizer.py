"""Tokenizer metadata for the converter: the ``tokenizer.ggml.*`` keys plus the full
``tokenizer.json`` (``tokenizer.huggingface.json``) for pyv4.

The keys themselves come from one implementation, ``pyv4.tokenizer.gguf_tokenizer_metadata``
(llama.cpp's layout for DeepSeek-V4: model ``gpt2``, pre-tokenizer ``deepseek-v3``); this
module only adapts it to the converter's ``KV`` entries and errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConvertError


@dataclass
class KV:
    """One metadata entry: ``kind`` is one of string, uint32, float32, bool, array, or the
    exact ``GGUFValueType`` of an entry copied from another GGUF (with ``sub_type``, the
    element type of an array), so a copy keeps every value's type."""
    key: str
    kind: Any
    value: Any
    sub_type: Any = None


@dataclass
class TokenizerInfo:
    entries: list[KV] = field(default_factory=list)
    n_tokens: int = 0
    note: str = ""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "uint32"
    if isinstance(value, float):
        return "float32"
    if isinstance(value, str):
        return "string"
    return "array"


def tokenizer_metadata(src_dir: Path | str, n_vocab: int, bos_id: int | None, eos_id: int | None) -> TokenizerInfo:
    """Metadata entries for the tokenizer found in ``src_dir`` (or just the ids when there is none)."""
    from ..tokenizer import gguf_tokenizer_metadata

    path = Path(src_dir) / "tokenizer.json"
    info = TokenizerInfo()
    if not path.is_file():
        if bos_id is not None:
            info.entries.append(KV("tokenizer.ggml.bos_token_id", "uint32", bos_id))
        if eos_id is not None:
            info.entries.append(KV("tokenizer.ggml.eos_token_id", "uint32", eos_id))
        info.note = "no tokenizer.json in the source folder: wrote the bos/eos ids only"
        return info
    try:
        meta = gguf_tokenizer_metadata(path, vocab_size=n_vocab, include_hf_json=True)
    except ValueError as e:
        msg = str(e)
        if "vocab_size" in msg:
            msg = f"the tokenizer has more ids than the model's vocab_size {n_vocab} ({msg})"
        raise ConvertError(f"{path}: cannot use tokenizer.json ({msg})") from None
    except (OSError, KeyError, TypeError) as e:
        raise ConvertError(f"{path}: cannot read tokenizer.json ({e})") from None
    if bos_id is not None:
        meta.setdefault("tokenizer.ggml.bos_token_id", bos_id)
    if eos_id is not None:
        meta.setdefault("tokenizer.ggml.eos_token_id", eos_id)
    if not meta.get("tokenizer.ggml.merges"):
        meta.pop("tokenizer.ggml.merges", None)
    # the full tokenizer.json goes last (it is the largest value)
    hf = meta.pop("tokenizer.huggingface.json")
    for key, value in meta.items():
        info.entries.append(KV(key, _kind(value), value))
    info.entries.append(KV("tokenizer.huggingface.json", "string", hf))
    info.n_tokens = len(meta["tokenizer.ggml.tokens"])
    return info
