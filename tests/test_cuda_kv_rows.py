"""Host-side index math of the GPU's KV and expert streaming (csrc/cuda/kv_rows.h,
stream_plan.h), compiled into every build, so these run on any CPU:

* ring_runs: the new rows that enter the window ring, at their slots;
* plan_attn_rows: every query reads exactly its window positions (stored ones
  from the ring slot pos mod window, its span's own rows from the new records)
  and then its compressed rows (HCA: all visible, CSA: its top-k), in the CPU's
  key order, each row listed once, from the device below the budget and from
  the host above it; the touch counts are the CPU's;
* MirrorBook: the rows a device copy still has to receive, the CSA budget,
  and the stamp it matches;
* KVState.stamp, which the copy checks: renewed by every change (eval,
  truncate, reset), different for a fork and a loaded session, unchanged by
  reading or saving;
* plan_stream_groups: the pairs cut into groups of at most the byte budget's
  experts, in order, each pair mapped to its expert.
"""

import numpy as np
import pytest

import pyv4
from pyv4 import _core


def expected_rows(pos0, n, window, kind, ratio, picked, on_device):
    """Per query the (source, index) of every row it reads, in the CPU's order."""
    out = []
    for t in range(n):
        P = pos0 + t
        rows = [("ring", j % window) if j < pos0 else ("chunk", j - pos0) for j in range(max(0, P - window + 1), P + 1)]
        comp = range((P + 1) // ratio) if kind == "hca" else picked[t] if kind == "csa" else []
        rows += [("device" if b < on_device else "host", b) for b in comp]
        out.append(rows)
    return out


def random_picks(rng, pos0, n, ratio, topk):
    picks = []
    for t in range(n):
        nb = (pos0 + t + 1) // ratio
        picks.append(sorted(rng.choice(nb, min(topk, nb), replace=False).tolist()) if nb else [])
    return picks


@pytest.mark.parametrize("kind,ratio", [("sliding", 0), ("hca", 8), ("csa", 4)])
@pytest.mark.parametrize("pos0,n", [(0, 1), (0, 37), (5, 3), (16, 1), (40, 1), (77, 20), (130, 64)])
def test_attn_rows_are_each_querys_rows_in_order(kind, ratio, pos0, n):
    rng = np.random.default_rng(pos0 * 100 + n)
    window = 16
    picked = random_picks(rng, pos0, n, ratio, 5) if kind == "csa" else []
    n_comp = (pos0 + n) // ratio if ratio else 0
    for on_device in sorted({0, n_comp // 2, n_comp, 10**6}):
        a = _core.cuda_attn_rows(pos0, n, window, kind, ratio, picked, on_device)
        rows, idx, first = a["rows"], a["idx"], a["first"]
        assert len(first) == n + 1 and first[0] == 0 and first[-1] == len(idx)
        assert len(set(rows)) == len(rows)  # each row once
        want = expected_rows(pos0, n, window, kind, ratio, picked, on_device)
        assert [[rows[i] for i in idx[first[t]:first[t + 1]]] for t in range(n)] == want
        # the rows listed are exactly the ones some query reads
        assert set(rows) == {r for q in want for r in q} | {("chunk", t) for t in range(n)}
        w_first = max(0, pos0 - window + 1)
        assert a["window_read"] == pos0 - w_first
        assert a["comp_read"] == len({r for q in want for r in q if r[0] in ("device", "host")})


@pytest.mark.parametrize("pos0,n", [(0, 1), (0, 16), (3, 5), (14, 5), (15, 1), (16, 16), (7, 40), (100, 3)])
def test_ring_runs_place_the_last_window_rows(pos0, n):
    window = 16
    runs = _core.cuda_ring_runs(pos0, n, window)
    assert len(runs) <= 2
    placed = [(t + k, slot + k) for t, slot, length in runs for k in range(length)]
    assert all(slot < window for _, slot in placed)
    # exactly the last min(n, window) rows, each at its position's slot
    assert placed == [(t, (pos0 + t) % window) for t in range(max(0, n - window), n)]
    with pytest.raises(ValueError):
        _core.cuda_ring_runs(0, 1, 0)


def test_attn_rows_bad_input():
    with pytest.raises(ValueError, match="attention kind"):
        _core.cuda_attn_rows(0, 1, 16, "mla", 4, [[]], 0)
    with pytest.raises(ValueError, match="pos0 >= 0"):
        _core.cuda_attn_rows(0, 0, 16, "sliding", 0, [], 0)
    with pytest.raises(RuntimeError, match="out of range"):
        _core.cuda_attn_rows(8, 1, 16, "csa", 4, [[2]], 0)  # query at 8 sees blocks 0, 1 only
    with pytest.raises(RuntimeError, match="one top-k per query"):
        _core.cuda_attn_rows(8, 2, 16, "csa", 4, [[0]], 0)


def test_mirror_book_tracks_rows_budget_and_stamp():
    b = _core.CudaMirrorBook(["sliding", "csa", "hca"], 3)
    assert b.comp_limit(0) == -1 and b.comp_limit(1) == 3 and b.comp_limit(2) == -1
    assert b.comp_to_copy(0, 0) == (0, 0) and b.index_to_copy(0, 0) == (0, 0)  # no rows in a sliding layer
    assert b.comp_to_copy(1, 2) == (0, 2)
    assert b.comp_to_copy(1, 5) == (2, 3)  # up to the budget; rows 3, 4 stay on the host
    assert b.comp_to_copy(1, 9) == (3, 3) and b.comp_held(1) == 3
    assert b.index_to_copy(1, 9) == (0, 9) and b.index_to_copy(1, 10) == (9, 10)  # keys: all
    assert b.index_to_copy(2, 4) == (0, 0)  # an HCA layer has no indexer
    assert b.comp_to_copy(2, 4) == (0, 4) and b.comp_to_copy(2, 4) == (4, 4) and b.comp_held(2) == 4
    with pytest.raises(RuntimeError, match="shrank"):
        b.comp_to_copy(2, 3)
    assert not b.current(7)
    b.mark(7)
    assert b.current(7) and not b.current(8)
    b.invalidate()
    assert not b.current(7) and b.comp_held(2) == 4  # rows kept: a current state appends to them
    b.clear()
    assert b.comp_held(1) == b.index_held(1) == b.comp_held(2) == 0
    assert _core.CudaMirrorBook(["csa"], -1).comp_to_copy(0, 1000) == (0, 1000)
    assert _core.CudaMirrorBook(["csa"], 0).comp_to_copy(0, 1000) == (0, 0)
    with pytest.raises(ValueError, match="csa_rows_gpu"):
        _core.CudaMirrorBook(["csa"], -2)
    with pytest.raises(ValueError, match="attention kind"):
        _core.CudaMirrorBook(["csa", "x"], 1)
    with pytest.raises(IndexError):
        b.comp_held(3)


@pytest.mark.parametrize("have,need,limit,rows", [(0, 1, -1, 64), (64, 65, -1, 128), (64, 200, -1, 200),
                                                  (64, 65, 70, 70), (10, 5, -1, 10), (0, 100, 50, 100)])
def test_grow_rows(have, need, limit, rows):
    assert _core.cuda_grow_rows(have, need, limit) == rows


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    # its own tiny model: bench/gpu_check.sh runs this file without conftest.py
    pytest.importorskip("gguf", reason="writing the test model needs the gguf package")
    from gguf import GGMLQuantizationType as T

    from pyv4.synthetic import write_random_gguf
    from test_cuda_model import SPEC11

    path = write_random_gguf(tmp_path_factory.mktemp("stamp") / "spec11.gguf", SPEC11, None, seed=1,
                             matrix_type=T.F32)
    return pyv4.Model(path)


def test_kv_state_stamp_follows_every_change(tiny_model, tmp_path):
    model = tiny_model
    ids = np.arange(2, 40)
    s = model.new_session()
    stamps = [s._state.stamp]
    s.eval(ids[:30])
    stamps.append(s._state.stamp)
    s.save(tmp_path / "a.session")
    assert s._state.stamp == stamps[-1]  # saving changes nothing
    f = s.fork()
    assert f._state.stamp not in stamps and s._state.stamp == stamps[-1]
    stamps.append(f._state.stamp)
    loaded = pyv4.Session.load(model, tmp_path / "a.session")
    assert loaded._state.stamp not in stamps
    stamps.append(loaded._state.stamp)
    f.eval(ids[30:31])
    assert f._state.stamp not in stamps and s._state.stamp == stamps[1]
    stamps.append(f._state.stamp)
    s.truncate(20)
    assert s._state.stamp not in stamps
    stamps.append(s._state.stamp)
    with pytest.raises(ValueError):
        s.eval([1, 10**6])  # rejected before any change
    assert s._state.stamp == stamps[-1]
    other = model.new_session()
    assert other._state.stamp not in stamps


def test_stream_groups_cover_pairs_within_budget():
    rng = np.random.default_rng(3)
    expert = sorted(rng.integers(0, 40, 300).tolist())
    for per_expert, group_bytes in [(100, 1), (100, 250), (100, 1000), (7, 10**9)]:
        cap = max(1, group_bytes // per_expert)
        groups = _core.cuda_stream_groups(expert, per_expert, group_bytes)
        assert groups[0][0] == 0 and groups[-1][1] == len(expert)
        for (p0, p1, ids, local), nxt in zip(groups, groups[1:] + [None]):
            assert nxt is None or nxt[0] == p1
            assert 1 <= len(ids) <= cap and ids == sorted(set(ids))
            assert [ids[k] for k in local] == expert[p0:p1]
            assert nxt is None or len(ids) == cap  # only the last group is short
        assert sorted(e for g in groups for e in g[2]) == sorted(set(expert))  # an expert is copied once
    assert _core.cuda_stream_groups([], 10, 100) == []
    with pytest.raises(ValueError, match="sorted"):
        _core.cuda_stream_groups([3, 1], 10, 100)
    with pytest.raises(ValueError, match="per_expert"):
        _core.cuda_stream_groups([1], 0, 100)


def test_stream_pays_where_the_cpu_would_take_longer():
    # V4-Flash's MXFP4 experts of one layer: 256 x 3 x [2048 x 4096] at 4.25 bits,
    # 3 x 2048 x 4096 multiply-accumulates per (token, expert) pair, 6 pairs a token
    per_expert, macs = 3 * 2048 * 4096 * 17 // 32, 3 * 2048 * 4096

    def pays(tokens, cpu_gbs, cpu_gmacs, pcie_gbs):
        used = min(256, 6 * tokens)
        return _core.cuda_stream_pays(used * per_expert, 6 * tokens, macs, cpu_gbs, cpu_gmacs, pcie_gbs)

    # decode never streams; where prefill starts to is the machine's: PCIe 4.0
    # beside 2 cores (~100 G MAC/s) from ~80 tokens, beside 16 (~1 T) from ~900
    for cpu_gmacs, first in ((100, 80), (1000, 900)):
        streams = [pays(n, 60, cpu_gmacs, 25) for n in range(1, 2049)]
        n0 = streams.index(True) + 1
        assert not any(streams[:n0 - 1]) and all(streams[n0 - 1:])  # one threshold, then always
        assert 0.7 * first <= n0 <= 1.3 * first, n0
    # a faster link streams earlier; a CPU slower than the link in bandwidth alone always streams
    assert pays(200, 60, 1000, 64) and not pays(200, 60, 1000, 25)
    assert pays(1, 10, 100, 25)
    # a rate of 0 (not measured): never
    for rates in ((0, 100, 25), (60, 0, 25), (60, 100, 0)):
        assert not pays(4096, *rates)
