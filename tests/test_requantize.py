"""`pyv4 requantize`: an MXFP4 / Q8_0 conversion of the official-layout fixture to q2.

Oracles:
* the direct conversion of the checkpoint (`pyv4 convert --recipe q2`): MXFP4 repacked from
  the official FP4 decodes to exactly the checkpoint's values, so requantizing the mxfp4 file
  must give the direct conversion's bytes, whole file; from Q8_0 the values differ by Q8_0's
  error, so the 2-bit result is compared by quality (weights against the checkpoint's values,
  logits against the checkpoint's in reference mode) with the direct conversion's as the bar;
* the input file: unchanged tensors byte for byte, metadata entry for entry;
* the converter's plan: the role `names.gguf_role` reads from a GGUF name.
"""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

import official_fixtures as of  # noqa: E402
import pyv4  # noqa: E402
from pyv4 import _core  # noqa: E402
from pyv4.cli import main as cli  # noqa: E402
from pyv4.convert import ConvertError, load_config, names  # noqa: E402
from pyv4.convert import requantize as rq  # noqa: E402
from pyv4.convert.source import Source  # noqa: E402
from pyv4.imatrix import collect, write_gguf  # noqa: E402

T = gguf.GGMLQuantizationType
Q2_FILE_TYPE = 19


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoint, its mxfp4 / q8 / direct q2 conversions, and an imatrix collected by
    `pyv4 imatrix`'s code on the q8 file (neutral entries for the MTP block, which the
    forward pass never runs)."""
    d = tmp_path_factory.mktemp("requant")
    src = d / "official"
    of.build_official(src, seed=0)
    f = {"src": src, "im": d / "im.gguf"}
    for r in ("mxfp4", "q8"):
        f[r] = d / f"{r}.gguf"
        assert cli(["convert", str(src), str(f[r]), "--recipe", r, "-q"]) == 0
    m = pyv4.Model(f["q8"])
    entries, n = collect(m, np.random.default_rng(0).integers(0, m.n_vocab, 256), chunk_size=128, kv="f32")
    have = {e[0] for e in entries}
    for t in gguf.GGUFReader(str(f["q8"])).tensors:
        if "_exps" in t.name and t.name not in have:
            E, cols = int(t.shape[-1]), int(t.shape[0])
            entries.append((t.name, np.ones((E, cols), np.float32), np.ones(E, np.float32)))
    write_gguf(f["im"], entries, "random ids", n, 128)
    f["q2"] = d / "direct-q2.gguf"
    assert cli(["convert", str(src), str(f["q2"]), "--recipe", "q2", "--imatrix", str(f["im"]), "-q"]) == 0
    f["rq8"] = d / "rq-q8.gguf"
    assert cli(["requantize", str(f["q8"]), str(f["rq8"]), "--recipe", "q2", "--imatrix", str(f["im"]), "-q"]) == 0
    return f


def _tensors(path):
    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type, bytes(np.asarray(t.data).view(np.uint8).reshape(-1)),
                     tuple(int(s) for s in reversed(list(t.shape)))) for t in r.tensors}


def _values(t, raw, shape):
    return gguf.quants.dequantize(np.frombuffer(raw, np.uint8).reshape(-1), t).reshape(shape)


def _metadata(path):
    return {k: (f.types, f.contents()) for k, f in gguf.GGUFReader(str(path)).fields.items()
            if not k.startswith("GGUF.")}


def test_mxfp4_requantized_is_the_direct_conversion(files, tmp_path):
    out = tmp_path / "rq.gguf"
    res = rq.requantize(files["mxfp4"], out, "q2", imatrix=files["im"])
    assert out.read_bytes() == files["q2"].read_bytes()
    # only the routed experts were re-encoded
    assert sorted(set(res.types) - set(res.copied)) == sorted(n for n in res.types if "_exps" in n)
    # q2q4 (every block of this 4-layer model is in the Q4_K tail): also the direct bytes
    assert cli(["requantize", str(files["mxfp4"]), str(out), "--recipe", "q2q4", "-q"]) == 0
    direct = tmp_path / "direct.gguf"
    assert cli(["convert", str(files["src"]), str(direct), "--recipe", "q2q4", "-q"]) == 0
    assert out.read_bytes() == direct.read_bytes()


def test_q8_requantized_types_bytes_and_metadata(files):
    src, out, direct = _tensors(files["q8"]), _tensors(files["rq8"]), _tensors(files["q2"])
    assert list(out) == list(src)
    for name, (t, raw, shape) in out.items():
        assert shape == src[name][2]
        if "_exps" in name:  # the recipe's expert types (IQ2_XXS; Q4_0 where Q2_K does not fit)
            assert t == direct[name][0] and t in (T.IQ2_XXS, T.Q4_0), name
        else:  # q2 keeps the rest as the input has it: byte for byte
            assert (t, raw) == src[name][:2], name
    assert {t for t, _, _ in out.values()} >= {T.IQ2_XXS, T.Q4_0, T.Q8_0, T.F32, T.I32}
    want, got = _metadata(files["q8"]), _metadata(files["rq8"])
    assert got.pop("general.file_type")[1] == Q2_FILE_TYPE and want.pop("general.file_type")[1] == 7
    assert list(got) == list(want) and got == want  # tokenizer, MTP hc head and all: same types, values


def test_q8_requantized_quality(files):
    """Q8_0 -> 2 bits stacks errors; measured on this fixture the stacked error is within
    0.1% (weights) and 1.3% (logits) of the direct conversion's, since Q8_0's own error
    (0.56% of the weights, 6% of the logits: the random tiny model amplifies weight noise)
    adds nearly in quadrature to the 2-bit one (35% of the gate/up weights, 50% of the
    logits). Bounds: 1% (weights) and 10% (logits) over the direct conversion's error."""
    ref, out, direct = _tensors(files["mxfp4"]), _tensors(files["rq8"]), _tensors(files["q2"])
    for name in (n for n in out if "_exps" in n):
        want = _values(*ref[name])  # the checkpoint's values, exactly

        def err(t):
            v = _values(*t)
            return np.sqrt(((v - want) ** 2).mean() / (want ** 2).mean())

        assert err(out[name]) <= 1.01 * err(direct[name]), name
    toks = np.random.default_rng(3).integers(0, 512, 200)
    old = _core.compute_mode()
    try:
        _core.set_compute_mode("reference")
        L = {k: pyv4.Model(files[k]).new_session(kv="f32").eval(toks, logits="all") for k in ("mxfp4", "q2", "rq8")}
        _core.set_compute_mode("fast")
        fast = pyv4.Model(files["rq8"]).new_session(kv="f32").eval(toks[:10], logits="all")
    finally:
        _core.set_compute_mode(old)
    base = L["mxfp4"]

    def rel(x):
        return np.sqrt(((x - base) ** 2).mean() / (base ** 2).mean())

    def top1(x):
        return (x.argmax(1) == base.argmax(1)).mean()

    assert rel(L["rq8"]) <= 1.1 * rel(L["q2"]), (rel(L["rq8"]), rel(L["q2"]))
    # top-1 agreement with the checkpoint: as good as the direct conversion's (~0.35 here,
    # 2-bit experts on a random model), within the +-0.05 seen across token seeds
    assert top1(L["rq8"]) >= top1(L["q2"]) - 0.1, (top1(L["rq8"]), top1(L["q2"]))
    # the fast kernels run the file too (the first tokens: int8 activations drift on a random model)
    ref = L["rq8"][:10]
    assert np.isfinite(fast).all()
    assert (np.abs(fast - ref).max(axis=1) / np.abs(ref).max(axis=1)).max() < 0.05


