"""Model and Session: thin Python wrappers over the C++ engine (csrc/model)."""

from __future__ import annotations

import os

import numpy as np

from . import _core


def _token_ids(tokens, where: str = "") -> np.ndarray:
    """tokens as a non-empty 1-D int64 array, or ValueError."""
    ids = np.asarray(tokens)
    if ids.ndim != 1:
        raise ValueError(f"{where}tokens must be a 1-D sequence of ids, got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError(f"{where}tokens is empty")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{where}tokens must be integers, got dtype {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def _check_gpu_path(index: int) -> None:
    """DeviceError unless this build can run a model on cuda:index."""
    from .device import DeviceError

    if getattr(_core, "GpuEngine", None) is None:
        raise DeviceError(f"cuda:{index} requested, but this build of pyv4 has no GPU model path "
                          "(it was compiled without CUDA support); use device=\"cpu\"")


class Model:
    """A DeepSeek-V4 model loaded from a `deepseek4` GGUF file.

    By default the file is memory-mapped (pages load on first use and the kernel
    may drop them again under memory pressure). resident=True copies the whole
    file into anonymous memory at load instead: steady timings, RSS = file size.

    On CPUs with AVX-512, Q4_0 and MXFP4 matrices (the routed experts of the
    mxfp4 recipe) are copied at load into a cache-line-aligned "split" layout
    that streams faster than GGML's 17/18-byte blocks; the file's pages under
    them are released, so memory still holds one copy. The copies are made only
    if they fit in 90 % of the available memory; split_weights=False never makes
    them (every matrix stays a view of the file, nothing is read at load). The
    results are the same bits either way.

    device: "cpu" (default), "cuda" (= "cuda:0") or "cuda:N"; vram: the GPU memory a CUDA
    plan may use, bytes or a string such as "24GiB" (default: the free memory).
    On "cuda" the forward pass runs on the GPU (csrc/cuda/gpu_engine.h): every
    weight but the embedding table and the routed experts the placement
    (pyv4/placement.py) leaves on the host is uploaded at load; those experts
    run on the CPU. max_gpu_experts caps the routed experts per layer on the
    GPU (0: all on the CPU); expert_freq, the routing counts of a calibration
    run (a GGUF imatrix file, a .npy file or an array [layers, experts]), puts
    the most used experts on the GPU first instead of layer by layer. A
    session's KV records live in host memory (the same sessions, files and
    forks as on the CPU) and are copied to the GPU as the plan says (window,
    HCA rows, indexer keys, CSA rows up to its budget), new rows written on the
    GPU and back once per eval; sessions run one at a time. Without a usable GPU (no
    CUDA backend, no GPU or driver) "cuda" raises pyv4.DeviceError saying why.
    `placement()` tells where the model's bytes live."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, resident: bool = False,
                 split_weights: bool = True, device: str = "cpu", vram: int | str | None = None,
                 max_gpu_experts: int | None = None, expert_freq=None):
        from .device import parse_device, require_cuda

        kind, index = parse_device(device)
        if vram is not None:
            if kind == "cpu":
                raise ValueError('vram applies to a CUDA device only (device="cuda" or "cuda:N")')
            from .placement import parse_bytes

            if parse_bytes(vram, "vram") <= 0:
                raise ValueError(f"vram must be positive, not {vram!r}")
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"model file not found: {self.path}")
        if max_gpu_experts is not None and kind == "cpu":
            raise ValueError('max_gpu_experts applies to a CUDA device only (device="cuda")')
        if expert_freq is not None and kind == "cpu":
            raise ValueError('expert_freq applies to a CUDA device only (device="cuda")')
        if kind == "cuda":
            require_cuda(index)
            _check_gpu_path(index)
        self.device = "cpu" if kind == "cpu" else f"cuda:{index}"
        self._engine = _core.Engine(self.path, threads or 0, bool(resident), bool(split_weights))
        self._tokenizer = None
        self._placement = None
        self._gpu = None
        if kind == "cuda":
            self._gpu, self._placement = self._start_gpu(index, vram, max_gpu_experts, expert_freq)

    def _start_gpu(self, index: int, vram, max_gpu_experts, expert_freq):
        """(the GPU engine, its placement): the plan for the vram budget, then
        the upload of what it puts on the GPU. A device that cannot be used
        raises DeviceError; a plan that cannot fit, PlacementError."""
        from .device import DeviceError
        from .model_shape import from_gguf
        from .placement import load_expert_freq, parse_bytes, plan

        name = f"cuda:{index}"
        try:
            budget = parse_bytes(vram, "vram") if vram is not None else _core.cuda_memory(index)[0]
            shape = from_gguf(self.path)
            if isinstance(expert_freq, (str, os.PathLike)):
                expert_freq = load_expert_freq(expert_freq, shape)
            placement = plan(shape, budget, ctx=self.n_ctx, device=name, max_gpu_experts=max_gpu_experts,
                             expert_freq=expert_freq)
            # CSA rows beyond the plan's budget stay on the host (GpuEngine's csa_rows_gpu)
            csa_rows = -1 if placement.csa_rows_gpu >= placement.csa_rows else placement.csa_rows_gpu
            # the streaming choice only arises for experts the host keeps
            host_experts = any(k < shape.n_expert for k in placement.experts_gpu_per_layer)
            rates = self._stream_rates(shape, index) if host_experts else {}
            engine = _core.GpuEngine(self._engine, [tuple(r) for r in placement.experts_on_gpu],
                                     csa_rows_gpu=csa_rows, device=index, **rates)
        except DeviceError:
            raise
        except RuntimeError as e:  # CUDA errors: no device after all, out of memory, a fault
            raise DeviceError(f"{name}: {e}") from e
        return engine, placement

    def _stream_rates(self, shape, device: int) -> dict:
        """This machine's rates for the per-chunk choice between running the
        host's routed experts on the CPU and streaming them to the GPU
        (csrc/cuda/stream_plan.h), measured now (~0.2 s): the pool's read
        bandwidth, the int8 rate of its kernels on the model's expert type and
        shape at 64 tokens (a prefill chunk's per-expert batch), and pinned
        host -> device copies."""
        exps = [t for t in shape.tensors if t.name.endswith("ffn_gate_exps.weight")]
        if not exps:
            return {}
        t = exps[0]
        rows, cols = t.shape[-2], t.shape[-1]
        threads = self._engine.n_threads
        raw = np.zeros(t.nbytes // shape.n_expert, np.uint8)  # one expert's matrix (zero scales: same speed)
        x = np.ones((64, cols), np.float32)
        secs = _core.quant_matmul_time(t.type, raw, rows, cols, x, threads, 3)
        mib256 = 256 << 20
        return {"cpu_gbs": _core.read_bandwidth(mib256, threads, 2),
                "cpu_gmacs": rows * cols * 64 / secs / 1e9,
                "pcie_gbs": mib256 / _core.cuda_upload_time(mib256, 3, device) / 1e9}

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

    @property
    def fingerprint(self) -> int:
        """Hash of the GGUF metadata and tensor table; session files carry it."""
        return self._engine.fingerprint

    def placement(self):
        """The placement in use (pyv4.placement.Placement): on the CPU every
        weight and the KV cache of the full context live in host memory; on a
        GPU the plan the model was loaded with (its experts_on_gpu are the
        routed experts uploaded)."""
        if self._placement is None:
            from .model_shape import from_gguf
            from .placement import cpu_placement

            self._placement = cpu_placement(from_gguf(self.path), ctx=self.n_ctx)
        return self._placement

    def profile(self) -> dict | None:
        """Wall time per op kind summed over every eval since `profile_reset()`,
        when the process runs with PYV4_PROFILE=1 (else None):
        {"ops": {kind: (seconds, calls)}, "total": seconds, "evals": n}. Kinds
        are leaves (matmul.<tensor kind>, attn.*, indexer*, compressor, moe.router,
        mhc, ...); total minus their sum is untracked glue."""
        return self._engine.profile()

    def profile_reset(self) -> None:
        self._engine.profile_reset()

    def new_session(self, kv: str = "fp8", path: str | os.PathLike | None = None) -> "Session":
        """A new, empty session.

        kv: how the KV cache is stored (csrc/kv/qat.h): "fp8" (default; the
        official record: FP8 e4m3 nope dims + BF16 rope dims, FP4 indexer keys,
        with the official QAT rounding), "bf16", or "f32" (exact).
        path: the memory-mapped file that backs the cache; default an unlinked
        temporary file. (This is not a saved session: use `save` for that.)"""
        return Session(self, kv=kv, path=path)

    def eval_batch(self, batch, logits: str = "last") -> list[np.ndarray]:
        """Evaluates several sessions in one forward pass.

        batch: [(session, tokens), ...], distinct sessions of this model, each
        with a non-empty 1-D sequence of ids (a prompt chunk or one decoded
        token: lengths may differ). Every weight matrix is read once for all
        rows, while each session keeps its own KV state and positions, so a
        step for k sessions costs far less than k steps. Returns one logits
        array per item, as `session.eval(tokens, logits)` would (the same bits
        in reference mode; within the int8 activation bound in fast mode,
        where the kernel depends on the batch's row count). Everything is
        validated before any session changes."""
        if logits not in ("all", "last"):
            raise ValueError(f'logits must be "all" or "last", not {logits!r}')
        items = []
        for i, item in enumerate(batch):
            try:
                session, tokens = item
            except (TypeError, ValueError):
                raise ValueError(f"batch item {i} must be a (session, tokens) pair") from None
            if not isinstance(session, Session) or session.model is not self:
                raise ValueError(f"batch item {i}: not a session of this model")
            items.append((session._state, _token_ids(tokens, f"batch item {i}: "), logits == "all"))
        if not items:
            raise ValueError("eval_batch: the batch is empty")
        if self._gpu is None:
            return self._engine.eval_batch(items)
        # The GPU path runs one session at a time: every item is checked as
        # eval_batch checks it before the first one runs.
        for i, (state, ids, _) in enumerate(items):
            if ids.min() < 0 or ids.max() >= self.n_vocab:
                raise ValueError(f"batch item {i}: token ids must be in [0, {self.n_vocab})")
            if state.n_tokens + ids.size > self.n_ctx:
                raise _core.ContextOverflowError(f"batch item {i}: context overflow: the session holds "
                                                 f"{state.n_tokens} tokens, adding {ids.size} would exceed the "
                                                 f"context length {self.n_ctx}")
            if any(state is other for other, _, _ in items[:i]):
                raise ValueError(f"eval_batch: batch item {i} repeats a session")
        return [self._gpu.eval(state, ids, all_logits, self.n_vocab) for state, ids, all_logits in items]

    def prompt_cache(self, directory: str | os.PathLike, max_bytes: int) -> "PromptCache":
        """A directory of saved sessions keyed by their tokens (see PromptCache)."""
        from .prompt_cache import PromptCache

        return PromptCache(self, directory, max_bytes)


class Session:
    """One conversation's state: the tokens seen so far and their KV state."""

    def __init__(self, model: Model, kv: str = "fp8", path: str | os.PathLike | None = None,
                 _state=None):
        self.model = model
        if _state is not None:
            self._state = _state
        else:
            if not isinstance(kv, str):
                raise ValueError(f'kv must be "fp8", "bf16" or "f32", not {kv!r}')
            self._state = model._engine.new_session(kv, os.fspath(path) if path is not None else "")

    @property
    def n_tokens(self) -> int:
        return self._state.n_tokens

    @property
    def kv_type(self) -> str:
        return self._state.kv_type

    @property
    def tokens(self) -> np.ndarray:
        """The token ids evaluated so far (int64)."""
        return self._state.tokens

    def eval(self, tokens, logits: str = "last") -> np.ndarray:
        """Feed `tokens` and return float32 logits: [n, vocab] for logits="all",
        [vocab] for logits="last". Invalid ids raise ValueError and leave the
        session unchanged."""
        if logits not in ("all", "last"):
            raise ValueError(f'logits must be "all" or "last", not {logits!r}')
        m = self.model
        if m._gpu is not None:
            return m._gpu.eval(self._state, _token_ids(tokens), logits == "all", m.n_vocab)
        return m._engine.eval(self._state, _token_ids(tokens), logits == "all")

    def generate(self, tokens, params=None):
        """Feed `tokens`, then sample until EOS, a stop string or max_tokens.
        Yields `pyv4.generate.Chunk(token, text)`; see pyv4/generate.py."""
        from .generate import generate

        return generate(self, tokens, params)

    def reset(self) -> None:
        self._state.reset()

    def fork(self) -> "Session":
        """An independent copy that shares every stored row copy-on-write: cheap
        (no row is copied until one of the two writes into a shared chunk)."""
        return Session(self.model, _state=self._state.fork())

    def truncate(self, n_tokens: int) -> None:
        """Forget every token after the first `n_tokens`. Restores the snapshot
        at or before n_tokens (one is kept every 128 tokens) and re-evaluates at
        most 127 tokens."""
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)):
            raise ValueError(f"n_tokens must be an int, not {n_tokens!r}")
        (self.model._gpu or self.model._engine).truncate(self._state, int(n_tokens))

    def save(self, path: str | os.PathLike) -> None:
        """Write the session to `path` atomically (temp file, fsync, rename)."""
        self.model._engine.save_session(self._state, os.fspath(path))

    @classmethod
    def load(cls, model: Model, path: str | os.PathLike, verify: bool = False) -> "Session":
        """Open a saved session, memory-mapped (no re-prefill). The file must
        come from the same model (fingerprint), else pyv4.FormatError. verify=True
        also checksums the stored rows (O(file size))."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"session file not found: {path}")
        return cls(model, _state=model._engine.load_session(path, bool(verify)))

    def stats(self) -> dict:
        """Sizes and counters: n_tokens, kv_type, kv_bytes (stored window,
        compressed and indexer rows), snapshot_bytes, state_bytes (fp32 rolling
        state), file_bytes, rows per kind, per-layer rows and rows touched by the
        last eval, csa_rows_touched (per CSA layer) and csa_rows_touched_max."""
        return self._state.stats()
