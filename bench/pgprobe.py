"""What Postgres spends on a window of the benchmark: CPU of its processes (from /proc), transactions
(``pg_stat_database.xact_commit``), WAL bytes, and sampled connections and lock waits.

Two CPU figures, because the server may be shared with other work on the machine:

- ``backends``: the backends of the bench database, found in ``pg_stat_activity`` (every 100 ms) and
  read in ``/proc/<pid>/stat``. Django keeps its connections (``CONN_MAX_AGE``), so the backends of
  the web workers and drainers live through the window and none of their CPU is lost; a backend that
  exits between two samples loses at most 100 ms of its time.
- ``server``: every postgres process (the postmaster, found as the parent of a backend, and its
  children, including the background writer, WAL writer and checkpointer). A child that exits is
  counted through the postmaster's ``cutime``/``cstime``, where the kernel adds a reaped child's
  time. It includes whatever else the server ran in the window.

Statistics reach ``pg_stat_database`` when a backend flushes them: at the end of a transaction at
most once a second, after 10 s idle, and when it exits. So a window opens after the backends have
been idle for longer than that, and closes after they have exited.
"""

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.1
# PGSTAT_IDLE_INTERVAL (10 s) plus a margin: an idle backend's pending statistics are flushed by then.
STATS_SETTLE_S = 11.0


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def process_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks, or None when it has gone."""
    fields = _stat_fields(pid)
    # After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    return None if fields is None else int(fields[11]) + int(fields[12])


def command_of(pid: int) -> str:
    """The command name of ``pid`` in this machine's /proc ('' when there is none)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


@dataclass(frozen=True)
class ServerTicks:
    """The postmaster's own and reaped children's ticks, and each live child's ticks."""

    postmaster: int
    children: dict[int, int]

    @classmethod
    def read(cls, postmaster_pid: int) -> "ServerTicks":
        fields = _stat_fields(postmaster_pid)
        if fields is None:
            raise RuntimeError(f"the postmaster {postmaster_pid} is not visible in /proc")
        own = sum(int(fields[i]) for i in (11, 12, 13, 14))
        children = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (child := _stat_fields(int(entry.name))) and int(child[1]) == postmaster_pid:
                children[int(entry.name)] = int(child[11]) + int(child[12])
        return cls(postmaster=own, children=children)

    def ticks_since(self, before: "ServerTicks") -> int:
        """Ticks every postgres process spent between ``before`` and now. A child that exited in
        between was added whole to the postmaster's cutime/cstime: its ticks before are taken off."""
        gone = sum(ticks for pid, ticks in before.children.items() if pid not in self.children)
        live = sum(ticks - before.children.get(pid, 0) for pid, ticks in self.children.items())
        return self.postmaster - before.postmaster - gone + live


@dataclass(frozen=True)
class Reading:
    """Cumulative counters of the server and of one database at one moment."""

    xact_commit: int
    xact_rollback: int
    wal_bytes: int
    wal_lsn: str
    server: ServerTicks


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def postmaster_pid(conn: psycopg.Connection) -> int:
    """The parent of this connection's backend (the server must run on this machine)."""
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    parent = parent_pid(backend)
    if parent is None:
        raise RuntimeError("Postgres runs elsewhere: its processes are not in this machine's /proc")
    return parent


def read(admin: psycopg.Connection, *, database: str, postmaster: int) -> Reading:
    """``admin`` is a connection to another database (its own reads do not count in ``database``)."""
    admin.execute("SELECT pg_stat_clear_snapshot()")
    commits, rollbacks, wal, lsn = admin.execute(
        "SELECT xact_commit, xact_rollback, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, "
        "pg_current_wal_lsn()::text FROM pg_stat_database WHERE datname = %s",
        [database],
    ).fetchone()  # type: ignore[misc]
    return Reading(
        xact_commit=commits, xact_rollback=rollbacks, wal_bytes=wal, wal_lsn=lsn, server=ServerTicks.read(postmaster)
    )


