"""The model's forward pass on the GPU (`Model(device="cuda")`,
csrc/cuda/gpu_engine.*) against the CPU engine, on a machine with a GPU:

* the spec §11 configuration with f32 weights and kv="f32": logits of a
  prefill (every position) and of single-token decode steps within 1e-3 of
  the CPU's reference mode, with every routed expert on the GPU, with none
  (hybrid: on the CPU pool, or copied to the GPU where the streaming cost
  model says it pays; forced for every step, one expert per copy, in one
  test), with some of each layer's, and with scattered ones;
* quantized files (the converter's mxfp4 and q2 recipes, kv="fp8"): top-1 agreement
  >= 0.99 with the CPU fast path over 600 positions;
* sessions: saved after GPU steps and loaded on the CPU (and the reverse),
  the next logits agree; truncate and fork on the GPU; bad input raises and
  leaves the session as it was, and so does an eval that fails midway (the
  KV file cannot grow); an eval longer than 512 tokens runs in passes of 512;
* the placement in use names the experts the GPU holds;
* the KV copy on the GPU (csrc/cuda/gpu_kv.h): a long prompt in uneven chunks
  (crossing the window, the CSA / HCA block and the snapshot boundaries, the
  ring wrapping inside a chunk) and then decode steps, in each KV type, with
  every CSA row on the GPU and with a budget of 3 (the others copied per step
  when selected); sessions saved after GPU steps load on the CPU and on the
  GPU; interleaved sessions, forks and truncates (each re-copies the state)
  give what each session gives alone.

The tiny models are written with pyv4.synthetic (numpy + gguf, no torch, so
this runs in bench/gpu_check.sh's image). Without a usable device every test
skips, saying why.
"""

import numpy as np
import pytest

import pyv4
from pyv4 import _core

_OK, _REASON = _core.cuda_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"no CUDA device: {_REASON}")

# spec §11 (tests/tiny_models.py's configuration) in the official layout.
SPEC11 = {
    "model_type": "deepseek_v4", "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 6,
    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64, "qk_rope_head_dim": 16,
    "q_lora_rank": 32, "o_groups": 2, "o_lora_rank": 16, "sliding_window": 16,
    "compress_ratios": [0, 4, 128, 4, 128, 0], "num_hash_layers": 3,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "moe_intermediate_size": 32,
    "index_n_heads": 16, "index_head_dim": 64, "index_topk": 8,
    "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "compress_rope_theta": 160000.0,
    "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 256,
                     "beta_fast": 32, "beta_slow": 1},
    "max_position_embeddings": 4096, "swiglu_limit": 10.0, "routed_scaling_factor": 1.5,
    "scoring_func": "sqrtsoftplus", "norm_topk_prob": True, "num_nextn_predict_layers": 0,
    "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
}
PREFILL, DECODE = 260, 24  # past the first HCA row (128 tokens) and many CSA rows


@pytest.fixture(scope="module")
def f32_file(tmp_path_factory):
    pytest.importorskip("gguf", reason="writing the test models needs the gguf package")
    from gguf import GGMLQuantizationType as T

    from pyv4.synthetic import write_random_gguf

    return write_random_gguf(tmp_path_factory.mktemp("gpu") / "spec11-f32.gguf", SPEC11, None, seed=3,
                             matrix_type=T.F32)


@pytest.fixture(scope="module", params=["mxfp4", "q2"])
def quantized_file(request, tmp_path_factory):
    """The spec §11 model in a converter recipe: mxfp4, or q2 (issue #16: experts'
    gate/up IQ2_XXS, down Q2_K; widths of 256 so the super-block types apply)."""
    pytest.importorskip("gguf", reason="writing the test models needs the gguf package")
    from pyv4.synthetic import write_random_gguf_typed

    cfg = {**SPEC11, "vocab_size": 2048, "sliding_window": 128, "index_topk": 16}
    if request.param == "q2":
        cfg.update(hidden_size=256, moe_intermediate_size=256)
    path = tmp_path_factory.mktemp("gpu") / f"spec11-{request.param}.gguf"
    return request.param, write_random_gguf_typed(path, cfg, None, recipe=request.param, seed=4)


