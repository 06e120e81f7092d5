"""The placement planner of issue #14 (pyv4/placement.py, pyv4/model_shape.py,
`pyv4 plan`) and the device API (`Model(device=, vram=)`, pyv4/device.py):
budgets are never exceeded, V4-Flash plans against the spec's own sizes,
refused plans name a shortfall that is exactly right, routing counts put the
hottest experts first, shapes read from real files agree with their bytes, KV
sizes agree with a real session's, and CUDA requests fail clearly on a build
without it."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import gguf
import numpy as np
import pytest

import pyv4
from pyv4 import _core
from pyv4 import placement as pl
from pyv4.cli import main as pyv4_main
from pyv4.demo import DEMO_CONFIG
from pyv4.model_shape import _implausible, builtin, from_config, from_gguf
from pyv4.synthetic import write_random_gguf_typed

# Whether this machine has a usable GPU (tests/test_cuda_model.py runs models there).
_REAL_CUDA = _core.cuda_available()[0]

GiB = pl.GiB
# small, every layer kind, dims that fit MXFP4 / Q8_0 blocks and the fp8 KV codecs
TINY = {**DEMO_CONFIG, "vocab_size": 512, "sliding_window": 16, "max_position_embeddings": 4096}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("placement") / "tiny-mxfp4.gguf"
    write_random_gguf_typed(path, TINY, None, recipe="mxfp4", seed=7)
    return path


@pytest.fixture(scope="module")
def flash():
    return builtin("v4-flash")


def _short_by(msg: str) -> float:
    m = re.search(r"short by ([0-9.]+) GiB", msg)
    assert m, msg
    return float(m.group(1))


# ---------------------------------------------------------------- units


def test_size_parsing():
    assert pl.parse_bytes("24GiB") == 24 * GiB == pl.parse_bytes("24G") == pl.parse_bytes("24 gib")
    assert pl.parse_bytes("24GB") == 24 * 10**9
    assert pl.parse_bytes("1.5GiB") == 3 * GiB // 2
    assert pl.parse_bytes(4096) == pl.parse_bytes("4096") == 4096
    assert pl.parse_tokens("1M") == 1 << 20 and pl.parse_tokens("128K") == pl.parse_tokens("128k") == 131072
    assert pl.parse_tokens("5000") == 5000
    assert pl.parse_bandwidth("3.35TB/s") == pytest.approx(3350) and pl.parse_bandwidth("900GB/s") == 900
    assert pl.parse_bandwidth("900") == 900 and pl.parse_bandwidth("1GiB/s") == pytest.approx(1.073741824)
    for bad in ("24XB", "GiB", "", "-3GiB", True):
        with pytest.raises(ValueError):
            pl.parse_bytes(bad)
    for bad in ("1G", "k", "1.2.3"):
        with pytest.raises(ValueError):
            pl.parse_tokens(bad)
    for bad in ("0", "3 furlongs/s"):
        with pytest.raises(ValueError):
            pl.parse_bandwidth(bad)


# ---------------------------------------------------------------- V4-Flash against the spec's sizes


def test_flash_shape_matches_the_spec(flash):
    q8 = 34 / 32  # Q8_0 bytes per value
    L = 43
    assert flash.n_layer == L and flash.compress_ratio.count(4) == 21 and flash.compress_ratio.count(128) == 20
    # spec §5.2: wq_a, wq_b, wkv, wo_a, wo_b (FP8 -> Q8_0) and the F32 sinks
    attn = (1024 * 4096 + 32768 * 1024 + 512 * 4096 + 8192 * 4096 + 4096 * 8192) * q8 + 64 * 4
    assert flash.bytes_of("attention") == L * attn
    assert flash.bytes_of("experts") == L * 256 * 3 * 2048 * 4096 * 17 // 32  # MXFP4: 17 B per 32
    assert flash.bytes_of("shared") == L * 3 * 2048 * 4096 * q8
    assert flash.bytes_of("embed") == flash.bytes_of("head") - 4096 * 4 - (4 * 16384 + 4 + 1) * 4 == 129280 * 4096 * 2
    assert flash.expert_bytes(7) == 3 * 2048 * 4096 * 17 // 32


def test_flash_kv_at_1m_matches_spec_4_3(flash):
    T = 1 << 20
    assert pl.kv_record_bytes(flash, "fp8") == (584, 68)
    assert pl.kv_record_bytes(flash, "bf16") == (1024, 256) and pl.kv_record_bytes(flash, "f32") == (2048, 512)
    p = pl.plan(flash, 200 * GiB, None, T)
    assert p.gpu["kv csa"] == 21 * 262144 * 584            # 3,214.9 MB
    assert p.gpu["kv indexer"] == 21 * 262144 * 68         # 374.3 MB
    assert p.gpu["kv hca"] == 20 * 8192 * 584              # 95.7 MB
    assert p.gpu["kv window"] == 43 * 128 * 584            # 3.2 MB
    total = sum(v for k, v in p.gpu.items() if k.startswith("kv ") and k != "kv state")
    assert total / 1e9 == pytest.approx(3.69, abs=0.005)   # "3.69 GB (3.44 GiB)"


CARDS = (24, 32, 48, 80, 96)


@pytest.mark.parametrize("ctx", [1 << 20, 1 << 17])
def test_flash_plans_for_the_cards_are_monotone(flash, ctx):
    plans = [pl.plan(flash, v * GiB, 256 * GiB, ctx, gpu_gbs=1000, cpu_gbs=100) for v in CARDS]
    non_expert = sum(flash.bytes_of(c) for c in ("head", "attention", "compressor", "indexer", "mhc", "norms",
                                                 "router", "shared"))
    for v, p in zip(CARDS, plans):
        assert p.gpu_bytes + p.margin <= v * GiB
        assert p.gpu_bytes - p.gpu["experts"] - sum(b for k, b in p.gpu.items() if k.startswith("kv ")) == non_expert
        assert p.host["embed"] == flash.bytes_of("embed") and "embed" not in p.gpu
        assert p.csa_rows_gpu == p.csa_rows == ctx // 4     # the whole cache fits from 24 GiB on
        # greedy: no further expert would have fit
        assert v * GiB - p.margin - p.gpu_bytes < flash.expert_bytes(0)
    for a, b in zip(plans, plans[1:]):
        assert sum(b.experts_gpu_per_layer) > sum(a.experts_gpu_per_layer)
        assert b.pcie_bytes_per_token < a.pcie_bytes_per_token
        assert b.cpu_read_per_token < a.cpu_read_per_token
        assert b.ms_per_token < a.ms_per_token
    # by layer: whole layers from layer 0, at most one partial layer
    for p in plans:
        n = p.experts_gpu_per_layer
        full = sum(1 for x in n if x == 256)
        assert n[:full] == [256] * full and sum(1 for x in n if 0 < x < 256) <= 1 and not any(n[full + 1:])


def test_flash_24gib_at_1m_needs_more_than_128gib_of_ram(flash):
    with pytest.raises(pl.PlacementError) as e:
        pl.plan(flash, 24 * GiB, 128 * GiB, 1 << 20)
    msg = str(e.value)
    assert "--ram" in msg and "--vram" in msg and "--ctx" in msg
    short = _short_by(msg)
    pl.plan(flash, 24 * GiB, int((128 + short + 0.01) * GiB), 1 << 20)
    with pytest.raises(pl.PlacementError):
        pl.plan(flash, 24 * GiB, int((128 + short - 0.01) * GiB), 1 << 20)


# ---------------------------------------------------------------- budgets


def _check_invariants(shape, p, vram, ram):
    assert p.gpu_bytes + p.margin <= vram
    if ram is not None:
        assert pl.host_need(p.host) <= ram
    assert all(b > 0 for b in list(p.gpu.values()) + list(p.host.values()))
    # every byte is somewhere, once
    weights = sum(t.nbytes for t in shape.tensors if t.category != "mtp")
    kv_gpu = sum(b for k, b in p.gpu.items() if k.startswith("kv "))
    kv_host = sum(b for k, b in p.host.items() if k.startswith("kv "))
    assert p.gpu_bytes - kv_gpu + p.host_bytes - kv_host == weights
    main = pl.kv_record_bytes(shape, p.kv)[0]
    n_csa = shape.compress_ratio.count(4)
    assert p.gpu.get("kv csa", 0) + p.host.get("kv csa", 0) == n_csa * p.csa_rows * main
    assert p.gpu.get("kv csa", 0) == n_csa * p.csa_rows_gpu * main
    # the expert ranges and the counts agree, and are what the GPU holds
    per_layer = [0] * shape.n_layer
    for il, a, b in p.experts_on_gpu:
        assert 0 <= a < b <= shape.n_expert
        per_layer[il] += b - a
    assert per_layer == p.experts_gpu_per_layer
    assert p.gpu.get("experts", 0) == sum(n * shape.expert_bytes(il) for il, n in enumerate(per_layer))
    # the CSA rows come before any expert
    assert p.csa_rows_gpu == p.csa_rows or not p.experts_on_gpu
    if p.ms is not None:
        assert 0 < p.ms["total"] <= p.ms["gpu"] + p.ms["cpu"] + p.ms["pcie"] + 1e-9
        assert p.ms["total"] >= max(p.ms["gpu"], p.ms["cpu"]) - 1e-9


@pytest.mark.parametrize("name", ["v4-flash", "v4-pro"])
def test_budgets_are_never_exceeded(name):
    shape = builtin(name)
    rng = np.random.default_rng(11)
    fitted = refused = 0
    for i in range(150):
        vram = int(rng.uniform(4, 200) * GiB)
        ram = None if i % 5 == 0 else int(rng.uniform(16, 1024) * GiB)
        ctx = int(rng.choice([1, 100, 4096, 65536, 1 << 20, int(rng.integers(1, 1 << 20))]))
        kv = str(rng.choice(pl.KV_TYPES))
        try:
            p = pl.plan(shape, vram, ram, ctx, kv=kv, gpu_gbs=float(rng.uniform(500, 4000)),
                        cpu_gbs=float(rng.uniform(20, 400)))
        except pl.PlacementError as e:
            refused += 1
            assert "short by" in str(e)
            continue
        fitted += 1
        _check_invariants(shape, p, vram, ram)
    assert fitted > 20 and refused > 5  # the sweep covers both outcomes


def test_vram_sweep_on_the_tiny_file(tiny):
    shape = from_gguf(str(tiny))
    prev = -1
    refused = 0
    for vram in range(1, 600):  # in 4 KiB steps above the reserve
        v = pl.gpu_margin(shape, 4096) + vram * 4096
        try:
            p = pl.plan(shape, v, 8 * GiB, 4096)
        except pl.PlacementError:
            refused += 1
            assert prev == -1  # only the smallest budgets are refused
            continue
        _check_invariants(shape, p, v, 8 * GiB)
        n = sum(p.experts_gpu_per_layer)
        assert n >= prev
        prev = n
    assert refused > 0 and prev == shape.n_layer * shape.n_expert  # it ends with everything on the GPU


def test_refused_vram_names_the_exact_shortfall(flash):
    with pytest.raises(pl.PlacementError) as e:
        pl.plan(flash, 8 * GiB, None, 1 << 20)
    msg = str(e.value)
    assert msg.count("\n") == 0 and "--vram" in msg and "--ctx" in msg and "recipe" in msg
    short = _short_by(msg)
    assert short > 0
    pl.plan(flash, int((8 + short + 0.01) * GiB), None, 1 << 20)
    with pytest.raises(pl.PlacementError):
        pl.plan(flash, int((8 + short - 0.01) * GiB), None, 1 << 20)
    # a shorter context needs less: the must-stay KV and the indexer scores scale with it
    assert _short_by(str(pytest.raises(pl.PlacementError, pl.plan, flash, 8 * GiB, None, 4096).value)) < short


def test_bad_plan_arguments(flash):
    with pytest.raises(pl.PlacementError, match="exceeds the model's context"):
        pl.plan(flash, 80 * GiB, None, (1 << 20) + 1)
    for kwargs in ({"ctx": 0}, {"kv": "fp4"}, {"ctx": 1.5}):
        with pytest.raises(ValueError):
            pl.plan(flash, 80 * GiB, None, **{"ctx": 4096, **kwargs})
    with pytest.raises(ValueError):
        pl.plan(flash, 0, None, 4096)
    with pytest.raises(ValueError, match="unknown built-in"):
        builtin("v5")
    with pytest.raises(ValueError, match="unknown recipe"):
        builtin("v4-flash", "q3")


def test_max_gpu_experts_caps_each_layer(tiny):
    shape = from_gguf(str(tiny))
    full = pl.plan(shape, 1 << 40, None, 4096)
    assert sum(full.experts_gpu_per_layer) == shape.n_layer * shape.n_expert
    for cap in (0, 2):
        p = pl.plan(shape, 1 << 40, None, 4096, max_gpu_experts=cap)
        assert p.experts_gpu_per_layer == [cap] * shape.n_layer
        assert [(il, a, b) for il, a, b in p.experts_on_gpu] == [(il, 0, cap) for il in range(shape.n_layer)] * (cap > 0)
        assert p.host["experts"] == sum((shape.n_expert - cap) * shape.expert_bytes(il) for il in range(shape.n_layer))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_gpu_experts"):
            pl.plan(shape, 1 << 40, None, 4096, max_gpu_experts=bad)


# ---------------------------------------------------------------- routing counts


def test_routing_counts_put_the_hottest_experts_first(tiny):
    shape = from_gguf(str(tiny))
    L, E = shape.n_layer, shape.n_expert
    rng = np.random.default_rng(3)
    freq = rng.integers(0, 1000, (L, E)).astype(float)
    freq[L - 1, 5] = 10**6  # one very hot expert in the last layer
    base = pl.plan(shape, 1 << 40, None, 4096)
    room = base.gpu_bytes - base.gpu["experts"] + base.margin  # vram with no expert on the GPU
    n = 10
    vram = room + n * shape.expert_bytes(0)
    hot = pl.plan(shape, vram, None, 4096, expert_freq=freq, gpu_gbs=1000, cpu_gbs=50)
    by_layer = pl.plan(shape, vram, None, 4096, gpu_gbs=1000, cpu_gbs=50)
    share = freq / freq.sum(axis=1, keepdims=True)
    want = sorted(((il, e) for il in range(L) for e in range(E)), key=lambda le: (-share[le], le))[:n]
    got = [(il, e) for il, a, b in hot.experts_on_gpu for e in range(a, b)]
    assert sorted(got) == sorted(want) and (L - 1, 5) in got
    assert [(il, e) for il, a, b in by_layer.experts_on_gpu for e in range(a, b)] == \
        [(il, e) for il in range(L) for e in range(E)][:n]
    # both place n experts; the plan that knows the routing runs fewer expert bytes on the CPU
    assert sum(hot.experts_gpu_per_layer) == sum(by_layer.experts_gpu_per_layer) == n
    assert hot.cpu_read_per_token < by_layer.cpu_read_per_token
    # a uniform table is the same as none
    flat = pl.plan(shape, vram, None, 4096, expert_freq=np.ones((L, E)))
    assert flat.experts_on_gpu == by_layer.experts_on_gpu
    for bad in (np.ones((L, E + 1)), -np.ones((L, E)), np.full((L, E), np.nan)):
        with pytest.raises(ValueError, match="expert_freq"):
            pl.plan(shape, vram, None, 4096, expert_freq=bad)


def test_plan_command_reads_routing_counts(tiny, tmp_path, capsys):
    shape = from_gguf(str(tiny))
    L, E = shape.n_layer, shape.n_expert
    freq = np.ones((L, E))
    freq[L - 1, [2, 6]] = 50.0
    np.save(tmp_path / "freq.npy", freq)
    room = pl.plan(shape, 1 << 40, None, 4096)
    vram = room.gpu_bytes - room.gpu["experts"] + room.margin + 2 * shape.expert_bytes(0)
    args = ["plan", str(tiny), "--vram", str(vram), "--ram", "8GiB", "--ctx", "4096", "--cpu-bandwidth", "10",
            "--json"]
    assert pyv4_main(args + ["--expert-freq", str(tmp_path / "freq.npy")]) == 0
    assert json.loads(capsys.readouterr().out)["experts_on_gpu"] == [[L - 1, 2, 3], [L - 1, 6, 7]]
    assert pyv4_main(args) == 0
    assert json.loads(capsys.readouterr().out)["experts_on_gpu"] == [[0, 0, 2]]
    np.save(tmp_path / "wrong.npy", np.ones((L + 1, E)))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    for f, msg in (("wrong.npy", "shape"), ("junk.npy", "neither a .npy array nor a GGUF imatrix"),
                   ("none.npy", "cannot read expert frequencies")):
        assert pyv4_main(args + ["--expert-freq", str(tmp_path / f)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err


def test_routing_counts_from_an_imatrix(tiny, tmp_path, capsys):
    # the per-expert token counts of a GGUF imatrix (pyv4 imatrix / llama-imatrix)
    # are routing counts: `pyv4 plan --expert-freq FILE.imatrix` places the experts
    # they make hottest first; layers the file lacks plan as uniform
    from pyv4.imatrix import write_gguf

    shape = from_gguf(str(tiny))
    L, E, cols = shape.n_layer, shape.n_expert, shape.n_embd
    counts = np.full(E, 3.0)
    counts[[2, 6]] = 400.0
    entries = [(f"blk.{L - 1}.ffn_{k}_exps.weight", np.ones((E, cols)), counts) for k in ("gate", "up")]
    entries.append((f"blk.{L - 1}.ffn_down_exps.weight", np.ones((E, cols)), counts[::-1].copy()))
    entries.append((f"blk.{L - 1}.attn_q_a.weight", np.ones((1, cols)), np.array([50.0])))
    write_gguf(tmp_path / "cal.imatrix", entries, "cal.txt", 4, 512)
    freq = pl.load_expert_freq(tmp_path / "cal.imatrix", shape)
    assert freq.shape == (L, E) and not freq[:L - 1].any()
    assert np.array_equal(freq[L - 1], counts)  # the gate's counts, not the down's
    room = pl.plan(shape, 1 << 40, None, 4096)
    vram = room.gpu_bytes - room.gpu["experts"] + room.margin + 2 * shape.expert_bytes(0)
    args = ["plan", str(tiny), "--vram", str(vram), "--ram", "8GiB", "--ctx", "4096", "--cpu-bandwidth", "10",
            "--json", "--expert-freq"]
    assert pyv4_main(args + [str(tmp_path / "cal.imatrix")]) == 0
    assert json.loads(capsys.readouterr().out)["experts_on_gpu"] == [[L - 1, 2, 3], [L - 1, 6, 7]]
    # refused, naming the file and why: a legacy .dat (no per-expert counts), an
    # imatrix of another model's expert count, one without expert entries
    (tmp_path / "old.dat").write_bytes(b"\x01\x00\x00\x00")
    write_gguf(tmp_path / "other.imatrix", [("blk.0.ffn_gate_exps.weight", np.ones((E + 1, cols)),
                                            np.ones(E + 1))], "x", 1, 512)
    write_gguf(tmp_path / "dense.imatrix", entries[-1:], "x", 1, 512)
    for f, msg in (("old.dat", "legacy imatrix file has no per-expert counts"),
                   ("other.imatrix", "another model"), ("dense.imatrix", "no routed-expert entries")):
        assert pyv4_main(args + [str(tmp_path / f)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err and f in err, err
    with pytest.raises(ValueError, match="expert_freq applies to a CUDA device"):
        pyv4.Model(tiny, expert_freq=tmp_path / "cal.imatrix")


# ---------------------------------------------------------------- real files


def test_shape_from_a_file_agrees_with_its_bytes(tiny):
    shape = from_gguf(str(tiny))
    r = gguf.GGUFReader(str(tiny))  # an independent reader
    assert {t.name: int(t.n_bytes) for t in r.tensors} == {t.name: t.nbytes for t in shape.tensors}
    assert not [t.name for t in shape.tensors if t.category == "other"]
    for il in range(shape.n_layer):
        exps = [t for t in r.tensors if t.name.startswith(f"blk.{il}.ffn_") and "_exps" in t.name]
        assert len(exps) == 3 and shape.expert_bytes(il) * shape.n_expert == sum(int(t.n_bytes) for t in exps)
    # the converter-recipe shape of the same config is exactly the file's table
    assert from_config(TINY, "mxfp4").tensors == shape.tensors
    # a plan with room for everything holds every byte of the file on the GPU but the embedding
    p = pl.plan(shape, 1 << 40, None, 4096)
    weights_gpu = p.gpu_bytes - sum(b for k, b in p.gpu.items() if k.startswith("kv "))
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    assert weights_gpu + int(emb.n_bytes) == sum(int(t.n_bytes) for t in r.tensors)


def test_files_the_planner_cannot_use(tiny, tmp_path):
    def write(name, arch, keys):
        w = gguf.GGUFWriter(str(tmp_path / name), arch=arch)
        for k, v in keys.items():
            w.add_uint32(k, v)
        w.add_tensor("x", np.zeros(4, np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return str(tmp_path / name)

    with pytest.raises(pyv4.FormatError, match="not 'deepseek4'"):
        from_gguf(write("llama.gguf", "llama", {}))
    with pytest.raises(pyv4.FormatError, match=r"metadata key 'deepseek4\.[a-z_.]+' is missing"):
        from_gguf(write("partial.gguf", "deepseek4", {"deepseek4.block_count": 2}))
    good = from_gguf(str(tiny))
    assert _implausible(good) is None
    for change, msg in (({"n_expert_used": 0}, "expert_used_count"), ({"n_expert_used": 9}, "expert_used_count"),
                        ({"window": 0}, "positive"), ({"compress_ratio": (0, 1, 128, 4, 128, 0)}, "ratios"),
                        ({"index_topk": 0}, "indexer"),
                        ({"tensors": tuple(t for t in good.tensors if t.name != "blk.3.ffn_up_exps.weight"
                                           and t.name != "blk.3.ffn_gate_exps.weight"
                                           and t.name != "blk.3.ffn_down_exps.weight")}, "layer 3")):
        assert msg in _implausible(dataclasses.replace(good, **change))


@pytest.mark.parametrize("kv", pl.KV_TYPES)
def test_kv_sizes_agree_with_a_real_session(tiny, kv):
    model = pyv4.Model(tiny, threads=1)
    shape = from_gguf(str(tiny))
    sess = model.new_session(kv=kv)
    for n in (5, 300):
        sess.reset()
        sess.eval(np.arange(n) % 500 + 3)
        st = sess.stats()
        kvs = [pl.layer_kv(shape, il, n, kv) for il in range(shape.n_layer)]
        assert st["kv_bytes"] == sum(x.window + x.comp + x.index for x in kvs)
        assert st["snapshot_bytes"] == sum(x.snapshots for x in kvs)
        assert st["state_bytes"] <= sum(x.state for x in kvs)


def test_model_placement_on_the_cpu(tiny):
    model = pyv4.Model(tiny, threads=1)
    p = model.placement()
    assert p is model.placement() and p.device == "cpu" and p.ctx == model.n_ctx
    assert p.gpu == {} and p.pcie == {} and p.ms is None and not p.experts_on_gpu
    shape = from_gguf(str(tiny))
    assert p.host_bytes - sum(b for k, b in p.host.items() if k.startswith("kv ")) == \
        sum(t.nbytes for t in shape.tensors)
    p2 = pl.cpu_placement(shape, ctx=4096, cpu_gbs=10.0)
    assert p2.ms["total"] == pytest.approx(p2.cpu_read_per_token / 10e9 * 1e3)


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:-1", "cpu:0", "CUDA", "cuda:1:2", 0, None])
def test_bad_device_strings(device):
    with pytest.raises(ValueError, match="device must be"):
        pyv4.Model("/nonexistent.gguf", device=device)


def test_vram_arguments():
    with pytest.raises(ValueError, match="CUDA device only"):
        pyv4.Model("/nonexistent.gguf", vram="24GiB")
    with pytest.raises(ValueError, match="vram"):
        pyv4.Model("/nonexistent.gguf", device="cuda", vram="lots")
    with pytest.raises(ValueError, match="positive"):
        pyv4.Model("/nonexistent.gguf", device="cuda", vram=0)


def test_cuda_request_says_why(tiny, monkeypatch):
    monkeypatch.delattr(_core, "cuda_available", raising=False)
    with pytest.raises(pyv4.DeviceError, match="no CUDA backend") as e:
        pyv4.Model(tiny, device="cuda")
    assert isinstance(e.value, RuntimeError) and "cuda:0" in str(e.value)
    with pytest.raises(pyv4.DeviceError, match="cuda:3"):
        pyv4.Model(tiny, device="cuda:3", vram="24GiB")
    monkeypatch.setattr(_core, "cuda_available", lambda: (False, "no NVIDIA driver found"), raising=False)
    with pytest.raises(pyv4.DeviceError, match="no NVIDIA driver found"):
        pyv4.Model(tiny, device="cuda")
    # a backend that reports a device which then cannot be used (here: none is
    # there) still ends in DeviceError, naming the device
    monkeypatch.setattr(_core, "cuda_available", lambda: (True, ""), raising=False)
    if _core.cuda_built and not _REAL_CUDA:
        with pytest.raises(pyv4.DeviceError, match="cuda:0: "):
            pyv4.Model(tiny, device="cuda")
    elif not _core.cuda_built:  # a CPU-only build that (patched) reports a device
        monkeypatch.setattr(_core, "cuda_device_count", lambda: 1, raising=False)
        with pytest.raises(pyv4.DeviceError, match="no GPU model path"):
            pyv4.Model(tiny, device="cuda")
    with pytest.raises(ValueError, match="CUDA device only"):
        pyv4.Model(tiny, max_gpu_experts=0)
    assert pyv4.Model(tiny, device="cpu").device == "cpu"


def test_sessions_of_a_gpu_model_go_through_its_gpu_engine(tiny):
    # The Python side of Model(device="cuda") with the GPU engine stood in for
    # by the CPU engine: eval / truncate go to it, and eval_batch checks every
    # item before the first runs (the GPU path runs them one at a time).
    model = pyv4.Model(tiny)
    calls = []

    class StandIn:
        def eval(self, state, ids, all_logits, n_vocab):
            calls.append(("eval", [int(i) for i in ids], all_logits, n_vocab))
            return model._engine.eval(state, ids, all_logits)

        def truncate(self, state, n):
            calls.append(("truncate", n))
            model._engine.truncate(state, n)

    model._gpu = StandIn()
    a, b = model.new_session(), model.new_session()
    a.eval([1, 2, 3], logits="all")
    assert calls == [("eval", [1, 2, 3], True, model.n_vocab)]
    for batch, err in (([(a, [4]), (b, [model.n_vocab])], r"batch item 1: token ids must be in \[0, 512\)"),
                       ([(a, [4]), (a, [5])], "repeats a session"),
                       ([(b, [4]), (a, np.ones(model.n_ctx - 2, np.int64))], "batch item 1: context overflow")):
        with pytest.raises(ValueError, match=err):
            model.eval_batch(batch)
        assert (a.n_tokens, b.n_tokens, len(calls)) == (3, 0, 1)
    la, lb = model.eval_batch([(a, [4]), (b, [4])])
    assert la.shape == lb.shape == (model.n_vocab,) and [c[1] for c in calls[1:]] == [[4], [4]]
    a.truncate(2)
    assert calls[-1] == ("truncate", 2) and a.n_tokens == 2


def test_device_flags_of_run_and_bench(tiny, capsys, monkeypatch):
    monkeypatch.delattr(_core, "cuda_available", raising=False)
    assert pyv4_main(["run", str(tiny), "-p", "hi", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA backend" in err
    assert pyv4_main(["bench", str(tiny), "--device", "tpu"]) == 2
    assert "device must be" in capsys.readouterr().err
    assert pyv4_main(["chat", str(tiny), "--vram", "8GiB"]) == 2
    assert "CUDA device only" in capsys.readouterr().err


# ---------------------------------------------------------------- pyv4 plan


def test_plan_command_json_matches_the_api(flash, capsys):
    args = ["plan", "v4-flash", "--vram", "48GiB", "--ram", "128GiB", "--ctx", "1M", "--cpu-bandwidth", "100",
            "--gpu-bandwidth", "0.96TB/s", "--json"]
    assert pyv4_main(args) == 0
    got = json.loads(capsys.readouterr().out)
    want = pl.plan(flash, 48 * GiB, 128 * GiB, 1 << 20, gpu_gbs=960, cpu_gbs=100).to_dict()
    assert got == json.loads(json.dumps(want))
    assert got["ms_per_token"] > 0 and got["pcie_bytes_per_token"] > 0


def test_plan_command_text_and_errors(tiny, capsys):
    assert pyv4_main(["plan", "v4-pro", "--vram", "80GiB", "--ram", "1TiB", "--ctx", "128K",
                      "--cpu-bandwidth", "200GB/s"]) == 0
    out = capsys.readouterr().out
    assert "v4-pro (mxfp4)" in out and "routed experts on the GPU" in out and "ms/token" in out
    assert re.search(r"experts\s+[0-9.]+ GiB\s+[0-9.]+ GiB", out)
    for args, msg in ((["v4-flash", "--vram", "8GiB", "--ctx", "1M", "--cpu-bandwidth", "100"], "short by"),
                      (["v4-flash", "--vram", "24XB"], "unknown unit"),
                      (["nothere.gguf", "--vram", "24GiB"], "no such file"),
                      ([str(tiny), "--vram", "24GiB", "--recipe", "q8"], "built-in shapes"),
                      (["v4-flash", "--vram", "24GiB", "--recipe", "q3"], "unknown recipe"),
                      (["v4-flash", "--vram", "80GiB", "--ctx", "2M", "--cpu-bandwidth", "100"], "exceeds")):
        assert pyv4_main(["plan", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("pyv4 plan: error: ") and err.count("\n") == 1 and msg in err, err


def test_plan_command_measures_the_cpu(tiny, tmp_path):
    # a separate process, as a user runs it: the module loads lazily, the bandwidth is measured
    # (from outside the source tree, so `-m pyv4.cli` imports the installed package)
    r = subprocess.run([sys.executable, "-m", "pyv4.cli", "plan", str(tiny), "--vram", "2GiB", "--ram", "8GiB",
                        "--json"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["bandwidth"]["cpu_gbs"] > 0 and d["ms_per_token"] > 0
    assert sum(d["experts_gpu_per_layer"]) == TINY["num_hidden_layers"] * TINY["n_routed_experts"]