def database_wal_bytes(conn: psycopg.Connection, *, start_lsn: str, end_lsn: str) -> int | None:
    """WAL bytes between the two LSNs of ``conn``'s database: the records that touch its relations
    (``block_ref`` names ``<tablespace>/<database oid>/<relation>``) and the commit records of the
    transactions that wrote them. Read with pg_walinspect (PostgreSQL 15's contrib), created in that
    database; None when it is not installed or the WAL was recycled meanwhile."""
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        # pg_walinspect reads only WAL already flushed; the WAL writer flushes within 200 ms.
        deadline = time.monotonic() + 5
        while not conn.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", [end_lsn]).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        return conn.execute(
            "WITH r AS (SELECT xid, resource_manager, record_length, block_ref "
            "  FROM pg_get_wal_records_info(%(start)s::pg_lsn, %(end)s::pg_lsn)), "
            "ours AS (SELECT DISTINCT xid FROM r WHERE block_ref LIKE %(pattern)s AND xid <> '0') "
            "SELECT coalesce(sum(record_length), 0)::bigint FROM r WHERE block_ref LIKE %(pattern)s "
            "  OR (resource_manager = 'Transaction' AND xid IN (SELECT xid FROM ours))",
            {
                "start": start_lsn,
                "end": end_lsn,
                "pattern": "% rel %/" + str(_database_oid(conn)) + "/%",
            },
        ).fetchone()[0]  # type: ignore[index]
    except psycopg.Error as error:
        print(f"pg_walinspect did not read the window's WAL: {error}", file=sys.stderr)
        return None


def _database_oid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]  # type: ignore[index]