def test_bounded_chunks_give_the_same_bytes(files, tmp_path, monkeypatch):
    """With chunks of one row (CHUNK_VALUES 256) the output is the default run's, and no
    decoded chunk holds more than max(CHUNK_VALUES, one row) values."""
    sizes = []
    real = rq.decode_rows

    def spy(block, t, cols):
        v = real(block, t, cols)
        sizes.append((v.size, cols))
        return v

    monkeypatch.setattr(rq, "decode_rows", spy)
    monkeypatch.setattr(names, "CHUNK_VALUES", 256)
    out = tmp_path / "small.gguf"
    rq.requantize(files["q8"], out, "q2", imatrix=files["im"])
    assert out.read_bytes() == files["rq8"].read_bytes()
    assert sizes and all(n <= max(256, cols) for n, cols in sizes)
    assert len(sizes) > 100  # the expert tensors went row by row


def test_role_of_every_gguf_name_is_the_plans(files):
    assert set(names.LAYER_ROLE) == set(names.LAYER_GGUF)
    source = Source(files["src"])
    try:
        plan = names.build_plan(load_config(files["src"]), source)
    finally:
        source.close()
    roles = {pt.name: pt.role for pt in plan.tensors if pt.role != "kv"}
    assert any(n.startswith("blk.4.nextn") for n in roles)  # the MTP block is covered
    assert {n: names.gguf_role(n) for n in roles} == roles
    assert names.gguf_role("blk.0.attn_unknown.weight") is None and names.gguf_role("rope_freqs.weight") is None


