"""Who drains first when the drain cannot take everything at once (issue 17).

Under contention (the round's budget is smaller than what the environments with work could give),
each round is shared by weight, in two levels as the rotation before it was: organisations first
(an organisation weighs as much as its heaviest environment with work, so a tenant does not gain by
having many environments), then environments within an organisation (by their own weight). Weights
come from the environment's type (``MOLLIFIER_DRAIN_WEIGHTS``, default production 8, staging 2,
preview 1, development 1). The sharing is stride scheduling: each organisation and environment
carries a pass that grows by rows taken / weight, and the lowest pass goes next, so over a few rounds
every one gets its weight's share and none starves (a weight of 1 is still a share). An environment
gives at most ``MOLLIFIER_DRAIN_BATCH_SIZE`` × its weight per round.

Before the shares, a round takes delayed runs whose delay is due (within ``DUE_LEAD_MS``), from
every environment, earliest first, up to half the round: such a run is late if it still waits, and
it must not wait behind a young backlog, its own environment's or a heavier one's. What it takes is
charged to its environment's share, so due runs go first without widening anyone's share.

The same weights give each environment's drain curve (``curves``): how long until the n-th run of its
queue is written if the drain went on at one row per second, all queues draining at once by weight
(generalised processor sharing: when one queue empties, its share goes to the others). Divided by
the allowed rate, it is the estimate a buffered run's retrieve carries and the dashboard's ETA.

The environment type comes from ``MOLLIFIER["DIRECTORY"]`` (``environment_types``), looked up once
per environment and process on the drainer's main thread (never on the thread that leases the next
round while one is written: it reads Redis only); until then an environment weighs 1.
"""

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mollifier import buffer, conf, keys, scripts
from mollifier import client as redis_client
from mollifier.codec import as_text
from mollifier.directory import get_directory

logger = logging.getLogger(__name__)

DEFAULT_WEIGHT = 1
DUE_LEAD_MS = 2_000  # a delayed run this close to its time is due: its row lands before it
GPS_MAX_QUEUES = 300  # beyond this many queues, curves keep each queue's first share (linear)
CURVE_TTL_MS = 10_000  # curves of a drain that stopped vanish: no drain, no estimate
CURVE_EVERY_MS = 1_000  # how often a drainer republishes them

Pair = tuple[str, str]  # (organisation, environment)
Segment = tuple[float, float, float]  # (rows of the queue before it, seconds at its start, rows/s)


def weight(env_type: str | None) -> int:
    return conf.drain_weights().get((env_type or "").lower(), DEFAULT_WEIGHT)


class EnvironmentTypes:
    """Environment types by id, from the directory, cached for the life of the process (a type does
    not change). Unknown ids weigh ``DEFAULT_WEIGHT`` until ``resolve`` (which reads the database)
    has looked them up; an id the directory does not know stays unknown."""

    def __init__(self) -> None:
        self._types: dict[str, str] = {}
        self._pending: set[str] = set()

    def weight(self, env_id: str) -> int:
        if env_id not in self._types:
            self._pending.add(env_id)
            return DEFAULT_WEIGHT
        return weight(self._types[env_id])

    def learn(self, env_ids: Iterable[str]) -> None:
        """Look up the types of ``env_ids`` not known yet, now (reads the database)."""
        self._pending |= {env_id for env_id in env_ids if env_id not in self._types}
        self.resolve()

    def resolve(self) -> None:
        """Look up the ids met since the last call. Never raises: a lookup that fails is logged and
        tried again next time (the weights wait, the drain does not)."""
        if not self._pending:
            return
        wanted, self._pending = self._pending, set()
        directory = get_directory()
        try:
            found = directory.environment_types(wanted)
        except Exception:  # the directory is the app's code and database: whatever it raises, drain on
            logger.warning("mollifier.drain.environment_types_unavailable count=%d", len(wanted), exc_info=True)
            self._pending |= wanted
            return
        if len(self._types) > 100_000:  # a process that met that many environments: start over
            self._types.clear()
        self._types.update({env_id: found.get(env_id, "") for env_id in wanted})


def org_weights(envs: dict[str, list[str]], weights: dict[Pair, int]) -> dict[str, int]:
    """An organisation weighs as much as its heaviest environment with work."""
    return {org: max(weights[(org, env)] for env in org_envs) for org, org_envs in envs.items() if org_envs}


