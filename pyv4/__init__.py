"""pyv4: a quantized local runtime for DeepSeek-V4 with a Python session API."""

from ._core import ContextOverflowError, FormatError, GGUFFile
try:
    from .model import Model, Session
except ImportError:  # engine not built yet
    pass

__all__ = [
    "ContextOverflowError",
    "FormatError",
    "GGUFFile",
    "Model",
    "Session",
]
__version__ = "0.1.0"
