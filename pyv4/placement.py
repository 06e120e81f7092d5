"""Where each byte of a model lives when a GPU helps: the placement planner
(issue #14). Pure arithmetic over a model's shape (pyv4/model_shape.py), the
budgets and the planned context; nothing here touches a GPU.

Placement rules, in order of priority on the GPU:

1. every weight except the routed experts and the embedding (attention,
   compressors, indexer, mHC, norms, router, shared expert, head); the
   embedding table stays in host RAM (one row is gathered per token);
2. the KV cache of the planned context (spec §4.1, record sizes of
   csrc/kv/qat.h): window rings, HCA rows, CSA indexer keys and the fp32
   compressor state must be there; then CSA rows up to the budget (the same
   count in every CSA layer) — the rest stay in the host-mapped arena and only
   the indexer's top-k rows among them cross PCIe per step (the offload
   contract of KVState);
3. routed experts, as many as fit: layer by layer (layer 0's experts first),
   or, given a table of routing counts, the most used (layer, expert) first;
4. everything else stays in host RAM and runs on the CPU kernels.

Reserved on the GPU (`gpu_margin`): 768 MiB for the CUDA context and
allocator slack, plus the activations of one forward pass of 512 tokens
(Engine::kMaxPass: residual streams, queries, attention and indexer scores,
expert hidden states, logits). Not counted: the slots that stream host experts
to the GPU in a prefill (the engine streams only while the device has room for
them left). Reserved in RAM: 4 GiB for the OS and the process. Not counted
against RAM: the MTP block (never run by decode; its pages are never touched)
and the KV snapshots (every 128 tokens; written to the file-backed arena and
read only by truncate), listed as `file`.

Cost model of one decode token at the full planned context (`predict`): every
transfer of B bytes costs B / PCIe bandwidth + 10 µs; GPU work costs the bytes
it reads / the GPU's nominal bandwidth; CPU work the bytes of the routed
experts it runs / the CPU's measured read bandwidth (the CPU kernels stream
at about that, bench/RESULTS.md). Per layer:

    t(l) = [w_pre(l) + kv_read(l)] / B_gpu  +  csa_fetch(l)
           + max( [w_shared(l) + k_gpu(l) · e(l)] / B_gpu ,
                  k_host(l) · e(l) / B_cpu + 2 transfers of the 4·D-byte activation )

w_pre: the layer's attention, compressor, indexer, mHC, norm and router bytes
(one row of a hash table); kv_read: window rows, HCA rows, every indexer key
and the top-k CSA rows; csa_fetch: the expected top-k rows that live on the
host (selection assumed uniform over the rows) as one transfer; e(l): bytes of
one expert; k_host / k_gpu: expected experts per token on each side (k · share
of routing mass). The CPU's experts run while the GPU runs the shared expert
and its own experts (the second term is 0 in a layer with every expert on the
GPU). Plus the head (on the GPU), the embedding row up and the logits down
(sampling runs on the host). The result is a lower bound on real time (no
kernel reaches nominal bandwidth; launch overheads are ignored)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

from .model_shape import ModelShape

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CUDA_RESERVE = 768 * MiB
PREFILL_CHUNK = 512             # Engine::kMaxPass: the tokens of one forward pass
RAM_RESERVE = 4 * GiB
SNAP_EVERY = 128               # KVState::kDefaultSnapEvery
PCIE_LATENCY_S = 10e-6
DEFAULT_PCIE_GBS = 25.0        # PCIe 4.0 x16 as measured by copies, not the 32 GB/s of the spec sheet
KV_TYPES = ("fp8", "bf16", "f32")

_WEIGHTS_ON_GPU = ("head", "attention", "compressor", "indexer", "mhc", "norms", "router", "shared", "other")


class PlacementError(ValueError):
    """A plan that cannot fit; the message names the shortfall and what to change."""


# ---------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------

_BYTE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
               "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40, "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1 << 40}
_NUM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z/]*)\s*$")


def _split(text, what: str) -> tuple[float, str]:
    if isinstance(text, bool):
        raise ValueError(f"{what} must be a number or a string such as '24GiB', not {text!r}")
    if isinstance(text, (int, float)):
        return float(text), ""
    m = _NUM.match(str(text))
    if m is None:
        raise ValueError(f"cannot read {what} {text!r}")
    return float(m.group(1)), m.group(2).lower()


def parse_bytes(text, what: str = "size") -> int:
    """'24GiB' / '24G' (binary), '24GB' (decimal), '512MiB', or a plain number of bytes."""
    v, unit = _split(text, what)
    if unit not in _BYTE_UNITS:
        raise ValueError(f"cannot read {what} {text!r}: unknown unit {unit!r} (use B, MB, GB, MiB, GiB, ...)")
    return int(v * _BYTE_UNITS[unit])


def parse_tokens(text, what: str = "context") -> int:
    """'1M' = 1,048,576 tokens, '128K' / '128k' = 131,072, or a plain count."""
    v, unit = _split(text, what)
    scale = {"": 1, "k": 1024, "m": 1024 * 1024}.get(unit)
    if scale is None:
        raise ValueError(f"cannot read {what} {text!r}: use a count, or K / M (1M = 1,048,576 tokens)")
    return int(v * scale)


def parse_bandwidth(text, what: str = "bandwidth") -> float:
    """GB/s from '3.35TB/s', '900GB/s', '900GiB/s' or a plain number of GB/s."""
    v, unit = _split(text, what)
    scale = {"": 1.0, "gb/s": 1.0, "tb/s": 1000.0, "mb/s": 1e-3, "gib/s": GiB / 1e9, "tib/s": (1 << 40) / 1e9}.get(unit)
    if scale is None or v <= 0:
        raise ValueError(f"cannot read {what} {text!r}: use e.g. 3.35TB/s, 900GB/s or 900 (GB/s)")
    return v * scale


def gib(n: float) -> str:
    return f"{n / GiB:.2f}"


# ---------------------------------------------------------------------------
# KV cache sizes
# ---------------------------------------------------------------------------

def kv_record_bytes(shape: ModelShape, kv: str) -> tuple[int, int]:
    """(main row, indexer key) record bytes of a KV type, as RowCodec::make
    (csrc/kv/qat.cpp) sizes them: fp8 = e4m3 nope dims + bf16 rope dims + one
    UE8M0 scale per 64, padded to 8 (584 B for V4), FP4 keys + a scale per 32,
    padded to 4 (68 B for 128 dims)."""
    d, r, idim = shape.head_dim, shape.rope_dim, shape.index_head_dim
    if kv == "f32":
        return d * 4, idim * 4
    if kv == "bf16":
        return d * 2, idim * 2
    if kv == "fp8":
        nope = d - r
        main = nope + 2 * r + (nope + 63) // 64
        return (main + 7) // 8 * 8, (idim // 2 + idim // 32 + 3) // 4 * 4
    raise ValueError(f'kv must be one of {", ".join(KV_TYPES)}, not {kv!r}')


@dataclass
class LayerKV:
    """One layer's KV cache after `ctx` tokens (what KVState holds)."""
    window: int      # bytes of the window ring
    comp_rows: int   # compressed rows (CSA: ctx/4, HCA: ctx/ratio)
    comp: int        # their bytes
    index: int       # indexer key bytes (CSA)
    state: int       # fp32 compressor rolling state (upper bound)
    snapshots: int   # snapshot records (file-backed)


