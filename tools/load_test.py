#!/usr/bin/env python3
"""A load test of `olmort serve`: tens of concurrent clients, hundreds of mixed good and
bad requests, bounded in time.

    python3 tools/load_test.py [--clients 32] [--requests 400] [--seconds 300] [--cache-prompt]

Packs the chat fixture with OLMo-3's tool-call template (tests/fixtures/chat/olmo3_tools:
random weights, a sliding-window layer), starts `olmort serve --parallel 4 --queue 8`
and first asks each good request alone for its greedy answer. Then the clients send, in
a shuffled mix: good completions and chats (whole and streamed, some with logprobs,
penalties and a logit bias, JSON mode, required tool calls, the Responses API; each checked against its
answer alone: batching must not change greedy text or calls), streams they
hang up on after the first event, and bad requests (malformed JSON, missing and
mistyped fields, an unknown role, out-of-range values, n=17, a prompt over the context,
a body over the cap, an unknown route, a truncated body), each of which must get its
4xx with an OpenAI error body. A good request refused with 503 (queue full) is retried
after its Retry-After. At the end: every good request answered correctly, the server
alive, every slot free, and its resident memory within 10% (+8 MiB) of what it was
after the warm-up. Exits non-zero otherwise. With `--cache-prompt` every request may start
from a slot's kept cache (the fixture's f32 weights: the same texts either way).
"""

import argparse
import json
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import ROOT, Server, pack, request, stream  # noqa: E402

GOOD = [
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 16}),
    ("/v1/completions", {"prompt": "The quick brown fox", "max_tokens": 24, "stop": ["zz"]}),
    ("/v1/completions", {"prompt": [1, 2, 3, 4, 5, 6, 7, 8] * 6, "max_tokens": 8}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 20}),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Tell me about the sea, please, at length."}],
                              "max_completion_tokens": 30}),
    # Log-probabilities, penalties and a bias: per request, so their texts too must not
    # depend on the batch.
    ("/v1/completions", {"prompt": "Two roads diverged", "max_tokens": 10, "n": 3}),
    ("/v1/completions", {"prompt": "It was a dark and stormy night", "max_tokens": 20, "logprobs": 3,
                         "frequency_penalty": 0.5, "repeat_penalty": 1.2, "logit_bias": {"13": -100}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 16,
                              "logprobs": True, "top_logprobs": 2, "presence_penalty": 1.0, "stop": ["\n\n"]}),
    # JSON mode (the bias pulls the random weights toward '"' and '}', closing the object).
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Reply in JSON."}], "max_tokens": 40,
                              "response_format": {"type": "json_object"}, "logit_bias": {"1": 30, "92": 25}}),
    # Tools: a required call (the bias pulls toward '"' and ')', closing it) and "auto".
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "max_tokens": 40,
                              "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                                  "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                                  "required": ["city"]}}}],
                              "tool_choice": "required", "logit_bias": {"1": 30, "8": 25}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "What time is it?"}], "max_tokens": 12,
                              "tools": [{"type": "function", "function": {"name": "now"}}]}),
    # The Responses API.
    ("/v1/responses", {"instructions": "Be brief.", "input": "Tell me about the sea.", "max_output_tokens": 20}),
]
for _, body in GOOD:
    body.update({"temperature": 0, "ignore_eos": True})

BAD = [
    ("/v1/completions", b"{not json", 400),
    ("/v1/completions", {"max_tokens": 3}, 400),
    ("/v1/completions", {"prompt": "a", "max_tokens": "many"}, 400),
    ("/v1/completions", {"prompt": "a", "temperature": 9}, 400),
    ("/v1/completions", {"prompt": "a", "top_p": 0}, 400),
    ("/v1/completions", {"prompt": "a", "n": 17}, 400),
    ("/v1/completions", {"prompt": "a", "logprobs": 50}, 400),
    ("/v1/completions", {"prompt": "a", "logit_bias": {"99999999": 1}}, 400),
    ("/v1/completions", {"prompt": "a", "repeat_penalty": -1}, 400),
    ("/v1/completions", {"prompt": [5] * 600}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "pirate", "content": "arr"}]}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema", "json_schema": {}}}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400),
    ("/v1/responses", {"input": "x", "previous_response_id": "resp_1"}, 400),
    ("/v1/responses", {"input": [{"type": "function_call", "name": "f"}]}, 400),
    ("/tokenize", {"tokens": [1]}, 400),
    ("/v1/completions", {"prompt": "a" * 70000}, 413),
    ("/v2/nothing", {}, 404),
]


def calls_text(calls):
    """Tool calls as text to compare: each name and arguments."""
    return "".join(f"<{c['function']['name']}{c['function']['arguments']}>" for c in calls or [])


def answer_text(path, payload):
    """Every choice's text and calls, by index (greedy: n equal texts)."""
    if "responses" in path:
        items = payload["output"]
        return ["".join(c["text"] for i in items if i["type"] == "message" for c in i["content"])]
    if "chat" in path:
        return [(c["message"]["content"] or "") + calls_text(c["message"].get("tool_calls")) for c in payload["choices"]]
    return [c["text"] for c in payload["choices"]]


