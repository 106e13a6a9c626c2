"""Rolling restart with zero errors: three replicas of the generated server behind Debian's nginx,
configured as the `kserve` target's manifests imply (only ready replicas get traffic: /readyz
plus passive health), a bounded load of 8 clients, SIGTERM to one replica mid-load and its
replacement started: no request may fail. Also 1 -> 3 replicas under the same load.

Windows are short here (the suite's time); benchmarks/bench_rolling.py runs 30 s windows and its
figures are in docs/deploy.md.
"""

from __future__ import annotations

import time

import pytest

from conftest import SAMPLE_MODELS
import kexport
from rolling import Cluster, nginx_binary, predict_request, run_load

CLIENTS = 8
WINDOW_S = 12.0

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx not installed (make test installs it)")


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory):
    pytest.importorskip("gunicorn")
    out = tmp_path_factory.mktemp("rolling") / "out"
    result = kexport.export(str(SAMPLE_MODELS["digits_cnn"]), ["flask"], out, verify=False)
    assert result.ok, result.failures()
    return out / "flask"


def test_sigterm_one_replica_mid_load_loses_no_request(app_dir):
    path, body = predict_request(app_dir)
    cluster = Cluster(app_dir, replicas=3)
    try:
        old_ports = {s.port for s in cluster.servers}
        step = {}

        def tick(elapsed):
            if elapsed >= WINDOW_S / 3 and not step:
                step["thread"] = cluster.sigterm_and_replace(1)
                step["at"] = elapsed

        result = run_load(cluster.nginx.port, path, body, CLIENTS, WINDOW_S, on_tick=tick)
        step["thread"].join(timeout=60)
        summary = result.summary()
        print("rolling restart:", summary)
        assert step, "the replica was never restarted"
        assert result.ok > 100, summary  # the load really ran
        assert result.failed == 0, summary
        assert cluster.exit_codes == [0], f"the old replica did not shut down gracefully: {cluster.exit_codes}"
        new_ports = {s.port for s in cluster.servers}
        assert len(new_ports - old_ports) == 1
        cluster.wait_upstreams(3)  # the replacement took traffic once ready
    finally:
        cluster.stop()


def test_without_readiness_and_retries_requests_fail(app_dir):
    """The same step against a balancer that keeps sending to the stopped replica and does not
    retry: requests fail, so the zero above is the configuration's doing, not luck."""
    import rolling

    path, body = predict_request(app_dir)
    saved = rolling.NGINX_CONF
    rolling.NGINX_CONF = saved.replace("proxy_next_upstream error timeout http_502 http_503 non_idempotent;",
                                       "proxy_next_upstream off;")
    assert rolling.NGINX_CONF != saved
    cluster = Cluster(app_dir, replicas=3)
    cluster.controller.stopped.set()  # no readiness: the upstream list never changes
    try:
        victim = cluster.servers[1]

        def tick(elapsed, done=[]):
            if elapsed >= 2 and not done:
                victim.proc.terminate()
                done.append(1)

        result = run_load(cluster.nginx.port, path, body, CLIENTS, 5.0, on_tick=tick)
        print("no readiness, no retries:", result.summary())
        assert result.failed > 0, result.summary()
    finally:
        rolling.NGINX_CONF = saved
        cluster.stop()


def test_one_to_three_replicas_throughput(app_dir):
    path, body = predict_request(app_dir)
    cluster = Cluster(app_dir, replicas=1)
    try:
        one = run_load(cluster.nginx.port, path, body, CLIENTS, WINDOW_S / 2)
        t0 = time.monotonic()
        cluster.scale_to(3)
        scale_s = time.monotonic() - t0
        three = run_load(cluster.nginx.port, path, body, CLIENTS, WINDOW_S / 2)
        print(f"1 replica: {one.summary()}\n3 replicas ({scale_s:.1f}s to scale): {three.summary()}")
        assert one.failed == 0 and three.failed == 0
        assert one.ok > 50 and three.ok > 50
    finally:
        cluster.stop()