def layer_kv(shape: ModelShape, layer: int, ctx: int, kv: str) -> LayerKV:
    main, idx = kv_record_bytes(shape, kv)
    ratio = shape.compress_ratio[layer]
    kind = shape.layer_kind(layer)
    rows = ctx // ratio if ratio else 0
    d, idim = shape.head_dim, shape.index_head_dim
    snap = shape.window * main
    state = 0
    if kind == "csa":
        # kv + gate of 2 blocks (overlap carry) at width 2d, and the same for the indexer (spec §4.1)
        state = 2 * (2 * ratio) * (2 * d) * 4 + 2 * (2 * ratio) * (2 * idim) * 4
        aligned = SNAP_EVERY % ratio == 0
        cap = ratio if aligned else 2 * ratio - 1
        snap += 16 + cap * 2 * d * 8 + 16 + cap * 2 * idim * 8
    elif kind == "hca":
        state = 2 * ratio * d * 4
        cap = 0 if SNAP_EVERY % ratio == 0 else ratio - 1
        snap += 16 + cap * d * 8
    return LayerKV(window=min(shape.window, ctx) * main, comp_rows=rows, comp=rows * main,
                   index=rows * idx if kind == "csa" else 0, state=state,
                   snapshots=(ctx // SNAP_EVERY) * snap)


def gpu_margin(shape: ModelShape, ctx: int, chunk: int = PREFILL_CHUNK) -> int:
    """CUDA context + the fp32 activations of one prefill chunk (see the module docstring)."""
    per_token = (2 * 4 * shape.n_embd                                    # residual streams in and out
                 + 2 * shape.n_head * shape.head_dim                      # queries, attention output
                 + shape.n_head * (shape.window + shape.index_topk)       # attention scores
                 + (ctx // 4 if 4 in shape.compress_ratio else 0)         # indexer scores over every key
                 + 2 * (shape.n_expert_used + 1) * shape.n_ff_exp         # expert hidden states
                 + shape.n_vocab)                                         # logits (logits="all")
    return CUDA_RESERVE + chunk * per_token * 4


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------

@dataclass
class Placement:
    """A plan: bytes per category on each side, and what one decode token costs.

    gpu / host / file: category -> bytes ("kv ..." entries are the cache; `file`
    is mapped but not counted against RAM). experts_on_gpu: (layer, first, end)
    ranges of routed experts on the GPU. csa_rows_gpu / csa_rows: CSA rows per
    CSA layer on the GPU / in all. pcie: bytes per decode token by cause.
    ms: predicted ms per decode token by part (None without bandwidths)."""
    model: str
    device: str
    ctx: int
    kv: str
    vram: int
    ram: int | None
    margin: int
    gpu: dict[str, int]
    host: dict[str, int]
    file: dict[str, int]
    experts_on_gpu: list[tuple[int, int, int]]
    experts_gpu_per_layer: list[int]
    n_expert: int
    csa_rows_gpu: int
    csa_rows: int
    gpu_read_per_token: int
    cpu_read_per_token: int
    pcie: dict[str, int]
    bandwidth: dict[str, float | None] = field(default_factory=dict)
    ms: dict[str, float] | None = None

    @property
    def gpu_bytes(self) -> int:
        return sum(self.gpu.values())

    @property
    def host_bytes(self) -> int:
        return sum(self.host.values())

    @property
    def pcie_bytes_per_token(self) -> int:
        return sum(self.pcie.values())

    @property
    def ms_per_token(self) -> float | None:
        return None if self.ms is None else self.ms["total"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(gpu_bytes=self.gpu_bytes, host_bytes=self.host_bytes,
                 pcie_bytes_per_token=self.pcie_bytes_per_token, ms_per_token=self.ms_per_token)
        return d


def load_expert_freq(path, shape: ModelShape):
    """The routing counts [layers, experts] of a file: a numpy .npy array, or a
    GGUF imatrix (`pyv4 imatrix`, llama-imatrix), whose per-expert token counts
    are the routing frequency of its calibration text; a layer it lacks gets
    zeros (planned as uniform). ValueError naming the file when unreadable."""
    import numpy as np

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ValueError(f"cannot read expert frequencies {path}: {e}") from None
    if magic == b"\x93NUM":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read expert frequencies {path}: {e}") from None
    if magic != b"GGUF":
        raise ValueError(f"{path}: neither a .npy array nor a GGUF imatrix (a legacy imatrix file has no per-expert "
                         "counts: use a GGUF one from `pyv4 imatrix` or llama-imatrix --output-format gguf)")
    from .convert.imatrix import expert_counts

    out = np.zeros((shape.n_layer, shape.n_expert))
    for il, c in expert_counts(path).items():  # ConvertError is a ValueError naming the file
        if il >= shape.n_layer or c.size != shape.n_expert:
            raise ValueError(f"{path}: imatrix layer {il} has {c.size} experts; the model has {shape.n_layer} "
                             f"layers of {shape.n_expert} (an imatrix of another model?)")
        out[il] = c
    return out


def _routing_share(shape: ModelShape, expert_freq) -> list[list[float]]:
    """Expected uses per token of each (layer, expert): k · count / Σ counts of the
    layer (counts of selections, so each is <= 1); uniform k / E without a table."""
    k, E, L = shape.n_expert_used, shape.n_expert, shape.n_layer
    if expert_freq is None:
        return [[k / E] * E for _ in range(L)]
    import numpy as np

    f = np.asarray(expert_freq, dtype=np.float64)
    if f.shape != (L, E):
        raise ValueError(f"expert_freq must have shape (layers, experts) = ({L}, {E}), not {f.shape}")
    if not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ValueError("expert_freq must hold finite counts >= 0")
    out = []
    for row in f:
        s = row.sum()
        out.append([k / E] * E if s == 0 else list(k * row / s))
    return out


def _ranges(layer: int, experts: list[int]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for e in sorted(experts):
        if out and out[-1][2] == e:
            out[-1] = (layer, out[-1][1], e + 1)
        else:
            out.append((layer, e, e + 1))
    return out


def _read_bytes(t) -> int:
    """Bytes of a weight one decode token reads: one row of a lookup table
    (embedding, hash routing), the whole matrix otherwise."""
    if t.category == "embed" or "tid2eid" in t.name:
        return t.nbytes // max(1, t.shape[0])
    return t.nbytes


def _check_common(shape: ModelShape, ctx: int, kv: str) -> None:
    kv_record_bytes(shape, kv)
    if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 1:
        raise ValueError(f"ctx must be a positive number of tokens, not {ctx!r}")
    if ctx > shape.n_ctx:
        raise PlacementError(f"ctx {ctx} exceeds the model's context of {shape.n_ctx} tokens; plan a shorter --ctx")


def plan(shape: ModelShape, vram: int, ram: int | None = None, ctx: int | None = None, kv: str = "fp8",
         expert_freq=None, gpu_gbs: float | None = None, cpu_gbs: float | None = None,
         pcie_gbs: float = DEFAULT_PCIE_GBS, device: str = "cuda:0",
         max_gpu_experts: int | None = None) -> Placement:
    """The placement of `shape` on a GPU with `vram` bytes (the margin is taken
    out of it) and a host with `ram` bytes (None: not checked), for `ctx` tokens
    (default: the model's context). expert_freq: optional [layers, experts]
    routing counts; the most used experts then go first. Raises PlacementError
    when the plan cannot fit. ms per token is predicted when both gpu_gbs and
    cpu_gbs are given. max_gpu_experts: at most this many routed experts of
    a layer on the GPU (0: every routed expert on the host; None: no limit)."""
    ctx = shape.n_ctx if ctx is None else ctx
    _check_common(shape, ctx, kv)
    if vram <= 0:
        raise ValueError(f"vram must be positive, not {vram}")
    if max_gpu_experts is not None and (isinstance(max_gpu_experts, bool) or not isinstance(max_gpu_experts, int)
                                        or max_gpu_experts < 0):
        raise ValueError(f"max_gpu_experts must be a non-negative int or None, not {max_gpu_experts!r}")
    share = _routing_share(shape, expert_freq)
    margin = gpu_margin(shape, ctx)
    avail = vram - margin
    kvs = [layer_kv(shape, il, ctx, kv) for il in range(shape.n_layer)]
    csa = [il for il in range(shape.n_layer) if shape.layer_kind(il) == "csa"]
    hca = [il for il in range(shape.n_layer) if shape.layer_kind(il) == "hca"]

    gpu = {c: shape.bytes_of(c) for c in _WEIGHTS_ON_GPU}
    gpu = {c: b for c, b in gpu.items() if b}
    gpu.update({"kv window": sum(x.window for x in kvs), "kv hca": sum(kvs[il].comp for il in hca),
                "kv indexer": sum(x.index for x in kvs), "kv state": sum(x.state for x in kvs)})
    need = sum(gpu.values())
    if need > avail:
        kv_part = need - sum(shape.bytes_of(c) for c in _WEIGHTS_ON_GPU)
        raise PlacementError(
            f"does not fit: the GPU needs {gib(need + margin)} GiB for the weights other than the routed experts "
            f"({gib(need - kv_part)} GiB), the KV cache that must live there at ctx {ctx} ({gib(kv_part)} GiB: "
            f"windows, HCA rows, indexer keys) and the reserve ({gib(margin)} GiB), but vram is {gib(vram)} GiB: "
            f"short by {gib(need - avail)} GiB. Use more --vram, a shorter --ctx, or a recipe with smaller "
            f"non-expert weights (q8 and q4 store them as Q8_0)")
    rem = avail - need

    main_rec = kv_record_bytes(shape, kv)[0]
    csa_rows = kvs[csa[0]].comp_rows if csa else 0
    csa_gpu = min(csa_rows, rem // (len(csa) * main_rec)) if csa else 0
    gpu["kv csa"] = csa_gpu * len(csa) * main_rec
    rem -= gpu["kv csa"]

    if expert_freq is None:
        order = [(il, e) for il in range(shape.n_layer) for e in range(shape.n_expert)]
    else:
        order = sorted(((il, e) for il in range(shape.n_layer) for e in range(shape.n_expert)),
                       key=lambda le: (-share[le[0]][le[1]], le[0], le[1]))
    on_gpu: list[list[int]] = [[] for _ in range(shape.n_layer)]
    ebytes = [shape.expert_bytes(il) for il in range(shape.n_layer)]
    for il, e in order:
        if (0 < ebytes[il] <= rem
                and (max_gpu_experts is None or len(on_gpu[il]) < max_gpu_experts)):
            on_gpu[il].append(e)
            rem -= ebytes[il]
    gpu["experts"] = sum(len(on_gpu[il]) * ebytes[il] for il in range(shape.n_layer))

    host = {"embed": shape.bytes_of("embed"), "experts": shape.bytes_of("experts") - gpu["experts"],
            "kv csa": (csa_rows - csa_gpu) * len(csa) * main_rec}
    if ram is not None and host_need(host) > ram:
        short = host_need(host) - ram
        raise PlacementError(
            f"does not fit: the host needs {gib(host_need(host))} GiB (routed experts not on the GPU "
            f"{gib(host['experts'])} GiB, embedding {gib(host['embed'])} GiB, CSA rows {gib(host['kv csa'])} GiB, "
            f"{gib(RAM_RESERVE)} GiB for the system) but ram is {gib(ram)} GiB: short by {gib(short)} GiB. "
            f"Use more --ram, more --vram (each GiB there takes a GiB of experts off the host)"
            + (", a shorter --ctx (its CSA rows take GPU memory the experts could use)" if csa_gpu else "")
            + ", or smaller routed experts (the converter's recipe q2 stores them at 2.06-2.63 bits a "
            "weight, q2q4 likewise but for the last 6 layers: `pyv4 convert --recipe q2 --imatrix FILE`, "
            "or `pyv4 requantize` of an existing GGUF)")
    p = Placement(
        model=shape.name, device=device, ctx=ctx, kv=kv, vram=vram, ram=ram, margin=margin,
        gpu={c: b for c, b in gpu.items() if b}, host={c: b for c, b in host.items() if b},
        file=_file_part(shape, kvs),
        experts_on_gpu=[r for il in range(shape.n_layer) for r in _ranges(il, on_gpu[il])],
        experts_gpu_per_layer=[len(x) for x in on_gpu], n_expert=shape.n_expert,
        csa_rows_gpu=csa_gpu, csa_rows=csa_rows, gpu_read_per_token=0, cpu_read_per_token=0, pcie={})
    _cost(p, shape, kvs, share, on_gpu, gpu_gbs, cpu_gbs, pcie_gbs)
    return p


def host_need(host: dict[str, int]) -> int:
    """RAM a plan's host part needs: its bytes plus the system reserve."""
    return sum(host.values()) + RAM_RESERVE


def _file_part(shape: ModelShape, kvs: list[LayerKV]) -> dict[str, int]:
    f = {"mtp": shape.bytes_of("mtp"), "kv snapshots": sum(x.snapshots for x in kvs)}
    return {c: b for c, b in f.items() if b}


def cpu_placement(shape: ModelShape, ctx: int | None = None, kv: str = "fp8",
                  cpu_gbs: float | None = None) -> Placement:
    """Everything in host RAM, computed by the CPU kernels (device "cpu")."""
    ctx = shape.n_ctx if ctx is None else ctx
    _check_common(shape, ctx, kv)
    kvs = [layer_kv(shape, il, ctx, kv) for il in range(shape.n_layer)]
    host = {c: shape.bytes_of(c) for c in _WEIGHTS_ON_GPU + ("embed", "experts")}
    host.update({"kv window": sum(x.window for x in kvs), "kv state": sum(x.state for x in kvs),
                 "kv hca": sum(x.comp for il, x in enumerate(kvs) if shape.layer_kind(il) == "hca"),
                 "kv csa": sum(x.comp for il, x in enumerate(kvs) if shape.layer_kind(il) == "csa"),
                 "kv indexer": sum(x.index for x in kvs)})
    csa = [il for il in range(shape.n_layer) if shape.layer_kind(il) == "csa"]
    p = Placement(
        model=shape.name, device="cpu", ctx=ctx, kv=kv, vram=0, ram=None, margin=0, gpu={},
        host={c: b for c, b in host.items() if b}, file=_file_part(shape, kvs), experts_on_gpu=[],
        experts_gpu_per_layer=[0] * shape.n_layer, n_expert=shape.n_expert, csa_rows_gpu=0,
        csa_rows=kvs[csa[0]].comp_rows if csa else 0, gpu_read_per_token=0, cpu_read_per_token=0, pcie={})
    _cost(p, shape, kvs, _routing_share(shape, None), [[] for _ in range(shape.n_layer)], None, cpu_gbs, None)
    return p


# ---------------------------------------------------------------------------
# Cost of one decode token (the model is in the module docstring)
# ---------------------------------------------------------------------------

@dataclass
class _LayerToken:
    """What one decode token reads and moves in one layer."""
    pre: int          # weights before the MoE split (attention ... router)
    kv_read: int      # cached rows read
    shared: int       # the shared expert
    expert: int       # bytes of one routed expert
    k_gpu: float      # expected routed experts per token on the GPU
    k_host: float     # ... on the host
    csa_host: float   # expected bytes of top-k CSA rows fetched from the host


def _layer_tokens(p: Placement, shape: ModelShape, kvs: list[LayerKV], share, on_gpu) -> list[_LayerToken]:
    main_rec = kv_record_bytes(shape, p.kv)[0]
    pre = [0] * shape.n_layer
    shared = [0] * shape.n_layer
    for t in shape.tensors:
        if t.layer is not None and t.category == "shared":
            shared[t.layer] += t.nbytes
        elif t.layer is not None and t.category != "experts":
            pre[t.layer] += _read_bytes(t)
    host_frac = 1 - p.csa_rows_gpu / p.csa_rows if p.csa_rows and p.device != "cpu" else 0.0
    out = []
    for il, x in enumerate(kvs):
        topk = min(shape.index_topk, x.comp_rows) if shape.layer_kind(il) == "csa" else x.comp_rows
        k_gpu = sum(share[il][j] for j in on_gpu[il])
        # the host's share; a layer whose host experts are never routed to needs no round trip
        k_host = max(0.0, shape.n_expert_used - k_gpu) if len(on_gpu[il]) < shape.n_expert else 0.0
        out.append(_LayerToken(pre=pre[il], kv_read=x.window + x.index + topk * main_rec, shared=shared[il],
                               expert=shape.expert_bytes(il), k_gpu=k_gpu, k_host=k_host if k_host > 1e-9 else 0.0,
                               csa_host=topk * host_frac * main_rec))
    return out


def _cost(p: Placement, shape: ModelShape, kvs: list[LayerKV], share, on_gpu, gpu_gbs, cpu_gbs, pcie_gbs) -> None:
    """Fills the per-token bytes, PCIe traffic and (given bandwidths) ms of `p`."""
    layers = _layer_tokens(p, shape, kvs, share, on_gpu)
    head = sum(t.nbytes for t in shape.tensors if t.layer is None and t.category in ("head", "other"))
    embed_row = sum(_read_bytes(t) for t in shape.tensors if t.category == "embed")
    act = 4 * shape.n_embd  # one fp32 activation vector
    experts_host = sum(x.k_host * x.expert for x in layers)
    dense = head + sum(x.pre + x.kv_read + x.shared + x.k_gpu * x.expert for x in layers)
    p.bandwidth = {"gpu_gbs": gpu_gbs, "cpu_gbs": cpu_gbs, "pcie_gbs": pcie_gbs}
    if p.device == "cpu":
        p.gpu_read_per_token, p.cpu_read_per_token, p.pcie = 0, int(embed_row + dense + experts_host), {}
        p.bandwidth.update(gpu_gbs=None, pcie_gbs=None)
        if cpu_gbs:
            ms = p.cpu_read_per_token / (cpu_gbs * 1e9) * 1e3
            p.ms = {"gpu": 0.0, "cpu": ms, "pcie": 0.0, "total": ms}
        return
    p.gpu_read_per_token, p.cpu_read_per_token = int(dense), int(embed_row + experts_host)
    p.pcie = {"embedding row": embed_row, "logits": 4 * shape.n_vocab,
              "expert activations": sum(2 * act for x in layers if x.k_host),
              "csa rows": round(sum(x.csa_host for x in layers))}
    if not (gpu_gbs and cpu_gbs and pcie_gbs):
        return

    def xfer(nbytes: float) -> float:
        return nbytes / (pcie_gbs * 1e9) + PCIE_LATENCY_S if nbytes else 0.0

    t_gpu = t_cpu = t_pcie = 0.0
    t_total = head / (gpu_gbs * 1e9) + xfer(embed_row) + xfer(4 * shape.n_vocab)
    for x in layers:
        tg_pre = (x.pre + x.kv_read) / (gpu_gbs * 1e9)
        tg_moe = (x.shared + x.k_gpu * x.expert) / (gpu_gbs * 1e9)
        tc = x.k_host * x.expert / (cpu_gbs * 1e9)
        tx_act = 2 * xfer(act) if x.k_host else 0.0
        t_gpu += tg_pre + tg_moe
        t_cpu += tc
        t_pcie += xfer(x.csa_host) + tx_act
        t_total += tg_pre + xfer(x.csa_host) + max(tg_moe, tc + tx_act)
    p.ms = {"gpu": (t_gpu + head / (gpu_gbs * 1e9)) * 1e3, "cpu": t_cpu * 1e3,
            "pcie": (t_pcie + xfer(embed_row) + xfer(4 * shape.n_vocab)) * 1e3, "total": t_total * 1e3}
