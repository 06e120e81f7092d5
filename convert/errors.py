"""The one exception type the converter raises for bad input."""

from __future__ import annotations


class ConvertError(ValueError):
    """A source folder that cannot be converted (bad config, missing/unexpected/mis-shaped tensor, ...).

    The message always names the offending file and, where there is one, the tensor.
    """