@pytest.fixture
def reference_mode():
    old = _core.compute_mode()
    _core.set_compute_mode("reference")
    yield
    _core.set_compute_mode(old)


def tokens(n, vocab, seed):
    return np.random.default_rng(seed).integers(2, vocab, n).astype(np.int64)


def run(model, ids, kv):
    """Logits of a prefill of ids[:PREFILL] (all positions) and then of each later token decoded alone."""
    s = model.new_session(kv=kv)
    out = [s.eval(ids[:PREFILL], logits="all")]
    out += [s.eval(ids[t:t + 1], logits="all") for t in range(PREFILL, len(ids))]
    return np.concatenate(out)


def check_close(got, want, what, tol=1e-3):
    err = float(np.max(np.abs(got - want)))
    scale = max(1.0, float(np.max(np.abs(want))))
    print(f"\n[cuda] model {what}: max abs logit error {err:.3e} (logit scale {scale:.2f})")
    assert np.all(np.isfinite(got)) and err <= tol * scale


@pytest.mark.parametrize("gpu_experts", [None, 0, 3], ids=["all-gpu", "hybrid-all-cpu", "hybrid-split"])
def test_f32_logits_match_the_cpu_reference(f32_file, reference_mode, gpu_experts):
    ids = tokens(PREFILL + DECODE, SPEC11["vocab_size"], 1)
    want = run(pyv4.Model(f32_file), ids, "f32")
    gpu = pyv4.Model(f32_file, device="cuda", max_gpu_experts=gpu_experts)
    per_layer = gpu.placement().experts_gpu_per_layer
    assert per_layer == [8 if gpu_experts is None else gpu_experts] * 6
    assert [gpu._gpu.experts_on_gpu(il) for il in range(6)] == per_layer
    got = run(gpu, ids, "f32")
    assert got.shape == want.shape == (PREFILL + DECODE, SPEC11["vocab_size"])
    check_close(got[:PREFILL], want[:PREFILL], f"f32 prefill {gpu_experts=}")
    check_close(got[PREFILL:], want[PREFILL:], f"f32 decode {gpu_experts=}")


def test_f32_logits_with_scattered_gpu_experts(f32_file, reference_mode):
    # routing counts that put experts 1, 4 and 6 of each layer on the GPU: three
    # separate ranges per layer, the rest on the host
    ids = tokens(PREFILL + DECODE, SPEC11["vocab_size"], 5)
    want = run(pyv4.Model(f32_file), ids, "f32")
    freq = np.ones((6, 8))
    freq[:, [1, 4, 6]] = 50.0
    gpu = pyv4.Model(f32_file, device="cuda", max_gpu_experts=3, expert_freq=freq)
    assert gpu.placement().experts_on_gpu == [(il, e, e + 1) for il in range(6) for e in (1, 4, 6)]
    check_close(run(gpu, ids, "f32"), want, "f32 with experts 1, 4, 6 of each layer on the GPU")


def test_streamed_experts_one_per_copy(f32_file, reference_mode):
    # every routed expert on the host, and rates that make streaming pay for
    # any chunk (a fast link, a slow CPU): every step copies the experts it
    # uses to the GPU, here one expert per copy (stream_bytes=1)
    ids = tokens(PREFILL + 4, SPEC11["vocab_size"], 7)
    want = run(pyv4.Model(f32_file), ids, "f32")
    gpu = pyv4.Model(f32_file, device="cuda", max_gpu_experts=0)
    gpu._gpu = _core.GpuEngine(gpu._engine, [], cpu_gbs=1e-3, cpu_gmacs=1e-3, pcie_gbs=1e6, stream_bytes=1)
    check_close(run(gpu, ids, "f32"), want, "f32 experts streamed one per copy")


