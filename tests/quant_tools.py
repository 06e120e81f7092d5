"""Random GGML weights and the error bound of the fast weight products, shared by
the CPU kernel tests (test_kernels.py) and the CUDA ones (test_cuda_*.py).
numpy only at import time: the GPU check runs on an image without gguf."""

import numpy as np

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "IQ4_NL", "Q4_K", "MXFP4"]
INT_TYPES = {"Q8_0", "Q4_0", "IQ4_NL", "Q4_K", "MXFP4"}
# The super-block types of issue #16 and the K types of llama-quantize's ladders
# (output heads, attention of community files) (test_lowbit.py): bytes per super-block of
# 256, and the byte offsets of their f16 scales (IQ1_M spreads its scale over the
# top nibbles of its scale words: f16_bits / put_f16_bits).
LOWBIT = {"Q2_K": 84, "Q3_K": 110, "IQ2_XXS": 66, "IQ4_XS": 136, "Q5_K": 176, "Q6_K": 210,
          "IQ3_XXS": 98, "IQ2_XS": 74, "IQ1_S": 50, "IQ1_M": 56, "IQ3_S": 110, "IQ2_S": 82}
F16_AT = {"Q2_K": [80, 82], "Q3_K": [108], "IQ2_XXS": [0], "IQ4_XS": [0], "IQ3_XXS": [0],
          "IQ2_XS": [0], "IQ1_S": [0], "IQ1_M": [], "IQ3_S": [0], "IQ2_S": [0], "Q5_K": [0, 2], "Q6_K": [208]}
BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18), "IQ4_NL": (32, 18),
         "Q4_K": (256, 144), "MXFP4": (32, 17), **{t: (256, b) for t, b in LOWBIT.items()}}
# The types whose fast path multiplies int8 activations (check_fast's bound).
CPU_INT_TYPES = INT_TYPES | set(LOWBIT)
# What the GPU multiplies (csrc/cuda/matmul.h): every type, the low-bit ones as integer types.
GPU_TYPES = TYPES + sorted(LOWBIT)
GPU_INT_TYPES = CPU_INT_TYPES


def _rand_f16(rng, shape, lo, hi):
    """Finite float16 values with random sign and magnitude in [lo, hi)."""
    mag = rng.uniform(lo, hi, size=shape)
    sign = rng.choice([-1.0, 1.0], size=shape)
    return (mag * sign).astype(np.float16)


def f16_bits(type_name, raw):
    """The f16 scale bits of super-blocks raw [nb, bytes] as uint16 [nb, scales]."""
    if type_name == "IQ1_M":
        w = np.ascontiguousarray(raw[:, 48:56]).view(np.uint16)
        return ((w[:, 0] >> 12) | ((w[:, 1] >> 8) & 0xF0) | ((w[:, 2] >> 4) & 0xF00)
                | (w[:, 3] & 0xF000)).astype(np.uint16)[:, None]
    return np.stack([np.ascontiguousarray(raw[:, o:o + 2]).view(np.uint16)[:, 0]
                     for o in F16_AT[type_name]], axis=1)


def put_f16_bits(type_name, raw, h):
    """Sets the f16 scale bits of super-blocks raw [nb, bytes] to h [nb, scales]."""
    h = np.asarray(h, np.uint16).reshape(raw.shape[0], -1)
    if type_name == "IQ1_M":
        w = np.ascontiguousarray(raw[:, 48:56]).view(np.uint16)
        for i in range(4):  # word i's top nibble holds bits 4i..4i+3 of d
            w[:, i] = (w[:, i] & 0x0FFF) | (((h[:, 0] >> (4 * i)) & 15) << 12)
        raw[:, 48:56] = w.view(np.uint8)
        return
    for k, off in enumerate(F16_AT[type_name]):
        raw[:, off:off + 2] = h[:, k:k + 1].view(np.uint8).reshape(-1, 2)


def _set_f16(type_name, raw, values):
    put_f16_bits(type_name, raw, values.astype(np.float16).view(np.uint16))


def random_blocks(type_name, nb, rng, full_range=False):
    """Raw low-bit super-blocks [nb, bytes]. full_range: any finite f16 scale bit
    pattern, subnormals included; otherwise scales giving values O(0.01..1)."""
    raw = rng.integers(0, 256, size=(nb, LOWBIT[type_name]), dtype=np.uint8)
    n_scales = f16_bits(type_name, raw).shape[1]
    if full_range:
        h = rng.integers(0, 1 << 16, size=(nb, n_scales), dtype=np.uint16)
        h = np.where((h & 0x7C00) == 0x7C00, h & 0x83FF, h).astype(np.uint16)
        put_f16_bits(type_name, raw, h)
    else:
        lo, hi = {"Q2_K": (0.002, 0.01), "Q3_K": (0.0005, 0.002), "IQ2_XXS": (0.0005, 0.002),
                  "IQ4_XS": (0.00002, 0.0001), "IQ3_XXS": (0.0002, 0.0008), "IQ2_XS": (0.0005, 0.002),
                  "IQ1_S": (0.005, 0.02), "IQ1_M": (0.005, 0.02), "IQ3_S": (0.0005, 0.002),
                  "IQ2_S": (0.0005, 0.002), "Q5_K": (0.0003, 0.001), "Q6_K": (0.0003, 0.001)}[type_name]
        _set_f16(type_name, raw, rng.uniform(lo, hi, size=(nb, n_scales)))
    return raw


