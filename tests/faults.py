"""Stores of a test's own, to kill, stop or pause: a private redis-server and a private Postgres.

Pausing is SIGSTOP: the process keeps its sockets, the kernel still accepts connections and
acknowledges bytes, but nothing answers — what a network partition, a long fork or a frozen host
look like from a client. SIGCONT resumes it. Killing (SIGKILL) is the cheaper failure: refused.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.redis_cluster import server_binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def silent_port(outage: str):
    """A loopback port that refuses connections ("refused": bound, nothing listens) or accepts them
    and never answers ("hung": the kernel completes the handshake, nobody reads)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if outage == "hung":
            listener.listen(16)
        yield listener.getsockname()[1]


class RedisProcess:
    """A redis-server with AOF (fsync on every write) in a folder of its own; stop() kills it (-9)."""

    def __init__(self, *extra_args: str):
        self.dir = tempfile.mkdtemp(prefix="mollifier-redis-")
        self.port = free_port()
        self.extra_args = extra_args
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [
                server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    @contextmanager
    def paused(self):
        """SIGSTOP for the block, SIGCONT after (also when the block fails)."""
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cleanup(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def serve(self, settings, **mollifier) -> None:
        """Make this the only Redis of the test's process (Django's cache and the buffer), with short
        socket timeouts so a pause costs a test fractions of a second; ``mollifier``: more settings."""
        settings.CACHES = {
            **settings.CACHES,
            "default": {
                **settings.CACHES["default"],
                "LOCATION": self.url,
                "OPTIONS": {
                    **settings.CACHES["default"]["OPTIONS"],
                    "SOCKET_TIMEOUT": 0.2,
                    "SOCKET_CONNECT_TIMEOUT": 0.2,
                },
            },
        }
        settings.MOLLIFIER = {**settings.MOLLIFIER, "REDIS_CLUSTER_URL": "", **mollifier}


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class PostgresProcess:
    """A private PostgreSQL 16 (pgserver) on a unix socket in ``directory``.

    ``paused()`` stops the postmaster and every backend (new connections are accepted by the
    kernel and never answered; open ones never answer), which is exactly what a statement_timeout,
    enforced by the server, cannot catch.
    """

    def __init__(self, directory: Path):
        from trigger_project.embedded import import_pgserver

        self.pgserver = import_pgserver()
        self.server = self.pgserver.get_server(directory, cleanup_mode="stop")

    @property
    def url(self) -> str:
        return self.server.get_uri()

    def server_env(self) -> dict:
        """What a server or command started against this Postgres is given: persistent connections
        (a pause freezes the sockets already open) and short budgets, so that its waits take seconds."""
        return {
            "DATABASE_URL": self.url,
            "DB_CONN_MAX_AGE": "600",
            "DB_CONNECT_TIMEOUT": "2",
            "DB_STATEMENT_TIMEOUT_MS": "1000",
            "DB_ANSWER_TIMEOUT_MS": "2000",
        }

    def postmaster_pid(self) -> int:
        return int((Path(self.server.pgdata) / "postmaster.pid").read_text().split()[0])

    @contextmanager
    def paused(self):
        postmaster = self.postmaster_pid()
        os.kill(postmaster, signal.SIGSTOP)  # first: no new backend starts meanwhile
        backends = _children(postmaster)
        for pid in backends:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in backends:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            os.kill(postmaster, signal.SIGCONT)

    def stop(self):
        self.pgserver.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self):
        self.server.ensure_postgres_running()

    def cleanup(self):
        self.server.cleanup()
