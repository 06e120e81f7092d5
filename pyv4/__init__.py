"""pyv4: a quantized local runtime for DeepSeek-V4 with a Python session API."""

from ._core import ContextOverflowError, FormatError, GGUFFile
from .model import Model, Session

__all__ = [
    "ContextOverflowError",
    "FormatError",
    "GGUFFile",
    "Model",
    "Session",
]
__version__ = "0.1.0"