def test_quantized_top1_agrees_with_the_cpu_fast_path(quantized_file):
    recipe, path = quantized_file
    n, chunked = 600, 300
    ids = tokens(n, 2048, 2)
    cpu, gpu = pyv4.Model(path), pyv4.Model(path, device="cuda")

    # a prefill in chunks of 100 (the GPU's GEMM: int8 tensor cores, int8 activations), then
    # single-token steps (its GEMV, int8 activations as the CPU's)
    def top1(model):
        s = model.new_session()
        out = [s.eval(ids[i:i + 100], logits="all") for i in range(0, chunked, 100)]
        out += [s.eval(ids[t:t + 1], logits="all") for t in range(chunked, n)]
        return np.concatenate(out).argmax(axis=1)

    same = top1(cpu) == top1(gpu)
    print(f"\n[cuda] model {recipe} top-1 agreement with the CPU fast path: {same.mean():.4f} over {n} positions "
          f"(prefill chunks {same[:chunked].mean():.4f}, decode steps {same[chunked:].mean():.4f})")
    assert same.mean() >= 0.99


def test_sessions_move_between_gpu_and_cpu(f32_file, reference_mode, tmp_path):
    ids = tokens(PREFILL + 8, SPEC11["vocab_size"], 5)
    cpu, gpu = pyv4.Model(f32_file), pyv4.Model(f32_file, device="cuda", max_gpu_experts=4)
    for src, dst, name in ((gpu, cpu, "gpu-to-cpu"), (cpu, gpu, "cpu-to-gpu")):
        s = src.new_session(kv="f32")
        s.eval(ids[:PREFILL])
        s.save(tmp_path / f"{name}.session")
        loaded = pyv4.Session.load(dst, tmp_path / f"{name}.session")
        assert loaded.n_tokens == PREFILL and np.array_equal(loaded.tokens, ids[:PREFILL])
        check_close(loaded.eval(ids[PREFILL:], logits="all"), s.eval(ids[PREFILL:], logits="all"),
                    f"session {name}")


def test_truncate_fork_and_bad_input_on_the_gpu(f32_file):
    ids = tokens(PREFILL + 6, SPEC11["vocab_size"], 6)
    gpu = pyv4.Model(f32_file, device="cuda")
    s = gpu.new_session(kv="f32")
    s.eval(ids[:PREFILL])
    fork = s.fork()
    first = s.eval(ids[PREFILL:], logits="all")
    # restores the snapshot at 256 and re-evaluates 4 tokens on the GPU (with
    # the GEMV, where the prefill ran the GEMM: not the same bits)
    s.truncate(PREFILL)
    check_close(s.eval(ids[PREFILL:], logits="all"), first, "truncate and re-evaluate", tol=1e-4)
    check_close(fork.eval(ids[PREFILL:], logits="all"), first, "fork", tol=1e-5)
    n = s.n_tokens
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.eval([1, SPEC11["vocab_size"]])
    with pytest.raises(ValueError, match="context overflow"):
        s.eval(np.ones(4096, np.int64))
    assert s.n_tokens == n
    with pytest.raises(ValueError, match="outside the vocabulary|token ids"):
        gpu.eval_batch([(s, [3]), (fork, [-1])])
    assert s.n_tokens == n and fork.n_tokens == n
    a, b = gpu.eval_batch([(s, [3]), (fork, [3])])
    check_close(a, b, "eval_batch", tol=1e-4)


def test_a_long_eval_runs_in_passes_of_512_tokens(f32_file, reference_mode):
    """The GPU's activation buffers hold one prefill chunk (the plan's margin):
    a longer eval runs in passes of 512, the same as calls of 512 tokens."""
    ids = tokens(1100, SPEC11["vocab_size"], 8)
    gpu = pyv4.Model(f32_file, device="cuda")
    one = gpu.new_session(kv="f32").eval(ids, logits="all")
    s = gpu.new_session(kv="f32")
    parts = np.concatenate([s.eval(ids[i:i + 512], logits="all") for i in range(0, len(ids), 512)])
    assert one.shape == (len(ids), SPEC11["vocab_size"])
    np.testing.assert_array_equal(one, parts)
    np.testing.assert_array_equal(gpu.new_session(kv="f32").eval(ids, logits="last"), one[-1])
    want = pyv4.Model(f32_file).new_session(kv="f32").eval(ids, logits="all")
    check_close(one, want, "an 1100-token eval (3 passes)")