def random_weight(type_name, rows, cols, rng, full_range=False):
    """Raw GGML bytes [rows, row_bytes]. full_range: any finite scale bit pattern
    (for the decode test); otherwise scales chosen so values are O(0.01..1)."""
    if type_name in LOWBIT:
        return random_blocks(type_name, rows * cols // 256, rng, full_range).reshape(rows, -1)
    bs, bb = BLOCK[type_name]
    nb = rows * cols // bs
    if type_name == "F32":
        return rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    if type_name == "F16":
        return rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    if type_name == "BF16":
        f = rng.standard_normal((rows, cols)).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1)
    raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    if full_range:
        if type_name in ("Q8_0", "Q4_0", "IQ4_NL", "Q4_K"):
            # any finite f16 (exponent field != 31), subnormals included
            nh = 2 if type_name == "Q4_K" else 1
            h = rng.integers(0, 1 << 16, size=(nb, nh), dtype=np.uint16)
            h = np.where((h & 0x7C00) == 0x7C00, h & 0x83FF, h).astype(np.uint16)
            raw[:, : 2 * nh] = h.view(np.uint8).reshape(nb, 2 * nh)
        # MXFP4: every exponent byte 0..255 is already allowed
    else:
        if type_name == "Q8_0":
            raw[:, :2] = _rand_f16(rng, (nb, 1), 0.002, 0.01).view(np.uint8)
        elif type_name == "Q4_0":
            raw[:, :2] = _rand_f16(rng, (nb, 1), 0.01, 0.1).view(np.uint8)
        elif type_name == "IQ4_NL":  # levels up to 127
            raw[:, :2] = _rand_f16(rng, (nb, 1), 0.001, 0.008).view(np.uint8)
        elif type_name == "Q4_K":
            raw[:, 0:2] = np.abs(_rand_f16(rng, (nb, 1), 0.0005, 0.002)).view(np.uint8)
            raw[:, 2:4] = np.abs(_rand_f16(rng, (nb, 1), 0.0005, 0.002)).view(np.uint8)
        elif type_name == "MXFP4":
            raw[:, 0] = rng.integers(120, 130, size=nb)
    return raw.reshape(rows, -1)


def gguf_dequant(type_name, raw, rows, cols):
    # imported here: the GPU check (tests/test_cuda_*.py) runs where gguf may be missing
    from gguf import GGMLQuantizationType as QT
    from gguf import quants as gq

    return gq.dequantize(np.ascontiguousarray(raw).reshape(rows, -1), QT[type_name]).reshape(rows, cols)


def check_fast(type_name, W, x, y):
    """Asserts y = x W^T within the fast path's bound (for the integer types: the
    int8 activation quantization moves each activation by at most amax_block/254;
    amax/250 leaves room for fp32 rounding); returns the worst error / bound."""
    ref = x.astype(np.float64) @ W.astype(np.float64).T
    absw = np.abs(W.astype(np.float64))
    if type_name in CPU_INT_TYPES:
        n, cols = x.shape
        amax = np.abs(x).reshape(n, cols // 32, 32).max(axis=2)
        bound = np.repeat(amax, 32, axis=1) @ absw.T / 250.0
        bound += 1e-5 * (np.abs(x.astype(np.float64)) @ absw.T) + 1e-30
    else:
        bound = 1e-5 * (np.abs(x.astype(np.float64)) @ absw.T) + 1e-30
    err = np.abs(y.astype(np.float64) - ref)
    worst = np.max(err / bound)
    assert worst <= 1.0, f"{type_name}: error {worst:.3f} x bound"
    return worst


def reference_dequant(raw, type_name, rows, cols):
    """[rows, cols] float32 by the scalar reference decode (quant_dequantize,
    equal to gguf.quants bit for bit: test_kernels.py)."""
    from pyv4 import _core

    raw = np.ascontiguousarray(raw).reshape(rows, -1)
    with np.errstate(over="ignore"):
        return np.stack([_core.quant_dequantize(type_name, raw[r], cols) for r in range(rows)])
