"""`pyv4 chat` (interactive REPL) and `pyv4 run` (one-shot); dispatched from
pyv4/cli.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .sampling import SamplingParams

DIM, RESET, BOLD = "\x1b[2m", "\x1b[0m", "\x1b[1m"


class UserError(Exception):
    """Ends the command with a one-line message and exit code 2."""


def _add_device_args(ap: argparse.ArgumentParser) -> None:
    """-t/--threads, --device and --vram: how a model is loaded (chat, run, bench)."""
    ap.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all)")
    ap.add_argument("--device", default="cpu", help='"cpu" (default), "cuda" or "cuda:N"')
    ap.add_argument("--vram", default=None, help="GPU memory to use with a CUDA device, e.g. 24GiB "
                    "(default: the free memory)")
    ap.add_argument("--expert-freq", default=None, metavar="FILE",
                    help="with a CUDA device: routing counts (a GGUF imatrix or a .npy [layers, experts]); "
                         "the most used experts go to the GPU first")


def _add_model_args(ap: argparse.ArgumentParser, model_optional: bool) -> None:
    if model_optional:
        ap.add_argument("model", nargs="?", help="a deepseek4 GGUF file (default: the built-in demo model)")
    else:
        ap.add_argument("model", help="a deepseek4 GGUF file, or 'demo' for the built-in demo model")
    _add_device_args(ap)
    ap.add_argument("--system", default=None, help="system prompt")
    ap.add_argument("--think", action="store_true", help="thinking mode (reasoning before the answer)")
    ap.add_argument("--max-effort", action="store_true", help='thinking mode with reasoning_effort="max"')
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--min-p", type=float, default=0.0)
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--seed", type=int, default=None)


def _params(a) -> SamplingParams:
    try:
        return SamplingParams(temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, min_p=a.min_p,
                              repetition_penalty=a.repetition_penalty, max_tokens=a.max_tokens, seed=a.seed)
    except ValueError as e:
        raise UserError(str(e)) from None


def _load(a):
    from . import DeviceError, FormatError, Model

    path = a.model
    demo = path in (None, "demo")
    if demo:
        from .demo import demo_model_path

        print("pyv4: using the demo model (random weights: output is meaningless)", file=sys.stderr)
        path = demo_model_path()
    if a.threads is not None and a.threads < 1:
        raise UserError("--threads must be >= 1")
    if not os.path.exists(path):
        raise UserError(f"model file not found: {path}")
    if not os.access(path, os.R_OK):
        raise UserError(f"model file is not readable: {path}")
    try:
        model = Model(path, threads=a.threads, device=a.device, vram=a.vram, expert_freq=a.expert_freq)
    except FormatError as e:
        raise UserError(f"cannot load model: {e}") from None
    except (DeviceError, ValueError) as e:  # the device or vram
        raise UserError(str(e)) from None
    try:
        model.tokenizer
    except (ValueError, OSError) as e:
        raise UserError(f"the model file has no usable tokenizer: {e}") from None
    return model


def _run_guarded(name: str, fn, argv) -> int:
    try:
        return fn(argv)
    except UserError as e:
        print(f"pyv4 {name}: error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------- pyv4 run


def _cmd_run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pyv4 run", description="Answer one prompt and exit.")
    _add_model_args(ap, model_optional=False)
    ap.add_argument("-p", "--prompt", required=True, help="the user message; '-' reads it from stdin")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    a = ap.parse_args(argv)
    params = _params(a)
    prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
    model = _load(a)
    from .chat import Chat

    chat = Chat(model, system=a.system, thinking=a.think or a.max_effort,
                reasoning_effort="max" if a.max_effort else None, params=params)
    tty = sys.stdout.isatty()

    def show(ev):
        if a.json:
            return
        if ev.kind == "reasoning":
            sys.stderr.write(ev.text)
            sys.stderr.flush()
        elif ev.kind == "content":
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        else:
            sys.stdout.write(("\n" if tty else "") + json.dumps({"tool_call": ev.tool_call}) + "\n")

    try:
        reply = chat.send(prompt, on_event=show)
    except ValueError as e:
        raise UserError(str(e)) from None
    if a.json:
        print(json.dumps({k: reply[k] for k in ("reasoning_content", "content", "tool_calls", "finish_reason",
                                                "n_prefilled", "n_generated", "seconds")}, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
    return 0


# ---------------------------------------------------------------- pyv4 chat

HELP = """commands:
  /think      thinking mode (reasoning shown dimmed)      /nothink   chat mode
  /reset      forget the conversation                    /stats     session statistics
  /save FILE  save the conversation (and its KV state)   /load FILE restore it
  /quit       leave (Ctrl-D works too; Ctrl-C stops a reply)"""


def _readline_setup():
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        return None
    import readline

    from .demo import cache_dir

    hist = os.path.join(cache_dir(), "chat_history")
    try:
        readline.read_history_file(hist)
    except OSError:
        pass
    readline.set_history_length(1000)
    return hist


def _save_history(hist):
    if hist:
        import readline

        try:
            os.makedirs(os.path.dirname(hist), exist_ok=True)
            readline.write_history_file(hist)
        except OSError:
            pass


def _chat_save(chat, path: str) -> str:
    chat.session.save(path + ".kv")
    data = {"format": "pyv4-chat", "version": 1, "thinking": chat.thinking, "messages": chat.messages,
            "model": chat.model.path, "kv_file": os.path.basename(path + ".kv")}
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    os.replace(tmp, path)
    return "conversation and KV state"


def _chat_load(chat, path: str) -> str:
    from . import Session

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("format") != "pyv4-chat":
        raise ValueError(f"{path} is not a pyv4 chat file")
    chat.messages = data["messages"]
    chat.thinking = bool(data.get("thinking"))
    kv = data.get("kv_file")
    if kv:
        chat.session = Session.load(chat.model, os.path.join(os.path.dirname(path) or ".", kv))
        return f"restored {len(chat.messages)} messages and {chat.session.n_tokens} tokens of KV state"
    chat.session.reset()
    return f"restored {len(chat.messages)} messages (the prompt is re-read on the next turn)"


def _cmd_chat(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pyv4 chat", description="Chat with a DeepSeek-V4 model.")
    _add_model_args(ap, model_optional=True)
    a = ap.parse_args(argv)
    params = _params(a)
    model = _load(a)
    from .chat import Chat

    chat = Chat(model, system=a.system, thinking=a.think or a.max_effort,
                reasoning_effort="max" if a.max_effort else None, params=params)
    tty = sys.stdout.isatty()
    hist = _readline_setup() if sys.stdin.isatty() else None
    print(f"pyv4 chat — {os.path.basename(model.path)}, context {model.n_ctx} tokens. /help for commands.")
    try:
        while True:
            try:
                line = input(f"{BOLD}>>> {RESET}" if tty else ">>> ")
            except KeyboardInterrupt:
                print()
                continue
            except EOFError:
                print()
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                cmd, _, arg = line.partition(" ")
                arg = arg.strip()
                if cmd in ("/quit", "/exit"):
                    break
                elif cmd == "/help":
                    print(HELP)
                elif cmd == "/think":
                    chat.thinking = True
                    print("thinking mode")
                elif cmd == "/nothink":
                    chat.thinking = False
                    print("chat mode")
                elif cmd == "/reset":
                    chat.reset()
                    print("conversation cleared")
                elif cmd == "/stats":
                    d = chat.session.stats()
                    d.update(messages=len(chat.messages), context=model.n_ctx)
                    for k, v in d.items():
                        print(f"  {k}: {v}")
                elif cmd in ("/save", "/load"):
                    if not arg:
                        print(f"usage: {cmd} FILE")
                        continue
                    try:
                        what = _chat_save(chat, arg) if cmd == "/save" else _chat_load(chat, arg)
                        print(("saved " + what + f" to {arg}") if cmd == "/save" else what)
                    except (OSError, ValueError, KeyError) as e:
                        print(f"error: {e}")
                else:
                    print(f"unknown command {cmd}; /help lists them")
                continue
            _reply(chat, line, tty)
    finally:
        _save_history(hist)
    return 0


def _reply(chat, text: str, tty: bool) -> None:
    in_reasoning = False

    def show(ev):
        nonlocal in_reasoning
        if ev.kind == "reasoning":
            if not in_reasoning and tty:
                sys.stdout.write(DIM)
            in_reasoning = True
            sys.stdout.write(ev.text)
        else:
            if in_reasoning:
                sys.stdout.write((RESET if tty else "") + "\n")
                in_reasoning = False
            if ev.kind == "content":
                sys.stdout.write(ev.text)
            else:
                sys.stdout.write(f"\n[tool call] {json.dumps(ev.tool_call, ensure_ascii=False)}\n")
        sys.stdout.flush()

    t0 = time.perf_counter()
    try:
        reply = chat.send(text, on_event=show)
        status = ""
    except KeyboardInterrupt:
        reply = chat.last_reply or {}
        status = " [interrupted]"
    except ValueError as e:  # e.g. the conversation no longer fits the context
        print(f"error: {e}")
        if chat.messages and chat.messages[-1].get("role") == "user":
            chat.messages.pop()
        return
    if in_reasoning and tty:
        sys.stdout.write(RESET)
    n = reply.get("n_generated", 0)
    dt = max(reply.get("seconds", time.perf_counter() - t0), 1e-9)
    info = f"[{n} tokens, {n / dt:.1f} tok/s, context {chat.session.n_tokens}/{chat.model.n_ctx}]{status}"
    print("\n" + (DIM + info + RESET if tty else info))


def chat_main(argv: list[str]) -> int:
    return _run_guarded("chat", _cmd_chat, argv)


def run_main(argv: list[str]) -> int:
    return _run_guarded("run", _cmd_run, argv)
