"""The `pyv4` command as a user meets it: `pyv4 run` one-shot (text, --json,
stdin), clear one-line errors with exit code 2, and the `pyv4 chat` REPL
driven through a pseudo-terminal (streaming, Ctrl-C, /save, /load, /stats)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pexpect
import pytest


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    e["PYTHONUNBUFFERED"] = "1"
    # run from outside the source tree so `-m pyv4.cli` imports the installed package
    e["_CWD"] = e["XDG_CACHE_HOME"]
    return e


def pyv4(env, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "pyv4.cli", *args], env=env, input=stdin, cwd=env["_CWD"],
                          capture_output=True, text=True, timeout=300)


def test_run_json_on_demo_model(env):
    r = pyv4(env, "run", "demo", "-p", "Hello", "--json", "--max-tokens", "8", "--seed", "3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n_generated"] <= 8 and out["finish_reason"] in ("eos", "length", "stop")
    assert set(out) >= {"reasoning_content", "content", "tool_calls"}
    assert "random weights: output is meaningless" in r.stderr


def test_run_reads_stdin_and_is_reproducible(env):
    a = pyv4(env, "run", "demo", "-p", "-", "--json", "--max-tokens", "6", "--seed", "9", stdin="Bonjour")
    b = pyv4(env, "run", "demo", "-p", "Bonjour", "--json", "--max-tokens", "6", "--seed", "9")
    assert a.returncode == b.returncode == 0
    assert json.loads(a.stdout)["content"] == json.loads(b.stdout)["content"]
    assert json.loads(a.stdout)["n_prefilled"] == json.loads(b.stdout)["n_prefilled"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "/no/such/model.gguf", "-p", "x"], "model file not found"),
        (["run", "demo", "-p", "x", "--top-p", "2"], "top_p must be in (0, 1]"),
        (["run", "demo", "-p", "x", "--temperature", "-1"], "temperature must be >= 0"),
        (["chat", "/no/such/model.gguf"], "model file not found"),
        (["frobnicate"], "unknown command"),
    ],
)
def test_errors_are_one_line_exit_2(env, args, message):
    r = pyv4(env, *args)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if not l.startswith("pyv4: using the demo model")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_non_gguf_file(env, tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("this is not a model")
    r = pyv4(env, "run", str(bad), "-p", "x")
    assert r.returncode == 2 and "cannot load model" in r.stderr and "not a GGUF file" in r.stderr


def test_context_overflow_in_run(env):
    r = pyv4(env, "run", "demo", "-p", "word " * 20000, "--max-tokens", "1")
    assert r.returncode == 2 and "does not fit the context" in r.stderr


def test_chat_repl_through_a_pty(env, tmp_path):
    child = pexpect.spawn(sys.executable, ["-m", "pyv4.cli", "chat", "--max-tokens", "400", "--seed", "1"],
                          env=env, cwd=env["_CWD"], encoding="utf-8", timeout=120,
                          dimensions=(40, 200))
    try:
        child.expect("/help for commands")
        child.expect(">>> ")
        child.sendline("/help")
        child.expect("/save FILE")
        child.expect(">>> ")
        # a short reply runs to the end and reports speed and context use
        child.sendline("/nothink")
        child.expect("chat mode")
        child.sendline("Hello!")
        child.expect(r"\[(\d+) tokens, [0-9.]+ tok/s, context (\d+)/16384\]")
        # Ctrl-C during a long reply stops it and returns to the prompt
        child.sendline("Tell me a very long story")
        child.expect("story\r\n")  # the line was read (a ^C before that would discard it)
        child.expect(r"\S")  # and the reply streams
        child.sendcontrol("c")
        child.expect(r"\[interrupted\]")
        child.expect(">>> ")
        child.sendline("/stats")
        child.expect("n_tokens: (\\d+)")
        n_before = int(child.match.group(1))
        assert n_before > 0
        path = str(tmp_path / "conv.json")
        child.sendline(f"/save {path}")
        child.expect("saved")
        child.sendline("/reset")
        child.expect("conversation cleared")
        child.sendline(f"/load {path}")
        child.expect("restored (\\d+) messages")
        assert int(child.match.group(1)) >= 4
        child.sendline("/think")
        child.expect("thinking mode")
        child.sendline("And now?")
        child.expect(r"tok/s, context (\d+)/16384")
        assert int(child.match.group(1)) > n_before
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    saved = json.load(open(path))
    assert saved["format"] == "pyv4-chat" and saved["messages"][0]["role"] == "user"


def test_chat_ctrl_d_quits(env):
    child = pexpect.spawn(sys.executable, ["-m", "pyv4.cli", "chat"], env=env, cwd=env["_CWD"], encoding="utf-8",
                          timeout=120)
    child.expect(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_bench_reports_speeds(env):
    r = pyv4(env, "bench", "demo", "--prompt-tokens", "24", "--gen-tokens", "3", "--repeat", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt_tokens"] == 24 and out["prefill_tokens_per_s"] > 0
    assert out["decode_ms_per_token"] > 0 and out["threads"] >= 1


def test_bench_rejects_bad_arguments(env):
    r = pyv4(env, "bench", "demo", "--prompt-tokens", "0")
    assert r.returncode == 2 and "must be >= 1" in r.stderr
    r = pyv4(env, "bench", "demo", "--prompt-tokens", "20000")
    assert r.returncode == 2 and "exceed the context" in r.stderr


def test_info_on_the_demo_model(env, monkeypatch):
    from pyv4.demo import demo_model_path

    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    r = pyv4(env, "info", demo_model_path())
    assert r.returncode == 0, r.stderr
    assert "architecture: deepseek4" in r.stdout and "pyv4 can load it: yes" in r.stdout
    assert "embedded (gpt2, 129280 tokens)" in r.stdout
