"""`import pyv4`, `pyv4 info`, running a model and `pyv4 chat` never import torch or
transformers; the converter itself works with torch blocked too."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("transformers")

import tiny_models as tm  # noqa: E402


def test_runtime_and_converter_do_not_need_torch(tmp_path):
    m = tm.build_model("spec11", seed=0)
    tm.save_hf(m, tmp_path / "hf")
    tm.write_tiny_tokenizer(tmp_path / "hf", 512)
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("torch", "transformers", "safetensors"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import pyv4
        from pyv4.cli import main
        out = {str(tmp_path / "m.gguf")!r}
        assert main(["convert", {str(tmp_path / "hf")!r}, out, "--recipe", "q8", "-q"]) == 0
        assert main(["info", out]) == 0
        model = pyv4.Model(out)
        s = model.new_session()
        lg = s.eval([1, 2, 3])
        assert lg.shape == (512,)
        assert model.placement().device == "cpu"
        assert main(["plan", out, "--vram", "1GiB", "--ram", "8GiB", "--cpu-bandwidth", "10"]) == 0
        assert main(["plan", "v4-flash", "--vram", "96GiB", "--ram", "1TiB", "--cpu-bandwidth", "80"]) == 0
        chat = pyv4.Chat(model) if hasattr(pyv4, "Chat") else None
        try:
            main(["chat", "--help"])
        except SystemExit:
            pass
        bad = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "transformers", "safetensors"))
        print("IMPORTED", bad)
        assert not bad
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "IMPORTED []" in r.stdout
