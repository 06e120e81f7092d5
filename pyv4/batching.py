"""The server's scheduler: many generations, one model, batched steps.

One thread owns the model. Each loop iteration it drops cancelled jobs, admits
queued ones up to `parallel` (resuming each from the longest cached prefix of
its prompt), then runs ONE `Model.eval_batch` over every active job: prompt
chunks of the jobs still prefilling next to the one token (or the forced
text) of each decoding job, so every weight matrix is read once per step for
all of them. Each job's `Generation` (pyv4/generate.py) turns its logits into
the next tokens and output chunks, which go to the job's `on_event` callback
(called on this thread; the HTTP layer hands them to its event loop).

Prefix reuse: finished jobs leave their sessions (prompt + reply) in an
in-memory pool, LRU, `pool_size` entries; a new prompt forks the entry
sharing its longest token prefix (copy-on-write, no copy of the cache) and
rolls it back to that prefix. With a PromptCache (on disk) the longer of the
two prefixes wins, and finished sessions are saved there too.

A job's `n` choices share one prefill: the first prefills, the others fork its
session once the prompt is in and sample from the same logits.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .generate import Generation


@dataclass
class Job:
    """One generation. `on_event(kind, payload)` receives ("chunks", [Chunk]),
    then ("done", job) once (also after an error: `job.error` is set)."""

    prompt: list[int]
    gen: Generation
    on_event: Callable[[str, object], None]
    cancelled: bool = False
    error: str | None = None
    cached_tokens: int = 0
    # scheduler state
    session: object = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not fed yet
    feed: list[int] = field(default_factory=list)  # generated tokens to feed next
    followers: list["Job"] = field(default_factory=list)  # other choices waiting for this prefill
    leader: "Job | None" = None
    # queued | prefill | wait (a follower before the prefill is in) | decode |
    # closing (done, its last tokens still to feed) | done
    state: str = "queued"

    def cancel(self) -> None:
        self.cancelled = True


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    neq = np.nonzero(a[:n] != b[:n])[0]
    return int(neq[0]) if neq.size else n


class Scheduler:
    def __init__(self, model, parallel: int = 4, kv: str = "fp8", prompt_cache=None,
                 prefill_chunk: int = 512, pool_size: int | None = None):
        if parallel < 1:
            raise ValueError("parallel must be >= 1")
        self.model = model
        self.parallel = parallel
        self.kv = kv
        self.prompt_cache = prompt_cache
        self.prefill_chunk = prefill_chunk
        self.pool_size = pool_size if pool_size is not None else 2 * parallel + 4
        self._pool: list = []  # finished sessions, least recently used first
        self._queue: list[list[Job]] = []  # groups of choices
        self._active: list[Job] = []
        self._cv = threading.Condition()
        self._stop = False
        self.stats = {"prompt_tokens": 0, "cached_tokens": 0, "generated_tokens": 0, "steps": 0,
                      "batch_rows": 0, "cache_hits": 0, "jobs_done": 0, "jobs_cancelled": 0,
                      "jobs_failed": 0}
        self._rate: list[tuple[float, int]] = []  # (time, tokens) of recent steps
        self._thread = threading.Thread(target=self._loop, name="pyv4-scheduler", daemon=True)
        self._thread.start()

    # -- API (any thread) ---------------------------------------------------------------
    def submit(self, jobs: list[Job]) -> None:
        """Queues the choices of one request (same prompt)."""
        with self._cv:
            self._queue.append(jobs)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join()

    @property
    def queued(self) -> int:
        return sum(len(g) for g in self._queue)

    @property
    def active(self) -> int:
        return len(self._active)

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in self._rate if now - t <= 10.0]
        if len(recent) < 2:
            return 0.0
        return sum(n for _, n in recent[1:]) / max(now - recent[0][0], 1e-9)

    # -- the loop (scheduler thread) ----------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._queue and not self._active:
                    self._cv.wait()
                if self._stop:
                    break
            try:
                self._drop_cancelled()
                self._admit()
                if self._active:
                    self._step()
            except Exception as e:  # never let one failure stop the server
                traceback.print_exc()
                for job in list(self._active):
                    self._fail(job, f"internal error: {e}")

    def _drop_cancelled(self) -> None:
        with self._cv:
            for group in self._queue:
                for job in [j for j in group if j.cancelled]:
                    group.remove(job)
                    self._finish(job, cancelled=True)
            self._queue = [g for g in self._queue if g]
        for job in [j for j in self._active if j.cancelled]:
            for f in job.followers:  # they still need the prompt: the first of them takes over
                f.leader = None
            if job.state == "prefill" and job.followers:
                heir = job.followers[0]
                heir.session, heir.pending, heir.state = job.session, job.pending, "prefill"
                heir.followers = job.followers[1:]
                for f in heir.followers:
                    f.leader = heir
                job.session = None
                job.followers = []
            self._finish(job, cancelled=True)

    def _admit(self) -> None:
        while True:
            with self._cv:
                if not self._queue:
                    return
                group = self._queue[0]
                if self._active and len(self._active) + len(group) > self.parallel:
                    return
                self._queue.pop(0)
            leader = group[0]
            leader.session, leader.cached_tokens = self._resume(leader.prompt)
            leader.pending = list(leader.prompt[leader.session.n_tokens:])
            leader.state = "prefill"
            self.stats["prompt_tokens"] += len(leader.prompt) * len(group)
            self.stats["cached_tokens"] += leader.cached_tokens * len(group)
            self.stats["cache_hits"] += leader.cached_tokens > 0
            for f in group[1:]:
                f.leader, f.state, f.cached_tokens = leader, "wait", leader.cached_tokens
            leader.followers = group[1:]
            self._active.extend(group)

    def _resume(self, prompt: list[int]):
        """A session holding the longest cached prefix of prompt (at most all but
        its last token), and that prefix's length."""
        ids = np.asarray(prompt, dtype=np.int64)
        limit = len(ids) - 1
        best, best_len = None, 0
        for s in self._pool:
            n = min(_common_prefix(s.tokens, ids), limit)
            if n > best_len:
                best, best_len = s, n
        if self.prompt_cache is not None and best_len < limit:  # (a disk hit maps a file)
            disk = self.prompt_cache.resume(ids, kv=self.kv)
            if disk.n_tokens > best_len:
                return disk, disk.n_tokens
        if best is None:
            return self.model.new_session(kv=self.kv), 0
        self._pool.remove(best)
        self._pool.append(best)  # most recently used
        sess = best.fork()
        if sess.n_tokens > best_len:
            sess.truncate(best_len)
        return sess, best_len

    def _step(self) -> None:
        items, jobs = [], []
        budget = self.prefill_chunk
        for job in self._active:
            if job.state == "prefill":
                if budget <= 0:
                    continue
                chunk = job.pending[:budget]
                budget -= len(chunk)
                items.append((job.session, chunk))
                jobs.append(job)
            elif job.state in ("decode", "closing"):
                items.append((job.session, job.feed))
                jobs.append(job)
        if not items:
            return
        results = self._eval(items, jobs)
        self.stats["steps"] += 1
        self.stats["batch_rows"] += sum(len(t) for _, t in items)
        produced = 0
        for job, (_, toks), logits in zip(jobs, items, results):
            if logits is None:
                continue  # failed and finished in _eval
            if job.state == "closing":
                self._finish(job)
                continue
            if job.state == "prefill":
                job.pending = job.pending[len(toks):]
                if job.pending:
                    continue
                job.state = "decode"
                for f in job.followers:
                    if f.state == "done":  # cancelled while waiting
                        continue
                    f.session, f.state, f.leader = job.session.fork(), "decode", None
                    produced += self._advance(f, logits)
                job.followers = []
            produced += self._advance(job, logits)
        self._rate.append((time.monotonic(), produced))
        self._rate = self._rate[-64:]

    def _eval(self, items, jobs) -> list:
        try:
            return self.model.eval_batch(items)
        except ValueError:
            pass  # input rejected before any session changed: find whose, one by one
        out = []
        for job, (sess, toks) in zip(jobs, items):
            try:
                out.append(self.model.eval_batch([(sess, toks)])[0])
            except Exception as e:
                self._fail(job, str(e))
                out.append(None)
        return out

    def _advance(self, job: Job, logits) -> int:
        """One Generation step for a decoding job; returns the tokens it produced."""
        step = job.gen.advance(logits)
        if step.chunks:
            job.on_event("chunks", step.chunks)
        job.feed = step.feed
        self.stats["generated_tokens"] += sum(c.token >= 0 for c in step.chunks)
        if job.gen.done:
            if step.feed:  # fed in the next step, so the session holds the whole reply
                job.state = "closing"
            else:
                self._finish(job)
        return len(step.feed)

    def _fail(self, job: Job, message: str) -> None:
        job.error = message
        job.session = None  # its state may be inconsistent: not reused
        self.stats["jobs_failed"] += 1
        self._finish(job)

    def _finish(self, job: Job, cancelled: bool = False) -> None:
        if job.state == "done":
            return
        if job in self._active:
            self._active.remove(job)
        job.state = "done"
        if cancelled:
            self.stats["jobs_cancelled"] += 1
        elif job.error is None:
            self.stats["jobs_done"] += 1
        sess = job.session
        if sess is not None and sess.n_tokens > 0 and job.leader is None:
            self._pool.append(sess)
            while len(self._pool) > self.pool_size:
                self._pool.pop(0)
            if self.prompt_cache is not None and not cancelled and job.error is None:
                try:
                    self.prompt_cache.save(sess)
                except OSError as e:
                    print(f"pyv4 serve: prompt cache: {e}")
        job.session = None
        try:
            job.on_event("done", job)
        except Exception:
            traceback.print_exc()