class Scheduler:
    """Two-level stride scheduling of one drainer's rounds (module docstring). Keeps a pass per
    active organisation and environment; forgets the ones that have no work (a newcomer starts at
    the lowest pass of those with work: no credit for idle time, no debt either)."""

    def __init__(self) -> None:
        self._org_pass: dict[str, float] = {}
        self._env_pass: dict[Pair, float] = {}
        self._turn = 0

    def begin(self, envs: dict[str, list[str]]) -> None:
        """Start a round over ``envs`` (organisation → environments with work)."""
        self._turn += 1
        active = {(org, env) for org, org_envs in envs.items() for env in org_envs}
        self._org_pass = {org: value for org, value in self._org_pass.items() if envs.get(org)}
        self._env_pass = {pair: value for pair, value in self._env_pass.items() if pair in active}
        start = min(self._org_pass.values(), default=0.0)
        for org, org_envs in envs.items():
            if not org_envs:
                continue
            self._org_pass.setdefault(org, start)
            known = [self._env_pass[(org, env)] for env in org_envs if (org, env) in self._env_pass]
            for env in org_envs:
                self._env_pass.setdefault((org, env), min(known, default=0.0))
        if start > 1e12:  # keep the floats small: only differences matter
            self._org_pass = {org: value - start for org, value in self._org_pass.items()}

    def charge(self, org: str, env: str, rows: int, *, org_weight: int, env_weight: int) -> None:
        self._org_pass[org] = self._org_pass.get(org, 0.0) + rows / org_weight
        self._env_pass[(org, env)] = self._env_pass.get((org, env), 0.0) + rows / env_weight

    def fill(
        self,
        *,
        budget: int,
        envs: dict[str, list[str]],
        weights: dict[Pair, int],
        quantum: int,
        take: Callable[[str, str, int], int],
        taken: dict[Pair, int] | None = None,
    ) -> dict[Pair, int]:
        """Share ``budget`` rows: repeatedly the organisation with the lowest pass, and in it the
        environment with the lowest pass, gets up to ``quantum`` rows (``take(org, env, rows)``
        returns how many it found), until the budget is spent or nobody has more. An environment
        takes at most ``quantum`` × its weight per round, counting ``taken`` (rows it already got
        this round). Returns the rows taken per environment."""
        taken = dict(taken or {})
        orgs = org_weights(envs, weights)
        order = {org: (i - self._turn) % max(len(orgs), 1) for i, org in enumerate(orgs)}  # ties rotate
        open_envs = {org: set(org_envs) for org, org_envs in envs.items() if org_envs}
        while budget > 0 and open_envs:
            org = min(open_envs, key=lambda o: (self._org_pass[o], order[o]))
            env = min(open_envs[org], key=lambda e: (self._env_pass[(org, e)], e))
            pair = (org, env)
            ask = min(budget, quantum, quantum * weights[pair] - taken.get(pair, 0))
            got = take(org, env, ask) if ask > 0 else 0
            if got:
                taken[pair] = taken.get(pair, 0) + got
                budget -= got
                self.charge(org, env, got, org_weight=orgs[org], env_weight=weights[pair])
            if got < ask or ask <= 0 or taken.get(pair, 0) >= quantum * weights[pair]:
                open_envs[org].discard(env)
                if not open_envs[org]:
                    del open_envs[org]
        return taken


def shares(queues: Iterable[Pair], weights: dict[Pair, int]) -> dict[Pair, float]:
    """Each queue's share of the drain while all of ``queues`` have work (they sum to 1)."""
    by_org: dict[str, list[str]] = {}
    for org, env in queues:
        by_org.setdefault(org, []).append(env)
    orgs = org_weights(by_org, weights)
    total = sum(orgs.values())
    result = {}
    for org, org_envs in by_org.items():
        inside = sum(weights[(org, env)] for env in org_envs)
        for env in org_envs:
            result[(org, env)] = orgs[org] / total * weights[(org, env)] / inside
    return result


def curves(backlogs: dict[Pair, int], weights: dict[Pair, int]) -> dict[Pair, list[Segment]]:
    """Each queue's drain curve at a total rate of one row per second (module docstring): segments
    (rows before, seconds at start, rows/s); the r-th row of a queue is written at
    ``seconds + (r − rows before) / rate`` of the segment that holds it (``seconds_until``)."""
    remaining = {pair: float(count) for pair, count in backlogs.items() if count > 0}
    drained = dict.fromkeys(remaining, 0.0)
    result: dict[Pair, list[Segment]] = {pair: [] for pair in remaining}
    if len(remaining) > GPS_MAX_QUEUES:  # O(n²) below; past this, each queue keeps its first share
        return {pair: [(0.0, 0.0, share)] for pair, share in shares(remaining, weights).items()}
    now = 0.0
    while remaining:
        rates = shares(remaining, weights)
        for pair, rate in rates.items():
            if not result[pair] or result[pair][-1][2] != rate:
                result[pair].append((drained[pair], now, rate))
        first = min(remaining, key=lambda pair: remaining[pair] / rates[pair])
        step = remaining[first] / rates[first]
        for pair in list(remaining):
            drained[pair] += rates[pair] * step
            remaining[pair] -= rates[pair] * step
            if pair == first or remaining[pair] <= 1e-9 * max(1.0, drained[pair]):
                del remaining[pair]
        now += step
    return result


def seconds_until(curve: list[Segment], rows: float) -> float:
    """When (at one row per second in all) the ``rows``-th row of the queue is written."""
    before, start, rate = curve[0]
    for segment in curve:
        if segment[0] > rows:
            break
        before, start, rate = segment
    return start + (rows - before) / rate


def publish_curves(*, envs: dict[str, list[str]], weights: dict[Pair, int], now_ms: int) -> bool:
    """Publish every queue's curve unless another drainer did within CURVE_EVERY_MS (one script;
    the queue lengths are read in one pipeline first)."""
    redis = redis_client.get()
    at = redis.hget(keys.drain_eta(), "at")
    if at is not None and 0 <= now_ms - int(as_text(at)) < CURVE_EVERY_MS:
        return False
    pairs = [(org, env) for org, org_envs in envs.items() for env in org_envs]
    drawn = curves(buffer.ready_counts(pairs), weights)
    fields = [
        part
        for (org, env), curve in drawn.items()
        for part in (keys.env_field(org, env), json.dumps([[round(x, 4) for x in segment] for segment in curve]))
    ]
    published = scripts.DRAIN_ETA(
        keys=[keys.drain_eta()], args=[now_ms, CURVE_TTL_MS, CURVE_EVERY_MS, *fields], client=redis
    )
    return bool(int(published))


@dataclass(frozen=True)
class Weighed:
    """The environments with work, each with its weight (from a directory lookup)."""

    envs: dict[str, list[str]]
    weights: dict[Pair, int]


def weigh(envs: dict[str, list[str]], weight_of: Callable[[str], int]) -> Weighed:
    return Weighed(envs, {(org, env): weight_of(env) for org, org_envs in envs.items() for env in org_envs})
