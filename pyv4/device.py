"""Device names of the API (`Model(device=...)`, `--device`): "cpu", "cuda" or
"cuda:N", and the check that a CUDA device can be used at all. The CUDA
backend is optional: `import pyv4` and everything on the CPU work on machines
with no GPU, no driver and no CUDA toolkit; asking for "cuda" there raises
DeviceError saying why."""

from __future__ import annotations

import re

_RE_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


class DeviceError(RuntimeError):
    """The requested device cannot be used (no CUDA backend, no GPU, no driver, ...)."""


def parse_device(device) -> tuple[str, int]:
    """("cpu", 0) or ("cuda", N); ValueError for anything else."""
    m = _RE_DEVICE.match(device) if isinstance(device, str) else None
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ValueError(f'device must be "cpu", "cuda" or "cuda:N", not {device!r}')
    return m.group(1), int(m.group(2) or 0)


def require_cuda(index: int) -> None:
    """Raises DeviceError unless this build has a CUDA backend that sees a GPU.
    The core reports it through `_core.cuda_available() -> (ok, reason)`; a
    build without that function was compiled without CUDA support."""
    from . import _core

    probe = getattr(_core, "cuda_available", None)
    if probe is None:
        raise DeviceError(f"cuda:{index} requested, but this build of pyv4 has no CUDA backend "
                          "(it was compiled without CUDA support); use device=\"cpu\"")
    ok, reason = probe()
    if not ok:
        raise DeviceError(f"cuda:{index} requested, but CUDA cannot be used: {reason}")
    n = _core.cuda_device_count()
    if index >= n:
        raise DeviceError(f"cuda:{index}: no such device (this machine has {n} CUDA device{'s' if n != 1 else ''})")
