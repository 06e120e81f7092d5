"""Token generation on a Session: sampling loop, EOS / stop strings /
max_tokens, and UTF-8-safe streaming text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .sampling import SamplingParams


@dataclass
class Chunk:
    """One generated token and the text it completes. `text` may be empty (a
    multi-byte character still incomplete, or text held back because it might
    start a stop string) and may carry text of earlier tokens."""

    token: int
    text: str


@dataclass
class GenerationResult:
    tokens: list[int]
    text: str
    finish_reason: str  # "eos" | "stop" | "length"


class _StopFilter:
    """Holds back text that could be the start of a stop string."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        buf = self.held + text
        hits = [(buf.find(s), s) for s in self.stops if s in buf]
        if hits:
            self.held = ""
            return buf[: min(hits)[0]], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self.held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


def generate(session, tokens, params: SamplingParams | None = None,
             result: dict | None = None) -> Iterator[Chunk]:
    """Feeds `tokens` (non-empty) to `session`, then samples.

    Every yielded token except a final EOS is fed to the session, so the
    session holds prompt + yielded tokens (`session.tokens` says exactly which,
    also after a KeyboardInterrupt). `result`, if given, receives
    `finish_reason`."""
    params = params or SamplingParams()
    model = session.model
    tok = model.tokenizer
    eos = model.config["eos_token_id"]
    ids = np.asarray(tokens, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("generate needs a non-empty 1-D list of prompt tokens")
    sampler = params.sampler()
    history = list(int(t) for t in ids)

    def feed(batch) -> np.ndarray:
        return session.eval(batch, logits="last")

    logits = feed(ids)
    decoder = tok.stream_decoder()
    stops = _StopFilter(params.stop)
    n = 0
    reason = "length"
    while params.max_tokens is None or n < params.max_tokens:
        t = int(sampler.sample(logits, np.asarray(history, dtype=np.int64)))
        n += 1
        if t == eos and not params.ignore_eos:
            reason = "eos"
            break
        history.append(t)
        text, hit = stops.push(decoder.feed(t))
        if hit:
            # The stop string is not part of the reply; the token is still fed
            # so the session matches what the model produced.
            feed([t])
            if text:
                yield Chunk(t, text)
            reason = "stop"
            break
        logits = feed([t])
        yield Chunk(t, text)
    if reason != "stop":
        tail = stops.push(decoder.flush())[0] + stops.flush()
        if tail:
            yield Chunk(-1, tail)
    if result is not None:
        result["finish_reason"] = reason
        result["n_generated"] = n
