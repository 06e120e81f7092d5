"""pyv4: a quantized local runtime for DeepSeek-V4 with a Python session API."""

from ._core import ContextOverflowError, FormatError, GGUFFile
from .device import DeviceError
from .model import Model, Session
from .placement import Placement, PlacementError
from .prompt_cache import PromptCache
from .sampling import SamplingParams
from .chat_format import ReplyEvent, ReplyStream, parse_completion, render_chat
from .tokenizer import StreamDecoder, Tokenizer
from .chat import Chat

__all__ = [
    "Chat",
    "ReplyEvent",
    "ReplyStream",
    "StreamDecoder",
    "Tokenizer",
    "SamplingParams",
    "parse_completion",
    "render_chat",
    "ContextOverflowError",
    "DeviceError",
    "Placement",
    "PlacementError",
    "FormatError",
    "GGUFFile",
    "Model",
    "PromptCache",
    "Session",
]
__version__ = "0.1.0"