def _refused(capsys, argv, out, *needles):
    assert cli(["requantize", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyv4 requantize: error:"), err
    for n in needles:
        assert n in err, (n, err)
    assert not out.exists() and not list(out.parent.glob(out.name + ".tmp-*"))


def _gguf(path, arch, tensors):
    w = gguf.GGUFWriter(str(path), arch=arch)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_refusals_leave_no_output(files, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    q8, im = files["q8"], files["im"]
    before = q8.read_bytes()
    _refused(capsys, [q8, out, "--recipe", "q2"], out, "IQ2_XXS", "--imatrix", "pyv4 imatrix")
    # an imatrix of another model: entries of other sizes
    bad = tmp_path / "other.gguf"
    write_gguf(bad, [("blk.0.ffn_gate_exps.weight", np.ones((3, 64), np.float32), np.ones(3, np.float32))],
               "x", 1, 8)
    _refused(capsys, [q8, out, "--recipe", "q2", "--imatrix", bad], out, "another model")
    _refused(capsys, [q8, q8, "--recipe", "q2", "--imatrix", im], out, "overwrite the input")
    link = tmp_path / "link.gguf"
    link.symlink_to(q8)
    _refused(capsys, [q8, link, "--recipe", "q2", "--imatrix", im], out, "overwrite the input")
    missing = tmp_path / "no-such-dir" / "o.gguf"
    _refused(capsys, [q8, missing, "--recipe", "q2", "--imatrix", im], missing, "does not exist")
    _refused(capsys, [tmp_path / "none.gguf", out, "--recipe", "q2"], out, "does not exist")
    llama = tmp_path / "llama.gguf"
    _gguf(llama, "llama", {"token_embd.weight": np.ones((4, 32), np.float32)})
    _refused(capsys, [llama, out, "--recipe", "q8"], out, "'llama' is not 'deepseek4'")
    odd = tmp_path / "odd.gguf"
    _gguf(odd, "deepseek4", {"blk.0.attn_unknown.weight": np.ones((4, 32), np.float32)})
    _refused(capsys, [odd, out, "--recipe", "q8"], out, "blk.0.attn_unknown.weight")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    _refused(capsys, [tmp_path / "junk.gguf", out, "--recipe", "q8"], out, "not a readable GGUF")
    with pytest.raises(ConvertError, match="unknown recipe"):
        rq.requantize(q8, out, "q3")
    with pytest.raises(SystemExit) as e:  # the command line: argparse's choices
        cli(["requantize", str(q8), str(out), "--recipe", "q3"])
    assert e.value.code == 2 and not out.exists()
    assert q8.read_bytes() == before


def test_interrupted_run_leaves_output_as_it_was(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"the previous file")
    calls = []
    real = rq.decode_rows

    def interrupt(block, t, cols):  # Ctrl-C in the third decoded chunk, mid-file
        calls.append(t)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(block, t, cols)

    monkeypatch.setattr(rq, "decode_rows", interrupt)
    assert cli(["requantize", str(files["q8"]), str(out), "--recipe", "q2", "--imatrix", str(files["im"])]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert out.read_bytes() == b"the previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]


def test_type_overrides(files, tmp_path):
    out = tmp_path / "o.gguf"
    assert cli(["requantize", str(files["q8"]), str(out), "--recipe", "q2", "--imatrix", str(files["im"]),
                "--type", "token_embd.weight=q4_0", "-q"]) == 0
    got, src = _tensors(out), _tensors(files["q8"])
    assert got["token_embd.weight"][0] == T.Q4_0 and got["output.weight"][:2] == src["output.weight"][:2]
    # the requantized embedding is near the Q8_0 one (Q4_0 of Gaussian rows: ~10% relative RMSE)
    a, b = _values(*got["token_embd.weight"]), _values(*src["token_embd.weight"])
    assert np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()) < 0.15


def test_custom_alignment_is_kept(files, tmp_path):
    """An input with general.alignment 64 (llama.cpp honours the key): the copy keeps the
    key, and the output's data offsets follow it."""
    from gguf import GGUFValueType

    from pyv4.convert.tokenizer import KV
    from pyv4.convert.writer import OutTensor, write_gguf as write_model

    kvs, inputs = rq.read_input(files["mxfp4"])
    aligned = tmp_path / "aligned.gguf"
    write_model(aligned, kvs + [KV("general.alignment", GGUFValueType.UINT32, 64)],
                [OutTensor(t.name, t.shape, t.type, t.role, (lambda t=t: t.chunks(decoded=False)), encoded=True)
                 for t in inputs])
    out = tmp_path / "o.gguf"
    rq.requantize(aligned, out, "q2", imatrix=files["im"])
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.alignment"].contents() == 64 and r.alignment == 64
    assert all(t.data_offset % 64 == 0 for t in r.tensors)
    got, want = _tensors(out), _tensors(files["q2"])
    assert {n: v[:2] for n, v in got.items()} == {n: v[:2] for n, v in want.items()}


@pytest.mark.parametrize("t", sorted(rq.CORE_DECODES, key=lambda t: t.name), ids=lambda t: t.name)
def test_core_decoder_is_gguf_py_bit_for_bit(t):
    """The requantizer decodes these types with the core's threaded decoder: the
    same float32 bits as gguf-py's (the format oracle) on random bytes, infinite
    scales included (NaN where gguf-py has NaN); several threads give the bits of one."""
    import gguf

    rng = np.random.default_rng(5)
    bs, bb = gguf.GGML_QUANT_SIZES[t]
    rows, cols = 37, 512
    raw = np.frombuffer(rng.bytes(rows * cols // bs * bb), np.uint8).reshape(rows, -1)
    with np.errstate(all="ignore"):
        want = gguf.quants.dequantize(raw, t).astype(np.float32).reshape(rows, cols)
    got = rq.decode_rows(raw[:, :], t, cols)
    assert got.shape == (rows, cols) and got.dtype == np.float32
    nan = np.isnan(want)  # a NaN's sign may differ (NaN scale times a negative grid value)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    one = _core.quant_dequantize_rows(t.name, raw, cols, threads=1)
    np.testing.assert_array_equal(one.view(np.uint32), got.view(np.uint32))


def test_core_decoder_refuses_bad_shapes():
    raw = np.zeros((4, 17 * 16), np.uint8)  # MXFP4 rows of 512 elements
    assert _core.quant_dequantize_rows("MXFP4", raw, 512).shape == (4, 512)
    with pytest.raises(ValueError, match=r"raw must be uint8 \[rows, 136\]"):
        _core.quant_dequantize_rows("MXFP4", raw, 256)
    with pytest.raises(ValueError, match="raw must be uint8"):
        _core.quant_dequantize_rows("MXFP4", raw.reshape(-1), 512)
    with pytest.raises(ValueError, match="unknown GGML type"):
        _core.quant_dequantize_rows("Q9_9", raw, 512)
