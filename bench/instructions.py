#!/usr/bin/env python3
"""Instructions per request of `halyard proxy`, counted by callgrind.

CPU time on a small shared machine moves by several per cent from one run
to the next, which hides a change of one or two per cent. An instruction
count does not move: this runs the proxy under valgrind's callgrind on
loopback (one listener, one route, one STATIC cluster to `halyard echo`),
sends N and then 3N keep-alive requests in two separate runs, and reports
(Ir(3N) - Ir(N)) / 2N, which cancels start-up and shutdown. Each variant is
the same bootstrap with one thing changed; the figure to read is the
difference between variants, not the absolute count (callgrind counts user
instructions only, not the kernel's share of a request).

    python3 bench/instructions.py [--halyard PATH] [--requests N] \
        [--variants none,istio-retries] [--out FILE.md]

Needs valgrind (Debian's `valgrind`).
"""

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ISTIO_RETRY_POLICY = (
    ', retry_policy: {retry_on: "connect-failure,refused-stream,unavailable,cancelled,'
    'retriable-status-codes", num_retries: 2, retriable_status_codes: [503], '
    "host_selection_retry_max_attempts: 5, retry_host_predicate: [{name: "
    "envoy.retry_host_predicates.previous_hosts, typed_config: {\"@type\": "
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]}"
)

# name -> (virtual host extra, route extra): Istio's default policy is what
# every route gets when its VirtualService sets no `retries`.
VARIANTS = {
    "none": ("", ""),
    "istio-retries": ("include_request_attempt_count: true, ", ISTIO_RETRY_POLICY),
    "attempt-count": ("include_request_attempt_count: true, ", ""),
    # Istio's standard metrics on: a node that names its workload and an
    # OUTBOUND listener (the proxy reports as `source`).
    "istio-metrics": ("", ""),
}

# Variants that change the node and the listener rather than the route.
ISTIO_NODE = (
    "node: {id: bench, metadata: {NAMESPACE: bench, NAME: client-1, "
    "WORKLOAD_NAME: client, CLUSTER_ID: Kubernetes, LABELS: {app: client, version: v1}}}\n"
)
NODE = {"istio-metrics": (ISTIO_NODE, "    traffic_direction: OUTBOUND\n")}

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bootstrap(listen, upstream, admin, variant):
    vh, route = VARIANTS[variant]
    node, direction = NODE.get(variant, ("", ""))
    return node + f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: out
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
{direction}    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config: {{"@type": {HCM}, stat_prefix: out, http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": {ROUTER}}}}}], route_config: {{name: r, virtual_hosts: [{{name: all, domains: ["*"], {vh}routes: [{{match: {{prefix: /}}, route: {{cluster: up{route}}}}}]}}]}}}}
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 5s
    load_assignment: {{cluster_name: up, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]}}
"""


def wait_port(port, proc, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{what} did not listen on {port} within {timeout:.0f} s")


def load(port, requests, connections):
    """`requests` GETs over `connections` keep-alive connections; all must be 200."""
    per = [requests // connections + (i < requests % connections) for i in range(connections)]
    errors = []

    def worker(n):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for _ in range(n):
                c.request("GET", "/?size=1024", headers={"host": "server.bench:8080"})
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    errors.append(r.status)
        except Exception as e:  # counted, reported once below
            errors.append(repr(e))
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"{len(errors)} of {requests} requests failed, first: {errors[0]}")


def one_run(halyard, variant, requests, connections, work):
    up, listen, admin = free_port(), free_port(), free_port()
    boot = os.path.join(work, f"{variant}.yaml")
    with open(boot, "w") as f:
        f.write(bootstrap(listen, up, admin, variant))
    out = os.path.join(work, f"callgrind.{variant}.{requests}")
    echo = subprocess.Popen(
        [halyard, "echo", "--bind", "127.0.0.1", "--port", str(up)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    proxy = None
    try:
        wait_port(up, echo, "halyard echo")
        proxy = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             halyard, "proxy", "--bootstrap", boot, "--no-ready-port", "--concurrency", "1"],
            stdout=subprocess.DEVNULL, stderr=open(out + ".log", "w"),
        )
        wait_port(listen, proxy, "halyard proxy under callgrind")
        load(listen, requests, connections)
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=120)
    finally:
        for p in (proxy, echo):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    with open(out) as f:
        text = f.read()
    m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    if not m:
        sys.exit(f"no instruction total in {out}")
    return int(m.group(1)), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--halyard", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "halyard"))
    ap.add_argument("--requests", type=int, default=2000, help="N (the second run sends 3N)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--variants", default="none,istio-retries")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    ap.add_argument("--keep", action="store_true", help="keep the callgrind files")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (apt-get install valgrind)")
    if not os.access(a.halyard, os.X_OK):
        sys.exit(f"{a.halyard} not found (cargo build --release -p halyard, or --halyard)")
    variants = a.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"unknown variant {v!r} (known: {', '.join(VARIANTS)})")
    work = tempfile.mkdtemp(prefix="halyard-ir-")
    rows = []
    try:
        for v in variants:
            small, _ = one_run(a.halyard, v, a.requests, a.connections, work)
            big, _ = one_run(a.halyard, v, 3 * a.requests, a.connections, work)
            rows.append((v, (big - small) / (2 * a.requests), small, big))
    finally:
        if a.keep:
            print(f"callgrind files kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    base = rows[0][1]
    lines = [
        f"instructions per request, `halyard proxy` under callgrind, {a.connections} keep-alive "
        f"connections, HTTP/1.1 GET, {a.requests} and {3 * a.requests} requests",
        "",
        "| variant | Ir per request | vs " + rows[0][0] + " | Ir total (N) | Ir total (3N) |",
        "|---|---:|---:|---:|---:|",
    ]
    for v, per, small, big in rows:
        lines.append(f"| {v} | {per:,.0f} | {100 * (per / base - 1):+.2f}% | {small:,} | {big:,} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"command: `{' '.join(sys.argv)}`\n\n" + text)


if __name__ == "__main__":
    main()
