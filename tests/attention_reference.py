"""float64 numpy reference of the sink-softmax attention (spec §3.4), shared by
the CPU kernel tests (test_kv_kernels.py) and the CUDA ones (test_cuda_ops.py)."""

import numpy as np


def attend_numpy(q, rows, sinks, scale):
    """out[h] = sum_j softmax_j(q_h . row_j * scale; sink_h in the denominator) row_j."""
    q, rows = q.astype(np.float64), rows.astype(np.float64)
    logits = q @ rows.T * scale
    m = np.maximum(logits.max(axis=1, initial=-np.inf), sinks)
    e = np.exp(logits - m[:, None])
    denom = e.sum(axis=1) + np.exp(sinks - m)
    return (e / denom[:, None]) @ rows