def test_an_eval_that_fails_midway_on_the_gpu(f32_file, tmp_path):
    """The KV backing file cannot grow during a GPU eval (after the GPU has
    written rows of it): the session is put back on the CPU as it was, and goes
    on as a session that never failed (its rows since the last snapshot now
    the CPU's: within the f32 tolerance)."""
    from eval_failure import eval_that_fails_midway

    error, n_tokens, diff, scale = eval_that_fails_midway(f32_file, tmp_path, device="cuda")
    assert error.startswith("error: cannot grow the KV backing file (") and "s.kv) to " in error, error
    assert n_tokens == 100
    print(f"\n[cuda] model eval failed midway, then resumed: max abs logit difference {diff:.3e}")
    assert diff <= 1e-3 * max(1.0, scale)


def test_placement_and_bad_arguments(f32_file):
    gpu = pyv4.Model(f32_file, device="cuda", vram="4GiB", max_gpu_experts=2)
    p = gpu.placement()
    assert gpu.device == "cuda:0" and p.device == "cuda:0" and p.vram == 4 << 30
    assert p.experts_on_gpu == [(il, 0, 2) for il in range(6)]
    # routing counts put each layer's two most used experts there instead, and
    # the engine holds exactly those
    freq = np.ones((6, 8))
    freq[:, 5] = freq[:, 7] = 100.0
    hot = pyv4.Model(f32_file, device="cuda", vram="4GiB", max_gpu_experts=2, expert_freq=freq)
    assert hot.placement().experts_on_gpu == [r for il in range(6) for r in ((il, 5, 6), (il, 7, 8))]
    assert [hot._gpu.experts_on_gpu(il) for il in range(6)] == [2] * 6
    n = _core.cuda_device_count()
    with pytest.raises(pyv4.DeviceError, match=f"cuda:{n}: no such device \\(this machine has {n} CUDA dev"):
        pyv4.Model(f32_file, device=f"cuda:{n}")
    with pytest.raises(ValueError, match="max_gpu_experts"):
        pyv4.Model(f32_file, device="cuda", max_gpu_experts=-1)


@pytest.mark.skipif(_core.cuda_device_count() < 2, reason="needs two GPUs")
def test_a_model_on_the_second_gpu(f32_file, reference_mode):
    # cuda:1 holds the weights and runs the steps, with the same logits as cuda:0,
    # while a model on cuda:0 keeps working beside it
    ids = tokens(PREFILL + DECODE, SPEC11["vocab_size"], 11)
    first = pyv4.Model(f32_file, device="cuda:0", max_gpu_experts=3)
    second = pyv4.Model(f32_file, device="cuda:1", max_gpu_experts=3)
    assert second.device == second.placement().device == "cuda:1"
    a, b = run(first, ids, "f32"), run(second, ids, "f32")
    check_close(b, a, "f32 on cuda:1 against cuda:0", tol=1e-4)
    assert np.isfinite(run(first, ids[:PREFILL], "f32")).all()


CHUNKS = [37, 100, 3, 1, 60, 1, 1, 29, 1, 17, 1, 1]  # 252 tokens: past 128 (HCA row, snapshot) and 16-token windows


def run_chunks(model, ids, kv, engine=None):
    """Logits of every position of ids fed in CHUNKS (then one token at a time), on engine if given."""
    s = model.new_session(kv=kv)
    out, p = [], 0
    for c in CHUNKS + [1] * (len(ids) - sum(CHUNKS)):
        if engine is None:
            out.append(s.eval(ids[p:p + c], logits="all"))
        else:
            out.append(engine.eval(s._state, ids[p:p + c], True, model.n_vocab))
        p += c
    return np.concatenate(out)


def all_gpu_engine(model, **kw):
    return _core.GpuEngine(model._engine, [(il, 0, SPEC11["n_routed_experts"]) for il in range(6)], **kw)


