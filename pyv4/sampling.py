"""Sampling parameters. The arithmetic runs in C++ (csrc/sample/sampler.cpp);
this module validates parameters and carries the stopping rules."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import _core


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop.

    temperature 0 is greedy. top_k 0, top_p 1 and min_p 0 disable those filters.
    Penalties apply to the session's tokens (the last `penalty_last_n`, 0 = all).
    Generation stops at EOS (unless ignore_eos), at any of `stop` strings (not
    included in the output), or after `max_tokens` tokens."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 0
    seed: int | None = None
    max_tokens: int | None = 256
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> None:
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 0):
            raise ValueError(f"invalid sampling parameter: max_tokens must be an int >= 0, not {self.max_tokens!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"invalid sampling parameter: seed must be an int >= 0, not {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("invalid sampling parameter: stop strings must be non-empty strings")
        self._core_params().validate()

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)

    def _core_params(self) -> "_core.SamplerParams":
        p = _core.SamplerParams()
        try:
            p.temperature = float(self.temperature)
            p.top_k = int(self.top_k)
            p.top_p = float(self.top_p)
            p.min_p = float(self.min_p)
            p.repetition_penalty = float(self.repetition_penalty)
            p.presence_penalty = float(self.presence_penalty)
            p.frequency_penalty = float(self.frequency_penalty)
            p.penalty_last_n = int(self.penalty_last_n)
        except (TypeError, ValueError) as e:
            raise ValueError(f"invalid sampling parameter: {e}") from None
        p.seed = int(self.seed if self.seed is not None else np.random.SeedSequence().entropy % (1 << 63))
        return p

    def sampler(self) -> "_core.Sampler":
        return _core.Sampler(self._core_params())


GREEDY = SamplingParams(temperature=0.0)
