"""An eval that fails midway, after some of its KV rows were written: the KV
backing file cannot grow (a file-size limit, as on a full disk). Shared by the
CPU and GPU tests (numpy and pyv4 only: it also runs in bench/gpu_check.sh's
image)."""

import os
import subprocess
import sys

# Run in a child process, so that the limit and SIGXFSZ stay there.
_SCRIPT = r"""
import os, resource, signal, sys
import numpy as np
import pyv4

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ftruncate past the limit: EFBIG
model_path, kv_path, device = sys.argv[1], sys.argv[2], sys.argv[3]
m = pyv4.Model(model_path, device=device)
toks = np.random.default_rng(11).integers(0, m.n_vocab, 300)
s = pyv4.Session(m, kv="f32", path=kv_path)
s.eval(toks[:100])
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(kv_path), hard))
try:
    s.eval(toks[100:200])
except ValueError as e:
    print("error:", e)
print("n_tokens", s.n_tokens)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
got = [s.eval(toks[100:200], logits="all"), s.eval(toks[200:300], logits="all")]
ref = m.new_session(kv="f32")
ref.eval(toks[:100])
want = [ref.eval(toks[100:200], logits="all"), ref.eval(toks[200:300], logits="all")]
print("max diff", max(float(abs(g - w).max()) for g, w in zip(got, want)))
print("scale", max(float(abs(w).max()) for w in want))
"""


def eval_that_fails_midway(model_path, tmp_path, device="cpu"):
    """(error message, the session's n_tokens after the error, max logit difference
    of its next evals from a session that never failed, max |logit| of those)."""
    import pyv4

    # the same pyv4 as this process (not a source checkout the child's cwd would put first)
    site = os.path.dirname(os.path.dirname(os.path.abspath(pyv4.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, str(model_path), str(tmp_path / "s.kv"), device],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4, r.stdout
    return lines[0], int(lines[1].split()[1]), float(lines[2].split()[2]), float(lines[3].split()[1])