def check_gpu_vs_cpu(got, want, kv, what, agree=0.97):
    """f32: logits within the tolerance; other KV types: a rounding to the
    stored type can flip on the last bit of a projection (GPU vs CPU sums), so
    the top-1 choices are compared and the error printed."""
    if kv == "f32":
        return check_close(got, want, what)
    same = (got.argmax(1) == want.argmax(1)).mean()
    print(f"\n[cuda] model {what}: top-1 agreement {same:.4f}, max abs logit error "
          f"{float(np.max(np.abs(got - want))):.3e}")
    assert np.all(np.isfinite(got)) and same >= agree


@pytest.mark.parametrize("kv", ["f32", "bf16", "fp8"])
def test_gpu_kv_long_prompt_in_chunks(f32_file, reference_mode, kv):
    ids = tokens(sum(CHUNKS) + 12, SPEC11["vocab_size"], 11)
    want = run_chunks(pyv4.Model(f32_file), ids, kv)
    gpu = pyv4.Model(f32_file, device="cuda")
    held = {}
    for budget in (-1, 3):
        engine = all_gpu_engine(gpu, csa_rows_gpu=budget)
        got = run_chunks(gpu, ids, kv, engine)
        check_gpu_vs_cpu(got, want, kv, f"GPU KV {kv} in chunks, csa_rows_gpu={budget}")
        held[budget] = engine.kv_bytes
    assert 0 < held[3] < held[-1]  # 3 of the 66 CSA rows per layer on the GPU


@pytest.mark.parametrize("kv", ["f32", "fp8"])
def test_gpu_sessions_save_load_fork_truncate_interleaved(f32_file, reference_mode, tmp_path, kv):
    ids = tokens(PREFILL + 20, SPEC11["vocab_size"], 12)
    gpu, cpu = pyv4.Model(f32_file, device="cuda"), pyv4.Model(f32_file)
    tail = ids[PREFILL:PREFILL + 6]
    alone = gpu.new_session(kv=kv)
    alone.eval(ids[:100])
    alone.eval(ids[100:PREFILL])
    want = alone.eval(tail, logits="all")
    # the same steps with another session's in between (each switch copies the state anew)
    a, b = gpu.new_session(kv=kv), gpu.new_session(kv=kv)
    a.eval(ids[:100])
    b.eval(ids[50:90])
    a.eval(ids[100:PREFILL])
    b.eval(ids[90:91])
    fork = a.fork()
    check_close(a.eval(tail, logits="all"), want, f"{kv} interleaved sessions", tol=1e-5)
    check_close(fork.eval(tail, logits="all"), want, f"{kv} fork", tol=1e-5)
    # truncate (restores the snapshot at 256, re-evaluates 4 tokens on the GPU) and go on
    a.truncate(PREFILL)
    check_close(a.eval(tail, logits="all"), want, f"{kv} truncate", tol=1e-4)
    # saved after GPU steps: loaded on the GPU (the same continuation) and on the CPU
    a.save(tmp_path / "a.session")
    nxt = ids[PREFILL + 6:PREFILL + 12]
    cont = a.eval(nxt, logits="all")
    on_gpu = pyv4.Session.load(gpu, tmp_path / "a.session")
    check_close(on_gpu.eval(nxt, logits="all"), cont, f"{kv} saved on the GPU, loaded on the GPU", tol=1e-5)
    on_cpu = pyv4.Session.load(cpu, tmp_path / "a.session")
    check_gpu_vs_cpu(on_cpu.eval(nxt, logits="all"), cont, kv, f"{kv} saved on the GPU, loaded on the CPU", 0.8)
    # and back: steps on the CPU, saved, loaded on the GPU
    on_cpu.save(tmp_path / "b.session")
    back = pyv4.Session.load(gpu, tmp_path / "b.session")
    fin = ids[PREFILL + 12:PREFILL + 20]
    check_gpu_vs_cpu(back.eval(fin, logits="all"), on_cpu.eval(fin, logits="all"), kv,
                     f"{kv} saved on the CPU, loaded on the GPU", 0.8)
