"""What the olmort serve tools share: building and packing, starting a server on a free
port, and a small HTTP client on the standard library (streamed answers included)."""

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def binary(name):
    """target/release/NAME, built if missing."""
    path = ROOT / "target" / "release" / name
    if not path.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "olmoc", "-p", "olmort"], cwd=ROOT, check=True)
    return path


def pack(folder, out, dtype="f32"):
    out = Path(out)
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        subprocess.run([str(binary("olmoc")), "pack", "--dtype", dtype, str(folder), str(tmp)], check=True,
                       stdout=subprocess.DEVNULL)
        tmp.rename(out)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`olmort serve BLOB ARGS...` on a free port; stopped on exit from the with block."""

    def __init__(self, blob, *args):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([str(binary("olmort")), "serve", str(blob), "--port", str(self.port), *args],
                                     stdout=self.log, stderr=self.log)
        deadline = time.time() + 120
        while True:
            try:
                status, _, _ = request(self.port, "GET", "/health")
                if status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                sys.exit(f"olmort serve did not start: {self.log.read().decode(errors='replace')}")
            time.sleep(0.1)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def alive(self):
        return self.proc.poll() is None

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return False


def request(port, method, path, body=None, headers=None, timeout=300):
    """(status, headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    out = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), out


def stream(port, path, body, on_event=None, timeout=300):
    """POSTs a streamed request; calls on_event(json or None for [DONE], time) per event;
    returns (status, list of (time, event))."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, body=json.dumps({**body, "stream": True}).encode(),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    events = []
    if r.status != 200:
        r.read()
        conn.close()
        return r.status, events
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        payload = line[6:]
        now = time.perf_counter()
        event = None if payload == b"[DONE]" else json.loads(payload)
        events.append((now, event))
        if on_event:
            on_event(event, now)
        if event is None:
            break
    conn.close()
    return r.status, events
