"""``pyv4 requantize IN.gguf OUT.gguf --recipe R [--imatrix FILE] [--type PATTERN=TYPE ...]``:
turn an existing ``deepseek4`` GGUF (MXFP4, Q8_0, ...) into another recipe's file without
the original checkpoint.

Types: every tensor's role comes from its GGUF name (``names.gguf_role``) and its source
kind from its current type (a float type is itself; a quantized one counts as the
converter's FP8 sources do, so the rule "keep the source's float type" keeps a Q8_0 tensor
Q8_0 instead of inflating it); the recipe and ``--type`` overrides then choose the type
exactly as ``pyv4 convert`` does (convert/recipes.py). A tensor whose target type is its
current type is copied byte for byte; every other one is decoded to float32 (by the
core's threaded decoder where it knows the type, bit for bit gguf-py's, the format oracle
the tests check it against; else by gguf-py) and encoded with the
converter's encoders, importance-weighted for the low-bit types (convert/imatrix.py).

Memory: the input is memory-mapped; a tensor is read, decoded and encoded in chunks of
whole rows of at most ``names.CHUNK_VALUES`` (8M) values: 32 MB of float32, as much again
for the chunk's per-element importance, a few times that inside the decoder and encoder,
so a few hundred MB at most whatever the tensor (a V4-Flash expert tensor [256, 2048, 4096]
is 2.1G values, 256 chunks). Output goes through the converter's atomic writer: OUT
appears only complete and re-checked; an error or Ctrl-C leaves it as it was.

Metadata is copied entry by entry with its exact value types; only ``general.file_type``
becomes the recipe's. The tokenizer, the MTP hc head and everything else are unchanged.

Requantizing stacks errors: the output approximates the decoded input, not the original
weights, so its error is the new type's plus what the input's type had already lost
(llama.cpp's ``llama-quantize --allow-requantize`` does the same and warns likewise). From
Q8_0 (error ~1/254 of each 32-block's largest value) to 2 bits (relative RMSE ~0.3) the
second error dominates. One case is exact: MXFP4 that the converter repacked from the
official FP4 experts decodes to exactly the checkpoint's values, so requantizing such a file
gives the bytes a direct conversion of the checkpoint to that recipe gives.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFReader, GGUFValueType

from . import names
from .cli import run_command, type_summary
from .errors import ConvertError
from .imatrix import HOWTO
from .pipeline import choose_types, importance
from .recipes import RECIPES, TYPE_NAMES, decode, get_recipe, parse_override
from .tokenizer import KV
from .writer import ARCH, OutTensor, check_output, write_gguf_logged

FILE_TYPE_KEY = "general.file_type"
# current type -> the source kind the recipes know (see the module docstring)
_SRC_KIND = {T.F32: "F32", T.F16: "F16", T.BF16: "BF16"}


@dataclass
class InTensor:
    name: str
    shape: tuple[int, ...]  # torch order
    type: T
    raw: np.ndarray         # the tensor's bytes in the input's memory map, uint8 [rows, row bytes]
    role: str

    def chunks(self, decoded: bool) -> Iterator[np.ndarray]:
        """Blocks of whole rows: their bytes, or (``decoded``) their float32 values."""
        cols = self.shape[-1]
        step = names.rows_per_chunk(cols)
        for r0 in range(0, self.raw.shape[0], step):
            block = self.raw[r0:r0 + step]
            if not decoded:
                yield block
                continue
            try:
                yield decode_rows(block, self.type, cols)
            except (NotImplementedError, ValueError) as e:
                raise ConvertError(f"cannot decode {self.type.name} ({e})") from None


# Types the core decodes (its scalar reference, bit for bit gguf-py's: tests check
# both) on all cores, 4-15x gguf-py's single-threaded numpy per core; gguf-py's
# decoders stay for every other type a community file may hold.
CORE_DECODES = {T.F16, T.BF16, T.Q8_0, T.Q4_0, T.IQ4_NL, T.Q4_K, T.MXFP4, T.Q2_K, T.Q3_K, T.IQ2_XXS, T.IQ4_XS,
                T.IQ3_XXS, T.IQ2_XS, T.IQ1_S, T.IQ1_M, T.IQ3_S, T.IQ2_S, T.Q5_K, T.Q6_K}


def decode_rows(block: np.ndarray, t: T, cols: int) -> np.ndarray:
    """float32 [rows, cols] of whole GGUF rows of type ``t``."""
    if t in CORE_DECODES:
        from .._core import quant_dequantize_rows  # the core ships with the converter (pyv4.convert)

        return quant_dequantize_rows(t.name, block, cols)  # (made contiguous by the binding)
    return np.asarray(decode(block, t), np.float32).reshape(-1, cols)


@dataclass
class RequantizeResult:
    out: Path
    types: dict[str, T]
    copied: list[str] = field(default_factory=list)  # tensors written byte for byte
    notes: list[str] = field(default_factory=list)


def _field_kv(f) -> KV:
    vtype = f.types[0]
    sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
    if vtype == GGUFValueType.ARRAY and (len(f.types) != 2 or not f.data):
        raise ConvertError(f"metadata {f.name!r}: nested or empty arrays cannot be copied")
    try:
        value = f.contents()
    except UnicodeDecodeError as e:
        raise ConvertError(f"metadata {f.name!r}: string is not UTF-8 ({e})") from None
    return KV(f.name, vtype, value, sub)


def input_shards(path: Path) -> list[str]:
    """The files of the input model: itself, or all shards of a split model (llama.cpp's
    gguf-split naming), found and checked by the core from any one of them."""
    if not path.is_file():
        raise ConvertError(f"{path}: input file does not exist")
    from .._core import GGUFFile  # the core ships with the converter (pyv4.convert)

    try:
        return GGUFFile(str(path)).shards
    except ValueError as e:
        raise ConvertError(f"{path}: not a readable GGUF file ({e})") from None


def read_input(path: Path) -> tuple[list[KV], list[InTensor]]:
    """The input's metadata (minus the architecture, which the writer adds first, and the
    split keys) and tensors (views of its memory maps, which live as long as they do);
    refuses anything but a ``deepseek4`` GGUF of names the converter writes. A split
    model (llama.cpp's gguf-split shards) is read from any of its shards."""
    shards = input_shards(path)
    try:
        readers = [GGUFReader(s) for s in shards]
    except Exception as e:  # noqa: BLE001 - gguf-py raises several types for a damaged file
        raise ConvertError(f"{path}: not a readable GGUF file ({e})") from None
    r = readers[0]
    arch = r.fields.get("general.architecture")
    arch = arch.contents() if arch is not None else None
    if arch != ARCH:
        raise ConvertError(f"{path}: architecture {arch!r} is not {ARCH!r} (a DeepSeek-V4 GGUF)")
    kvs = [_field_kv(f) for name, f in r.fields.items()
           if not name.startswith(("GGUF.", "split.")) and name != "general.architecture"]
    tensors = []
    for shard, r in zip(shards, readers):
        for t in r.tensors:
            role = names.gguf_role(t.name)
            if role is None:
                raise ConvertError(f"{shard}: tensor {t.name!r} is not part of a {ARCH} model")
            shape = tuple(int(s) for s in reversed(list(t.shape)))
            bs, ts = GGML_QUANT_SIZES[t.tensor_type]
            rows = int(np.prod(shape[:-1], dtype=np.int64))
            raw = r.data[t.data_offset:t.data_offset + t.n_bytes].reshape(rows, shape[-1] // bs * ts)
            tensors.append(InTensor(t.name, shape, t.tensor_type, raw, role))
    return kvs, tensors


def _n_layer(kvs: list[KV]) -> int:
    val = {kv.key: kv.value for kv in kvs}
    return int(val.get(f"{ARCH}.block_count", 0)) - int(val.get(f"{ARCH}.nextn_predict_layers", 0))


def requantize(src: Path | str, out: Path | str, recipe: str, *, overrides: list[tuple[str, str]] | None = None,
               imatrix: Path | str | None = None, progress: Callable[..., None] | None = None,
               log: Callable[[str], None] | None = None) -> RequantizeResult:
    """Write ``src`` under ``recipe`` to ``out`` (see the module docstring). Everything is
    validated before the output is opened. Raises ``ConvertError`` for bad input.
    ``progress`` and ``log`` as in ``convert()``."""
    src, out = Path(src), check_output(out)
    if any(Path(s).resolve() == out.resolve() or (out.exists() and os.path.samefile(s, out))
           for s in input_shards(src)):
        raise ConvertError(f"{out}: the output would overwrite the input; choose another path")
    kvs, inputs = read_input(src)
    rec = get_recipe(recipe, overrides, n_layer=_n_layer(kvs))
    types, notes = choose_types(rec, [(t.name, t.shape, t.role, _SRC_KIND.get(t.type, "FP8")) for t in inputs])
    weights, im_notes = importance({t.name: t.shape for t in inputs}, types, imatrix)
    notes += im_notes
    kvs = [KV(FILE_TYPE_KEY, GGUFValueType.UINT32, rec.file_type) if kv.key == FILE_TYPE_KEY else kv
           for kv in kvs]
    if all(kv.key != FILE_TYPE_KEY for kv in kvs):
        kvs.insert(0, KV(FILE_TYPE_KEY, GGUFValueType.UINT32, rec.file_type))
    copied = [t.name for t in inputs if types[t.name] == t.type]
    if len(copied) < len(inputs):
        notes.append(f"{len(inputs) - len(copied)} tensors decoded and quantized again: their error adds "
                     "to what the input's types had already lost (`pyv4 requantize --help`)")
    tensors = [OutTensor(t.name, t.shape, types[t.name], t.role,
                         (lambda t=t: t.chunks(decoded=types[t.name] != t.type)),
                         imatrix=weights.get(t.name), encoded=types[t.name] == t.type)
               for t in inputs]
    write_gguf_logged(out, kvs, tensors, notes, log, progress)
    return RequantizeResult(out=out, types=types, copied=copied, notes=notes)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyv4 requantize",
        description="Requantize a DeepSeek-V4 GGUF (e.g. the MXFP4 or Q8_0 conversion) to another recipe "
                    "without the original checkpoint: tensors keep their bytes where the recipe keeps "
                    "their type; the others are decoded and quantized again, which adds the new error to "
                    "the one the input already had (as llama-quantize --allow-requantize does). From an "
                    "MXFP4 conversion of the official checkpoint the result is exactly a direct conversion.")
    p.add_argument("src", metavar="IN.gguf", help="the deepseek4 GGUF to requantize (of a split model: any of its shards)")
    p.add_argument("out", metavar="OUT.gguf", help="output file (appears only when complete)")
    p.add_argument("--recipe", choices=list(RECIPES), required=True,
                   help="the types to write, as in `pyv4 convert --recipe` (e.g. q2, q2q4)")
    p.add_argument("--type", dest="types", action="append", default=[], metavar="PATTERN=TYPE",
                   help=f"override the type of matching tensors (types: {', '.join(TYPE_NAMES)}); "
                        "repeatable, first match wins")
    p.add_argument("--imatrix", metavar="FILE",
                   help=f"importance matrix for the low-bit types; required for IQ2_XXS ({HOWTO})")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad input, 130 interrupted)."""
    args = _parser().parse_args(argv)

    def work(log, progress) -> str:
        res = requantize(args.src, args.out, args.recipe, overrides=[parse_override(t) for t in args.types],
                         imatrix=args.imatrix, progress=progress, log=log)
        return (f"wrote {res.out} ({type_summary(res.types)}; recipe {args.recipe}; "
                f"{len(res.copied)} tensors copied unchanged)")

    return run_command("requantize", args.quiet, work)