def wait_for_no_backends(admin: psycopg.Connection, *, database: str, keep: set[int], timeout_s: float = 20) -> None:
    """Wait until every backend of ``database`` but ``keep`` has exited (and so flushed its
    statistics)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = {
            row[0]
            for row in admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [database]).fetchall()
        }
        if not pids - keep:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"backends of {database} did not exit: {sorted(pids - keep)}")
        time.sleep(0.1)


@dataclass
class Sample:
    t: float
    active: int  # client backends of the database running a statement
    lock_waits: int  # of them, waiting for a lock (wait_event_type = 'Lock')
    not_granted: int  # their lock requests not granted (pg_locks)
    other_active: int  # active client backends of other databases: a shared server's other work
    rows: int
    depth: int | None  # what ``Watch.depth`` read (runs waiting in the buffer), when given


@dataclass(eq=False)  # a thread: hashed by identity
class Watch(threading.Thread):
    """Samples the database every SAMPLE_S from its own connections, whose backends (and
    ``exclude``'s) are left out of every figure. ``rows_sql`` is counted each sample, on a
    connection to ``database`` whose transactions are counted (``own_transactions``)."""

    admin_url: str
    database_url: str
    database: str
    rows_sql: str
    exclude: set[int] = field(default_factory=set)
    depth: Callable[[], int] | None = None

    def __post_init__(self) -> None:
        super().__init__(daemon=True)
        self.admin = connect(self.admin_url)
        self.probe = connect(self.database_url)
        self.postmaster = postmaster_pid(self.admin)
        self.own_pids = {
            self.admin.execute("SELECT pg_backend_pid()").fetchone()[0],  # type: ignore[index]
            self.probe.execute("SELECT pg_backend_pid()").fetchone()[0],  # type: ignore[index]
        }
        self.own_transactions = 1  # the pid read above, on the probe
        self.samples: list[Sample] = []
        self.first_ticks: dict[int, int] = {}
        self.last_ticks: dict[int, int] = {}
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def open_window(self) -> Reading:
        """Read the counters and start sampling. Call when the database's backends have been idle
        for STATS_SETTLE_S."""
        self._keep_wal()
        self.before = read(self.admin, database=self.database, postmaster=self.postmaster)
        self.started = time.perf_counter()
        self._sample(first=True)
        self.start()
        return self.before

    def _keep_wal(self) -> None:
        """Keep the window's WAL until pg_walinspect has read it: a temporary replication slot of
        the admin session (dropped when it closes). Without it, a shared server that checkpoints
        during a long window recycles the segments first (seen in a full run)."""
        try:
            self.admin.execute(
                "SELECT pg_create_physical_replication_slot(%s, true, true)",
                [f"mollifier_bench_probe_{os.getpid()}"],
            )
        except psycopg.Error as error:  # no slots allowed here: the WAL figure may then be missing
            print(f"no replication slot to keep the window's WAL: {error}", file=sys.stderr)

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_S):
            self._sample(first=False)

    def _sample(self, *, first: bool) -> None:
        rows = self.admin.execute(
            "SELECT a.pid, a.datname = %s, a.backend_type = 'client backend' AND a.state = 'active', "
            "a.wait_event_type IS NOT DISTINCT FROM 'Lock', "
            "(SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted) "
            "FROM pg_stat_activity a WHERE a.pid <> ALL(%s) AND a.datname IS NOT NULL",
            [self.database, list(self.own_pids | self.exclude)],
        ).fetchall()
        ours = [row for row in rows if row[1]]
        with self.lock:
            for pid, *_ in ours:
                ticks = process_ticks(pid)
                if ticks is None:
                    continue
                # A backend seen in the first sample counts from then; a later one from its start.
                self.first_ticks.setdefault(pid, ticks if first else 0)
                self.last_ticks[pid] = ticks
        counted = self.probe.execute(self.rows_sql).fetchone()[0]  # type: ignore[index]
        self.own_transactions += 1
        self.samples.append(
            Sample(
                t=round(time.perf_counter() - self.started, 2),
                active=sum(1 for row in ours if row[2]),
                lock_waits=sum(1 for row in ours if row[2] and row[3]),
                not_granted=sum(row[4] for row in ours),
                other_active=sum(1 for row in rows if not row[1] and row[2]),
                rows=counted,
                depth=self.depth() if self.depth else None,
            )
        )

    @property
    def rows(self) -> int:
        return self.samples[-1].rows if self.samples else 0

    def stop_sampling(self) -> float:
        """Stop sampling, read the backends' CPU a last time (before their processes stop), and
        return the backends' CPU-seconds since the window opened."""
        self.halt.set()
        self.join()
        with self.lock:
            for pid in self.last_ticks:
                if (ticks := process_ticks(pid)) is not None:
                    self.last_ticks[pid] = ticks
            return sum(self.last_ticks[pid] - self.first_ticks[pid] for pid in self.last_ticks) / TICKS_PER_S

    def close_window(self, *, exclude_ticks: int = 0) -> dict:
        """Once every other backend of the database has exited: the window's figures. The watch's
        own backends' time is taken off the server's, and so is ``exclude_ticks``."""
        wait_for_no_backends(self.admin, database=self.database, keep=self.own_pids | self.exclude)
        after = read(self.admin, database=self.database, postmaster=self.postmaster)
        own_ticks = sum(
            (after.server.children.get(pid, 0) - self.before.server.children.get(pid, 0)) for pid in self.own_pids
        )
        seconds = time.perf_counter() - self.started
        # After the reading: what this costs the database is not in the window.
        database_wal = database_wal_bytes(self.probe, start_lsn=self.before.wal_lsn, end_lsn=after.wal_lsn)
        self.admin.close()
        self.probe.close()
        return {
            "seconds": round(seconds, 2),
            "xact_commit": after.xact_commit - self.before.xact_commit,
            "xact_rollback": after.xact_rollback - self.before.xact_rollback,
            "own_transactions": self.own_transactions,
            "wal_bytes": after.wal_bytes - self.before.wal_bytes,
            "database_wal_bytes": database_wal,
            "server_cpu_s": round(
                (after.server.ticks_since(self.before.server) - own_ticks - exclude_ticks) / TICKS_PER_S, 2
            ),
            "backends_seen": len(self.last_ticks),
            "samples_list": self.samples,
        }

    def connections(self) -> dict:
        active = [s.active for s in self.samples]
        return {
            "max_active": max(active, default=0),
            "mean_active": round(sum(active) / len(active), 2) if active else 0,
            "lock_wait_samples": sum(s.lock_waits for s in self.samples),
            "max_lock_waits": max((s.lock_waits for s in self.samples), default=0),
            "max_not_granted": max((s.not_granted for s in self.samples), default=0),
            "max_other_db_active": max((s.other_active for s in self.samples), default=0),
            "samples": len(self.samples),
        }
