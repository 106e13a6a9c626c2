"""A one-machine stand-in for the plain Kubernetes deployment that the `kserve` target writes
(OUT/kserve/kubernetes/): replicas of the generated Flask server on loopback, Debian's nginx as
the load balancer, and an endpoints controller that, like Kubernetes', keeps only replicas whose
readiness probe (/readyz) answers in the upstream list (nginx reloads gracefully on a change).
nginx adds passive health: a replica that refuses or drops a connection is marked down
(max_fails) and the request goes to the next one (proxy_next_upstream; inference requests are
safe to repeat). Clients connect once per request (see `keepalive_timeout 0` below for why).

Used by tests/test_rolling_restart.py (short windows) and benchmarks/bench_rolling.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kexport.runtimes.flask_http import GunicornServer, free_port

READYZ_PERIOD_S = 0.25
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream model {{
{servers}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port};
    # A reload (endpoint change) makes the old workers close their idle client keep-alive
    # connections; a request sent on one at that instant is reset. Kubernetes changes endpoints
    # without closing client connections (kube-proxy, ingress-nginx's dynamic upstreams), so this
    # stand-in opens one client connection per request instead. Upstream keep-alive stays on.
    keepalive_timeout 0;
    location / {{
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 1s;
      proxy_read_timeout 30s;
    }}
  }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


class Nginx:
    """nginx in the foreground as a child process; `set_upstreams` rewrites the list and reloads
    (SIGHUP: new workers take new connections, old ones finish their requests)."""

    def __init__(self, ports: list[int]):
        self.dir = Path(tempfile.mkdtemp(prefix="kexport-nginx-"))
        self.port = free_port()
        self.conf = self.dir / "nginx.conf"
        self.ports: list[int] = []
        self._write(ports)
        self.proc = subprocess.Popen([nginx_binary(), "-p", str(self.dir), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode(errors='replace')[-500:]}")
            time.sleep(0.05)

    def _write(self, ports: list[int]) -> None:
        servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in ports)
        self.conf.write_text(NGINX_CONF.format(dir=self.dir, servers=servers, port=self.port))
        self.ports = list(ports)

    def set_upstreams(self, ports: list[int]) -> None:
        if ports and sorted(ports) != sorted(self.ports):
            self._write(ports)
            self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=0.5) as r:
            return r.status == 200
    except OSError:
        return False


class EndpointsController(threading.Thread):
    """Polls /readyz of every replica; the ready ones are nginx's upstream list."""

    def __init__(self, nginx: Nginx):
        super().__init__(daemon=True)
        self.nginx = nginx
        self.replicas: dict[int, GunicornServer] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.events: list[tuple[float, list[int]]] = []

    def add(self, server: GunicornServer) -> None:
        with self.lock:
            self.replicas[server.port] = server

    def remove(self, server: GunicornServer) -> None:
        with self.lock:
            self.replicas.pop(server.port, None)

    def sync(self) -> list[int]:
        with self.lock:
            ports = sorted(self.replicas)
        up = [p for p in ports if ready(p)]
        if up and up != sorted(self.nginx.ports):
            self.nginx.set_upstreams(up)
            self.events.append((time.monotonic(), up))
        return up

    def run(self):
        while not self.stopped.wait(READYZ_PERIOD_S):
            self.sync()


@dataclass
class LoadResult:
    seconds: float
    ok: int = 0
    failed: int = 0
    errors: list = field(default_factory=list)
    latencies_ms: list = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def summary(self) -> dict:
        return {"seconds": round(self.seconds, 2), "requests": self.ok + self.failed, "failed": self.failed,
                "rps": round(self.rps, 1), "p50_ms": _r(self.percentile(50)), "p99_ms": _r(self.percentile(99)),
                "errors": self.errors[:5]}


def _r(x):
    return None if x is None else round(x, 2)


