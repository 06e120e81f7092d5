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


@dataclass
class Force:
    """A constraint's directive: append this text to the reply without sampling."""

    text: str


@dataclass
class Sample:
    """A constraint's directive: sample the next token, only among `allowed` ids
    (a boolean mask over the vocabulary; None = any)."""

    allowed: np.ndarray | None = None


@dataclass
class Step:
    """What one `Generation.advance` produced: the tokens to feed the session
    next (a sampled token, or the tokens of forced text; empty once nothing
    more is fed) and the output chunks."""

    feed: list[int]
    chunks: list[Chunk]


class Generation:
    """One continuation of a prompt, one step per logits vector.

    The caller owns the session: it feeds the prompt, passes the logits to
    `advance`, feeds `Step.feed` and repeats until `done`. `generate` below
    runs that loop on one session; the server's scheduler (pyv4/batching.py)
    runs many at once through `Model.eval_batch`. Every token in a step's
    chunks is in its `feed` (a final EOS is neither), so a session fed this
    way holds prompt + reply.

    `constraint` (optional, see pyv4/tool_choice.py) steers decoding: before
    each token its `directive()` says Force(text) or Sample(allowed); after a
    sampled token `accept(text)` may refuse it (the token is then dropped and
    the constraint moves on, typically to forced text).
    `logprobs`: also record, per sampled token, its log-probability under the
    raw logits and the `logprobs - 1` most likely alternatives (in `self.logprobs`)."""

    def __init__(self, tokenizer, eos_id: int, prompt, params: SamplingParams | None = None,
                 constraint=None, logprobs: int = 0):
        self.params = params or SamplingParams()
        self.tok = tokenizer
        self.eos = eos_id
        self.sampler = self.params.sampler()
        self.history = [int(t) for t in prompt]
        self.decoder = tokenizer.stream_decoder()
        self.stops = _StopFilter(self.params.stop)
        self.constraint = constraint
        self.n_logprobs = logprobs
        self.logprobs: list[dict] = []
        self.tokens: list[int] = []  # the reply's tokens (sampled and forced)
        self.text = ""  # the reply's text as emitted
        self.finish_reason: str | None = "length" if self.params.max_tokens == 0 else None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _room(self) -> int | None:
        m = self.params.max_tokens
        return None if m is None else m - len(self.tokens)

    def _emit(self, t: int, chunks: list[Chunk]) -> bool:
        """Appends token t to the reply; False when it completes a stop string."""
        self.tokens.append(t)
        self.history.append(t)
        text, hit = self.stops.push(self.decoder.feed(t))
        if text or not hit:
            chunks.append(Chunk(t, text))
            self.text += text
        if hit:
            self.finish_reason = "stop"
        return not hit

    def _finish(self, reason: str, chunks: list[Chunk]) -> None:
        self.finish_reason = reason
        tail = self.stops.push(self.decoder.flush())[0] + self.stops.flush()
        if tail:
            chunks.append(Chunk(-1, tail))
            self.text += tail

    def _record_logprobs(self, logits: np.ndarray, t: int) -> None:
        z = logits.astype(np.float64)
        lse = float(np.log(np.exp(z - z.max()).sum()) + z.max())
        k = max(0, self.n_logprobs - 1)
        top = np.argpartition(-z, k)[:k] if 0 < k < len(z) else np.arange(0)
        top = top[np.lexsort((top, -z[top]))]  # most likely first, ties to the lower id
        self.logprobs.append({"token": t, "logprob": float(z[t] - lse),
                              "top": [(int(i), float(z[i] - lse)) for i in top]})

    def advance(self, logits: np.ndarray) -> Step:
        """Decides what follows the tokens fed so far, given their last logits."""
        chunks: list[Chunk] = []
        if self.done:
            return Step([], chunks)
        while True:
            d = self.constraint.directive() if self.constraint is not None else None
            if isinstance(d, Force):
                ids = self.tok.encode(d.text)
                room = self._room()
                if room is not None:
                    ids = ids[:room]
                fed = []
                for t in ids:
                    fed.append(t)
                    if not self._emit(t, chunks):
                        return Step(fed, chunks)
                if self.constraint.finished:
                    self._finish("eos", chunks)
                elif self._room() == 0:
                    self._finish("length", chunks)
                return Step(fed, chunks)
            if d is not None and d.allowed is not None:
                logits = np.where(d.allowed, logits, -np.inf).astype(np.float32)
            t = int(self.sampler.sample(logits, np.asarray(self.history, dtype=np.int64)))
            if self.constraint is not None and not self.constraint.accept(t):
                continue  # refused: the constraint has moved on (its next directive forces text)
            if t == self.eos and not self.params.ignore_eos:
                self._finish("eos", chunks)
                return Step([], chunks)
            if self.n_logprobs:
                self._record_logprobs(logits, t)
            if not self._emit(t, chunks):
                return Step([t], chunks)
            if self.constraint is not None and self.constraint.finished:
                self._finish("eos", chunks)
            elif self._room() == 0:
                self._finish("length", chunks)
            return Step([t], chunks)


def generate(session, tokens, params: SamplingParams | None = None,
             result: dict | None = None) -> Iterator[Chunk]:
    """Feeds `tokens` (non-empty) to `session`, then samples.

    Every yielded token except a final EOS is fed to the session, so the
    session holds prompt + yielded tokens (`session.tokens` says exactly which,
    also after a KeyboardInterrupt). `result`, if given, receives
    `finish_reason` and `n_generated`."""
    model = session.model
    ids = np.asarray(tokens, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("generate needs a non-empty 1-D list of prompt tokens")
    gen = Generation(model.tokenizer, model.config["eos_token_id"], ids, params)
    logits = session.eval(ids, logits="last")
    while not gen.done:
        step = gen.advance(logits)
        if step.feed:
            logits = session.eval(step.feed, logits="last")
        yield from step.chunks
    if result is not None:
        result["finish_reason"] = gen.finish_reason
        result["n_generated"] = len(gen.tokens) + (gen.finish_reason == "eos")
