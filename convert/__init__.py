"""pyv4.convert: DeepSeek-V4 safetensors (official or transformers layout) -> GGUF (llama.cpp ``deepseek4``).

Public API::

    main(argv=None) -> int                      # the `pyv4 convert` command
    convert(src_dir, out, recipe="mxfp4", *, mtp="auto", overrides=None,
            progress=None, log=None) -> ConvertResult
    load_config(src_dir) -> HParams             # normalised hyper-parameters
    ConvertError                                # raised for bad input (a ValueError)

The converter reads safetensors through numpy memory maps: it needs neither torch nor
safetensors (``pip install 'pyv4[convert]'`` installs them for the tests' fixtures).
"""

from .cli import main
from .config import HParams, load_config, parse_config
from .errors import ConvertError
from .pipeline import ConvertResult, convert, model_metadata

__all__ = [
    "ConvertError",
    "ConvertResult",
    "HParams",
    "convert",
    "load_config",
    "main",
    "model_metadata",
    "parse_config",
]