def run_load(port: int, path: str, body: bytes, clients: int, seconds: float, on_tick=None) -> LoadResult:
    """`clients` threads, each with one keep-alive connection from urllib3 (the pool `requests`
    uses: it replaces a pooled connection the server closed while idle, as every HTTP client
    does; retries are off, so any failed request counts), posting `body` until `seconds` have
    passed. Bounded: every thread stops by itself at the deadline. `on_tick(elapsed)` runs in
    the caller's thread every 0.1 s (to act mid-load)."""
    import urllib3

    result = LoadResult(seconds)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client():
        pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False, timeout=30.0)
        lat, ok, bad, errs = [], 0, 0, []
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                resp = pool.urlopen("POST", path, body=body, headers={"Content-Type": "application/json"})
                if resp.status == 200:
                    ok += 1
                    lat.append((time.perf_counter() - t0) * 1000)
                else:
                    bad += 1
                    errs.append(f"HTTP {resp.status}: {resp.data[:120]!r}")
            except urllib3.exceptions.HTTPError as e:
                bad += 1
                errs.append(f"{type(e).__name__}: {e}")
        pool.close()
        with lock:
            result.ok += ok
            result.failed += bad
            result.errors += errs
            result.latencies_ms += lat

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if on_tick:
            on_tick(time.monotonic() - start)
        time.sleep(0.1)
    for t in threads:
        t.join()
    return result


def predict_request(app_dir: Path) -> tuple[str, bytes]:
    """The TF-Serving REST path and a one-row body from the app's own reference data."""
    meta = json.loads((app_dir / "model" / "model.json").read_text())
    ref = np.load(app_dir.parent / "reference" / "inputs.npz")
    names = [t["name"] for t in meta["signature"]["inputs"]]
    rows = [ref[names[0]][0].tolist()] if len(names) == 1 else [{n: ref[n][0].tolist() for n in names}]
    return f"/v1/models/{meta['name']}:predict", json.dumps({"instances": rows}).encode()


class Cluster:
    """Replicas + controller + nginx; `replace(i)` is one rolling-restart step."""

    def __init__(self, app_dir: Path, replicas: int, graceful_timeout_s: int = 10):
        self.app_dir = app_dir
        self.env = {"GRACEFUL_TIMEOUT": str(graceful_timeout_s)}
        self.servers = [self._start() for _ in range(replicas)]
        for s in self.servers:
            s.wait_ready()
        self.nginx = Nginx([s.port for s in self.servers])
        self.controller = EndpointsController(self.nginx)
        for s in self.servers:
            self.controller.add(s)
        self.controller.start()
        self.exit_codes: list[int | None] = []

    def _start(self) -> GunicornServer:
        return GunicornServer(self.app_dir, workers=1, env=self.env)

    def scale_to(self, n: int) -> None:
        while len(self.servers) < n:
            s = self._start()
            s.wait_ready()
            self.servers.append(s)
            self.controller.add(s)
        self.wait_upstreams(n)

    def wait_upstreams(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.nginx.ports) != n or set(self.nginx.ports) != {s.port for s in self.servers}:
            if time.monotonic() > deadline:
                raise RuntimeError(f"upstreams {self.nginx.ports} never matched the replicas")
            time.sleep(0.05)

    def sigterm_and_replace(self, i: int) -> threading.Thread:
        """SIGTERM replica i while it is still in the upstream list (the harsh case: no preStop
        delay) and start its replacement at once; returns the thread doing it."""
        old = self.servers[i]

        def work():
            new = self._start()
            old.proc.send_signal(signal.SIGTERM)
            self.controller.remove(old)
            new.wait_ready()
            self.controller.add(new)
            self.servers[i] = new
            self.exit_codes.append(old.proc.wait(timeout=60))
            old.stop()

        t = threading.Thread(target=work, daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.controller.stopped.set()
        self.controller.join(timeout=5)
        self.nginx.stop()
        for s in self.servers:
            s.stop()
