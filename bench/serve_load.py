"""Load check of `pyv4 serve` (not a test; loopback only, bounded).

    PYTHONPATH=<install> python bench/serve_load.py [--model demo] [--rounds 2] [--clients 8] [--requests 32]

Starts a server on 127.0.0.1, warms it with one request per client, reads
its RSS, then runs `rounds` rounds of `requests` requests from `clients`
client threads: a mix of whole and streamed chat and completion replies,
clients that disconnect mid-stream, and malformed requests (bad JSON, bad
fields, an over-long prompt). Checks that the server stays up, that every
well-formed request completes (HTTP 200 and a finish_reason), that the
malformed ones get 400, and reports the server's RSS before and after each
round (its prompt-reuse pool is full after the warm-up, so a steady state
shows no growth) with the request counts and timings.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def request(port: int, path: str, body, stream_cut: int | None = None, timeout: float = 120):
    """(status, parsed body or None); stream_cut: disconnect after that many lines."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, {"Content-Type": "application/json"})
    r = conn.getresponse()
    if stream_cut is not None:
        for _ in range(stream_cut):
            r.fp.readline()
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        return r.status, None
    raw = r.read()
    conn.close()
    if body and isinstance(body, dict) and body.get("stream"):
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", events[-3:]
        finishes = [c["choices"][0]["finish_reason"] for c in map(json.loads, events[:-1])
                    if c.get("choices") and c["choices"][0].get("finish_reason")]
        return r.status, {"finish": finishes}
    return r.status, json.loads(raw)


def plan(i: int) -> tuple[str, str, object, int | None, int]:
    """(kind, path, body, stream_cut, expected status) of request i."""
    msg = [{"role": "user", "content": f"Request {i}: tell me something."}]
    k = i % 8
    if k in (0, 1):
        return "chat", "/v1/chat/completions", {"model": "m", "messages": msg, "max_tokens": 24}, None, 200
    if k in (2, 3):
        return "chat-stream", "/v1/chat/completions", {"model": "m", "messages": msg, "max_tokens": 24,
                                                       "stream": True}, None, 200
    if k == 4:
        return "completion", "/v1/completions", {"model": "m", "prompt": f"Item {i}:", "max_tokens": 24}, None, 200
    if k == 5:
        return "disconnect", "/v1/chat/completions", {"model": "m", "messages": msg, "max_tokens": 2000,
                                                      "stream": True}, 4, 200
    if k == 6:
        return "malformed", "/v1/chat/completions", b'{"model": "m", "messages": [', None, 400
    return "bad-field", "/v1/chat/completions", {"model": "m", "messages": msg, "temperature": -1}, None, 400


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=4)
    a = ap.parse_args(argv)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="pyv4-load-")
    env = dict(os.environ, XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", os.path.join(tmp, "cache")))
    log = open(os.path.join(tmp, "server.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "pyv4.cli", "serve", a.model, "--port", str(port),
                             "--parallel", str(a.parallel), "--ctx", "4096"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp)  # outside a source tree
    ok = True
    try:
        deadline = time.time() + 300
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                print("server did not start:", open(log.name).read())
                return 1
            time.sleep(0.3)
        with concurrent.futures.ThreadPoolExecutor(a.clients) as ex:
            list(ex.map(lambda i: request(port, *plan(i * 8)[1:3]), range(a.clients)))  # warm-up
        print(f"server pid {proc.pid}, {a.clients} clients, {a.requests} requests per round, "
              f"--parallel {a.parallel}")
        print(f"RSS after warm-up: {rss_mb(proc.pid):.1f} MB")
        for rnd in range(a.rounds):
            counts: dict[str, list[int]] = {}
            t0 = time.time()

            def one(i):
                kind, path, body, cut, want = plan(i)
                status, res = request(port, path, body, cut)
                good = status == want
                if good and want == 200 and cut is None:
                    fr = res["finish"] if "finish" in res else [c["finish_reason"] for c in res["choices"]]
                    good = bool(fr) and all(f in ("stop", "length", "tool_calls") for f in fr)
                return kind, good

            with concurrent.futures.ThreadPoolExecutor(a.clients) as ex:
                for kind, good in ex.map(one, range(a.requests)):
                    counts.setdefault(kind, [0, 0])[0 if good else 1] += 1
            dt = time.time() - t0
            # wait until the server is idle (disconnected generations dropped)
            for _ in range(100):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/metrics")
                text = c.getresponse().read().decode()
                if "pyv4_active_generations 0" in text and "pyv4_queue_length 0" in text:
                    break
                time.sleep(0.1)
            alive = proc.poll() is None
            print(f"round {rnd + 1}: {dt:.1f} s, server alive: {alive}, RSS {rss_mb(proc.pid):.1f} MB; "
                  + ", ".join(f"{k} {g} ok / {b} wrong" for k, (g, b) in sorted(counts.items())))
            ok &= alive and all(b == 0 for _, b in counts.values())
        print([line for line in text.splitlines() if line.startswith("pyv4_generations_total")
               or line.startswith("pyv4_client_disconnects")])
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
