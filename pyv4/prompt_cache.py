"""A directory of saved sessions, reused for prompts that share a prefix.

``cache = model.prompt_cache(dir, max_bytes)``; ``sess = cache.resume(tokens)``
returns a session holding the longest prefix of ``tokens`` that some saved
session shares with it (loaded memory-mapped, then truncated to the common
prefix; an empty session when nothing matches); evaluate ``tokens[sess.n_tokens:]``
on it. ``cache.save(sess)`` stores a session (atomically) and evicts the least
recently used files until the directory holds at most ``max_bytes``.

Files are ``<sha256 of kv type + tokens>.pyv4s``; a file's mtime is its LRU
time (touched on every hit). Files of another model or KV type are ignored, and
unreadable or corrupt ones are skipped (and removed on eviction like any other).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from . import _core

SUFFIX = ".pyv4s"


class PromptCache:
    def __init__(self, model, directory: str | os.PathLike, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative int, not {max_bytes!r}")
        self.model = model
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._info: dict[str, tuple[tuple[int, int], dict | None]] = {}

    # -- entries ---------------------------------------------------------------

    def _entries(self) -> list[tuple[Path, dict | None, os.stat_result]]:
        out = []
        for p in self.directory.glob("*" + SUFFIX):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            key = (st.st_mtime_ns, st.st_size)
            cached = self._info.get(p.name)
            if cached is None or cached[0] != key:
                try:
                    info = _core.session_file_info(str(p))
                except (ValueError, OSError):
                    info = None  # corrupt or foreign: never matched, evicted first
                cached = (key, info)
                self._info[p.name] = cached
            out.append((p, cached[1], st))
        return out

    def _name(self, kv_type: str, tokens: np.ndarray) -> str:
        h = hashlib.sha256(kv_type.encode() + b"\0" + np.asarray(tokens, dtype="<i4").tobytes())
        return h.hexdigest()[:40] + SUFFIX

    # -- API ---------------------------------------------------------------------

    def resume(self, tokens, kv: str = "fp8"):
        """A session holding the longest saved prefix of `tokens` (at most
        len(tokens) - 1 tokens, so evaluating the rest yields next-token logits)."""
        from .model import Session

        ids = np.asarray(tokens)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError("tokens must be a 1-D sequence of integer ids")
        ids = ids.astype(np.int64, copy=False)
        limit = max(len(ids) - 1, 0)
        best, best_len = None, 0
        fp = self.model.fingerprint
        for path, info, _ in self._entries():
            if info is None or info["fingerprint"] != fp or info["kv_type"] != kv:
                continue
            saved = info["tokens"]
            n = min(len(saved), limit)
            if n <= best_len:
                continue
            neq = np.nonzero(saved[:n] != ids[:n])[0]
            common = int(neq[0]) if neq.size else n
            if common > best_len:
                best, best_len = path, common
        if best is None:
            return self.model.new_session(kv=kv)
        try:
            sess = Session.load(self.model, best)
        except (ValueError, OSError):
            return self.model.new_session(kv=kv)
        try:
            os.utime(best)  # LRU: a hit makes it the most recent
        except OSError:
            pass
        if sess.n_tokens > best_len:
            sess.truncate(best_len)
        return sess

    def save(self, session) -> Path:
        """Store `session` (atomically) and evict LRU files beyond max_bytes."""
        path = self.directory / self._name(session.kv_type, session.tokens)
        session.save(path)
        self.evict()
        return path

    def evict(self) -> None:
        entries = self._entries()
        total = sum(st.st_size for _, _, st in entries)
        # Corrupt / foreign files first, then the oldest.
        entries.sort(key=lambda e: (e[1] is not None, e[2].st_mtime_ns))
        for path, _, st in entries:
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            total -= st.st_size
            self._info.pop(path.name, None)

    def total_bytes(self) -> int:
        return sum(st.st_size for _, _, st in self._entries())