def stream_text(path, events):
    """Each choice's text and calls from its chunks (tagged by index)."""
    if "responses" in path:
        return ["".join(e["delta"] for _, e in events if e and e["type"] == "response.output_text.delta")]
    out = {}
    for _, e in events:
        if e and e.get("choices"):
            c = e["choices"][0]
            delta = c.get("delta", {})
            text = ((delta.get("content") or "") + calls_text(delta.get("tool_calls"))) if "chat" in path else c.get("text") or ""
            out[c["index"]] = out.get(c["index"], "") + text
    return [out[i] for i in sorted(out)]


def good(port, i, expected, deadline):
    path, body = GOOD[i]
    streamed = random.random() < 0.5
    while time.time() < deadline:
        if streamed:
            status, events = stream(port, path, body)
            if status == 200:
                last = events[-1][1]
                ended = last["type"] in ("response.completed", "response.incomplete") if "responses" in path else last is None
                return stream_text(path, events) == expected[i] and ended
        else:
            status, _, out = request(port, "POST", path, body)
            if status == 200:
                return answer_text(path, json.loads(out)) == expected[i]
        if status != 503:
            return False
        time.sleep(0.2)
    return False


def bad(port, j):
    path, body, want = BAD[j]
    status, _, out = request(port, "POST", path, body if isinstance(body, bytes) else json.dumps(body).encode())
    try:
        message = json.loads(out)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return False
    return status == want and bool(message)


def hang_up(port):
    """Starts a long stream, reads its first event, and goes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    body = json.dumps({"prompt": "And then", "max_tokens": 100, "ignore_eos": True, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    seen = b""
    while b"data: " not in seen:
        chunk = s.recv(4096)
        if not chunk:
            break
        seen += chunk
    s.close()
    return b"200 OK" in seen or b" 503 " in seen


def truncated(port):
    """A body shorter than its Content-Length, then the client goes: no answer owed."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"prompt\"")
    s.close()
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache-prompt", action="store_true",
                    help="serve with --cache-prompt: requests start from slots' kept caches")
    args = ap.parse_args()
    random.seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        blob = pack(ROOT / "tests/fixtures/chat/olmo3_tools", Path(tmp) / "chat-olmo3-tools.bin")
        extra = ["--cache-prompt"] if args.cache_prompt else []
        with Server(blob, "--parallel", "4", "--queue", "8", "--ctx-size", "512", "--max-body", "65536", *extra) as server:
            port = server.port
            expected = []
            for path, body in GOOD:
                status, _, out = request(port, "POST", path, body)
                assert status == 200, out
                expected.append(answer_text(path, json.loads(out)))
                if body.get("tool_choice") == "required" and "<get_weather{" not in expected[-1][0]:
                    sys.exit(f"FAIL: a required call answered without one: {expected[-1]}")
            rss_before = server.rss_kib()
            kinds = (["good"] * 6 + ["bad"] * 3 + ["hang_up"] + ["truncated"])
            work = [random.choice(kinds) for _ in range(args.requests)]
            results = {k: [0, 0] for k in set(kinds)}
            failures = []
            lock = threading.Lock()
            deadline = time.time() + args.seconds
            started = time.time()

            def client():
                while time.time() < deadline:
                    with lock:
                        if not work:
                            return
                        kind = work.pop()
                    if kind == "good":
                        i = random.randrange(len(GOOD))
                        ok = good(port, i, expected, deadline)
                        what = f"good {i}"
                    elif kind == "bad":
                        j = random.randrange(len(BAD))
                        ok = bad(port, j)
                        what = f"bad {j}"
                    elif kind == "hang_up":
                        ok, what = hang_up(port), "hang up"
                    else:
                        ok, what = truncated(port), "truncated"
                    with lock:
                        results[kind][0 if ok else 1] += 1
                        if not ok:
                            failures.append(what)

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.time() - started
            time.sleep(1)
            metrics = request(port, "GET", "/metrics")[2].decode()
            busy = next(int(l.split()[-1]) for l in metrics.splitlines() if l.startswith("olmort_busy_slots "))
            rss_after = server.rss_kib()
            alive = server.alive() and request(port, "GET", "/health")[0] == 200
    done = sum(a + b for a, b in results.values())
    print(f"{done} requests from {args.clients} clients in {elapsed:.1f} s: "
          + ", ".join(f"{k} {ok} ok / {bad_} failed" for k, (ok, bad_) in sorted(results.items())))
    print(f"server alive: {alive}; busy slots after: {busy}; RSS {rss_before / 1024:.1f} MiB after warm-up, "
          f"{rss_after / 1024:.1f} MiB at the end")
    problems = []
    if done < args.requests:
        problems.append(f"only {done} of {args.requests} requests done in {args.seconds} s")
    if failures:
        problems.append(f"failures: {failures[:20]}")
    if not alive:
        problems.append("the server died")
    if busy:
        problems.append(f"{busy} slots still busy")
    if rss_after > rss_before * 1.10 + 8192:
        problems.append("memory grew")
    if problems:
        sys.exit("FAIL: " + "; ".join(problems))
    print("load test passed")


if __name__ == "__main__":
    main()
