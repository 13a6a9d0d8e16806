#!/usr/bin/env python3
"""Measures what hostile clients cost an sse-notify process (issue 12), one scenario at a time,
each against a fresh redis-server and a fresh service on free loopback ports:

  heads  2,000 connections each sending an unfinished 400 KB request head; the service's RSS
  blast  one open stream whose client then sends bytes as fast as it can for 10 s; service CPU
  fds    the service limited to 2,000 open files, 2,500 idle sockets held; /healthz latency

  bench/hostile.py --binary target/release/sse-notify [--scenario heads|blast|fds|all]

Prints one JSON line per scenario (with the binary, the figures and the command).
"""

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


class Servers:
    """A redis-server and the service, stopped on exit."""

    def __init__(self, binary, nofile=None):
        self.dir = tempfile.mkdtemp(prefix="sse-hostile-")
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL)
        wait_port(self.redis_port)
        self.port = free_port()
        env = {"LISTEN_ADDR": f"127.0.0.1:{self.port}", "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}",
               "AUTH_MODE": "gateway", "PUBLISH_TOKEN": "t", "RUST_LOG": "error", "PATH": os.environ["PATH"]}
        command = [binary]
        if nofile:
            command = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] + command
        self.service = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.pid = self.service.pid  # prlimit execs the binary: same pid

    def rss_kb(self):
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        for process in (self.service, self.redis):
            process.kill()
            process.wait()


def heads(servers, connections=2000, size=400_000):
    sockets = []
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", servers.port))
        s.setblocking(False)
        s.send(b"GET /notifications HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        sockets.append([s, 0])
    chunk = b"p" * 16384
    deadline = time.time() + 60
    while time.time() < deadline:
        active = [entry for entry in sockets if entry[1] < size and entry[0] is not None]
        if not active:
            break
        for entry in active:
            try:
                entry[1] += entry[0].send(chunk)
            except BlockingIOError:
                pass
            except OSError:  # answered (431) and closed
                entry[1] = size
        time.sleep(0.001)
    time.sleep(2)
    rss = servers.rss_kb()
    sent = sum(min(e[1], size) for e in sockets)
    for entry in sockets:
        entry[0].close()
    return {"connections": connections, "head_bytes_each": size, "bytes_accepted": sent, "service_rss_kb": rss}


def blast(servers, seconds=10):
    s = socket.create_connection(("127.0.0.1", servers.port))
    s.sendall(b"GET /notification/subscribe HTTP/1.1\r\nHost: x\r\nmember_id: blaster\r\n\r\n")
    s.recv(4096)
    s.setblocking(False)
    start_cpu = servers.cpu_seconds()
    start = time.time()
    sent = 0
    closed_after = None
    chunk = b"z" * 65536
    while time.time() - start < seconds:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            select.select([], [s], [], 0.05)
        except OSError:
            closed_after = round(time.time() - start, 3)
            break
    cpu = servers.cpu_seconds() - start_cpu
    s.close()
    return {"seconds": seconds, "bytes_sent": sent, "service_cpu_seconds": round(cpu, 3),
            "stream_closed_after_s": closed_after}


def fds(servers, idle=2500, samples=10):
    held = []
    for _ in range(idle):
        try:
            held.append(socket.create_connection(("127.0.0.1", servers.port), timeout=2))
        except OSError:
            break
    time.sleep(1)
    latencies = []
    for _ in range(samples):
        start = time.time()
        try:
            with socket.create_connection(("127.0.0.1", servers.port), timeout=5) as s:
                s.settimeout(5)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = s.recv(64)
            ok = answer.startswith(b"HTTP/1.1 200")
        except OSError:
            ok = False
        latencies.append(round((time.time() - start) * 1000, 1) if ok else None)
    for s in held:
        s.close()
    answered = [l for l in latencies if l is not None]
    return {"idle_sockets_held": len(held), "service_nofile": 2000, "healthz_answered": f"{len(answered)}/{samples}",
            "healthz_ms": latencies}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--scenario", default="all", choices=["heads", "blast", "fds", "all"])
    args = parser.parse_args()
    scenarios = ["heads", "blast", "fds"] if args.scenario == "all" else [args.scenario]
    for name in scenarios:
        servers = Servers(args.binary, nofile=2000 if name == "fds" else None)
        try:
            result = {"heads": heads, "blast": blast, "fds": fds}[name](servers)
        finally:
            servers.stop()
        result.update(scenario=name, binary=args.binary,
                      command=f"bench/hostile.py --binary {args.binary} --scenario {name}")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
