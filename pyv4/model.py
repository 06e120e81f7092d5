"""Model and Session: thin Python wrappers over the C++ engine (csrc/model)."""

from __future__ import annotations

import os

import numpy as np

from . import _core


class Model:
    """A DeepSeek-V4 model loaded from a `deepseek4` GGUF file (memory-mapped)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"model file not found: {self.path}")
        self._engine = _core.Engine(self.path, threads or 0)
        self._tokenizer = None

    @property
    def config(self) -> dict:
        return dict(self._engine.config())

    @property
    def n_vocab(self) -> int:
        return self._engine.n_vocab

    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    @property
    def tokenizer(self):
        """The tokenizer embedded in the GGUF (loaded on first use)."""
        if self._tokenizer is None:
            from .tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_gguf(self.path)
        return self._tokenizer

    def new_session(self) -> "Session":
        return Session(self)


class Session:
    """One conversation's state: the tokens seen so far and their KV state."""

    def __init__(self, model: Model):
        self.model = model
        self._state = model._engine.new_session()

    @property
    def n_tokens(self) -> int:
        return self._state.n_tokens

    def eval(self, tokens, logits: str = "last") -> np.ndarray:
        """Feed `tokens` and return float32 logits: [n, vocab] for logits="all",
        [vocab] for logits="last". Invalid ids raise ValueError and leave the
        session unchanged."""
        if logits not in ("all", "last"):
            raise ValueError(f'logits must be "all" or "last", not {logits!r}')
        ids = np.asarray(tokens)
        if ids.ndim != 1:
            raise ValueError(f"tokens must be a 1-D sequence of ids, got shape {ids.shape}")
        if ids.size == 0:
            raise ValueError("tokens is empty")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"tokens must be integers, got dtype {ids.dtype}")
        return self.model._engine.eval(self._state, ids.astype(np.int64, copy=False), logits == "all")

    def generate(self, tokens, params=None):
        """Feed `tokens`, then sample until EOS, a stop string or max_tokens.
        Yields `pyv4.generate.Chunk(token, text)`; see pyv4/generate.py."""
        from .generate import generate

        return generate(self, tokens, params)

    def reset(self) -> None:
        self._state.reset()
