"""A model-based test of the buffer and its drain (Hypothesis stateful testing, STYLE §10).

Random sequences of what users and drainers do, against the real Redis and Postgres: triggers
(keyed or not, buffered or not, on a bypass path, in batches), cancels, tags, metadata,
reschedules, idempotency-key resets, listing walks; and the drain split into its steps — lease,
fenced write (also one left open mid-transaction while everything else goes on), ack — with time
moving past leases and drainers dying between any two steps. After every step the stores are
checked against a small model of what the API has promised.

Budget: MODEL_EXAMPLES (default 15) sequences of MODEL_STEPS (default 40) steps, derandomised, so
CI is reproducible; raise them for a long run: ``MODEL_EXAMPLES=5000 make test``.
"""

import os
import threading
from dataclasses import dataclass, field

import pytest
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from mollifier import buffer, keys
from mollifier.client import get as redis_client
from mollifier.clock import now_ms
from mollifier.drainer import Drainer
from runs.api.serializers import trigger_options_from
from runs.exceptions import IdempotencyKeyNotFound, InvalidRequest, ServiceUnavailable
from runs.models import BatchTaskRun, BatchTaskRunItem, RunStatus, TaskRun
from runs.selectors import task_run_get, task_run_list
from runs.services.batches import BatchItem, batch_add_items, batch_create, batch_retrieve
from runs.services.cancel import task_run_cancel
from runs.services.idempotency import idempotency_key_reset
from runs.services.materialise import TaskRunSink
from runs.services.mutations import metadata_of, task_run_add_tags, task_run_reschedule, task_run_update_metadata
from runs.services.trigger import task_run_trigger
from tests.conftest import enroll
from tests.factories import EnvironmentFactory, TaskRunFactory

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "15"))
STEPS = int(os.environ.get("MODEL_STEPS", "40"))
LEASE_MS = 60_000
TASK = "model-task"
KEYS = ["k1", "k2"]


@dataclass
class Promise:
    """What the API has acknowledged about one run."""

    key: str | None
    delayed: bool
    cancelled: bool = False
    tags: set = field(default_factory=set)
    metadata: int | None = None


class OpenWrite:
    """A drainer's fenced write held open after its pin (a stall mid-transaction), on a thread of
    its own (its own database connection), released by ``finish`` or ``abort``."""

    def __init__(self, entries):
        self.pinned, self.go = threading.Event(), threading.Event()
        self.abort_write = False
        self.error: Exception | None = None

        def pin(txid):
            kept = buffer.pin(entries, txid=txid, now_ms=now_ms(), lease_ms=LEASE_MS)
            self.pinned.set()
            self.go.wait(60)
            if self.abort_write:
                raise RuntimeError("the drainer died mid-transaction")
            return kept

        def write():
            try:
                TaskRunSink().write(entries, pin=pin)
            except Exception as error:  # the abort, or a real failure the test then reports
                self.error = error
            finally:
                self.pinned.set()
                connection.close()

        self.thread = threading.Thread(target=write)
        self.thread.start()
        assert self.pinned.wait(30)

    def finish(self) -> None:
        self.go.set()
        self.thread.join(60)
        assert self.error is None, self.error

    def abort(self) -> None:
        self.abort_write = True
        self.go.set()
        self.thread.join(60)


@dataclass
class ModelDrainer:
    entries: list = field(default_factory=list)
    written: bool = False
    open: OpenWrite | None = None


class BufferModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        redis_client().flushdb()
        for model in (BatchTaskRunItem, BatchTaskRun, TaskRun):
            model.objects.all().delete()
        self.promises: dict[str, Promise] = {}
        self.holders: dict[str, str] = {}  # idempotency key -> run id (the live holder)
        self.batches: dict[str, dict[int, str]] = {}  # batch id -> index -> run id
        self.drainers = {"a": ModelDrainer(), "b": ModelDrainer()}
        self.walk: dict | None = None  # a listing walk in progress

    @initialize(keys_of_burst=st.lists(st.sampled_from([None, *KEYS]), min_size=2, max_size=6))
    def environment(self, keys_of_burst):
        """An enrolled environment, a parent run for triggerAndWait children, and a first burst
        that waits in the buffer (so drainers have work from the first step)."""
        self.env = enroll(EnvironmentFactory())
        self.org, self.env_id = str(self.env.organization_id), str(self.env.pk)
        self.parent = TaskRunFactory(environment=self.env, task_identifier="parent")
        for key in keys_of_burst:
            self._trigger(key=key, buffered=True, delayed=False, bypass=False)

    # -- what users do ------------------------------------------------------------------------

    def _gate(self, buffered: bool) -> None:
        tripped = keys.tripped(self.org, self.env_id)
        if buffered:
            redis_client().set(tripped, "1", px=60_000)
        else:
            redis_client().delete(tripped)

    def _options(self, key, delayed, bypass) -> dict:
        options = {}
        if key:
            options["idempotencyKey"] = key
        if delayed:
            options["delay"] = "1h"
        if bypass:
            options.update(parentRunId=self.parent.friendly_id, resumeParentOnCompletion=True)
        return options

    def _record(self, run_id: str, key, delayed, cached: bool | None = None) -> None:
        """A trigger's answer: the key's live holder when there is one, else a new run.
        ``cached``: what the trigger said (None for batch items, which do not say)."""
        if key and key in self.holders:
            assert cached in (True, None) and run_id == self.holders[key], (key, run_id, self.holders)
            return
        assert cached in (False, None) and run_id not in self.promises, (key, run_id)
        self.promises[run_id] = Promise(key=key, delayed=delayed)
        if key:
            self.holders[key] = run_id

    def trigger(self, data):
        key = data.draw(st.sampled_from([None, *KEYS]), label="key")
        buffered, delayed, bypass = (
            data.draw(st.booleans(), label=label) for label in ("buffered", "delayed", "bypass")
        )
        self._trigger(key=key, buffered=buffered, delayed=delayed, bypass=bypass)

    def _trigger(self, *, key, buffered, delayed, bypass):
        self._gate(buffered)
        options = trigger_options_from({"options": self._options(key, delayed, bypass)}, now=timezone.now())
        outcome = task_run_trigger(environment=self.env, task_identifier=TASK, options=options)
        self._record(outcome.run.friendly_id, key, delayed and not outcome.is_cached, outcome.is_cached)

    def batch(self, data):
        self._gate(data.draw(st.booleans(), label="buffered"))
        keys_of_items = data.draw(st.lists(st.sampled_from([None, *KEYS]), min_size=1, max_size=3), label="item keys")
        batch, _ = batch_create(environment=self.env, run_count=len(keys_of_items), task_identifiers=[TASK])
        now = timezone.now()
        items = [
            BatchItem(
                index=i,
                task_identifier=TASK,
                options=trigger_options_from({"options": self._options(k, False, False)}, now=now),
            )
            for i, k in enumerate(keys_of_items)
        ]
        batch_add_items(environment=self.env, batch_id=batch.friendly_id, items=items, now=now)
        _, run_ids = batch_retrieve(environment=self.env, batch_id=batch.friendly_id)
        assert len(run_ids) == len(items)
        for run_id, key in zip(run_ids, keys_of_items):
            self._record(run_id, key, False)
        self.batches[batch.id] = dict(enumerate(run_ids))

    def _a_run(self, data) -> str:
        """A run to change: half the time one a drainer holds (where the interleavings are)."""
        held = sorted({entry.run_id for drainer in self.drainers.values() for entry in drainer.entries})
        if held and data.draw(st.booleans()):
            return data.draw(st.sampled_from(held))
        return data.draw(st.sampled_from(sorted(self.promises)))

    def change_a_run(self, data):
        """Cancel, tag, set metadata or reschedule a run; a 503 acknowledges nothing (the SDK
        would retry)."""
        change = data.draw(st.sampled_from(["cancel", "tag", "metadata", "reschedule"]), label="change")
        run_id = self._a_run(data)
        promise = self.promises[run_id]
        try:
            run = task_run_get(environment=self.env, run_id=run_id)
            if change == "cancel":
                task_run_cancel(run=run)
                promise.cancelled = True
            elif change == "tag":
                tag = data.draw(st.sampled_from(["red", "green", "blue"]))
                task_run_add_tags(run=run, tags=[tag])
                promise.tags.add(tag)
            elif change == "metadata":
                value = data.draw(st.integers(0, 9))
                task_run_update_metadata(run=run, metadata={"v": value}, operations=[])
                promise.metadata = value
            else:
                task_run_reschedule(run=run, delay="2h")
                assert promise.delayed and not promise.cancelled, run_id
        except ServiceUnavailable:
            return
        except InvalidRequest:
            assert change == "reschedule" and (not promise.delayed or promise.cancelled), run_id

    def reset_key(self, data):
        key = data.draw(st.sampled_from(KEYS), label="key")
        try:
            idempotency_key_reset(environment=self.env, task_identifier=TASK, key=key)
        except ServiceUnavailable:
            return
        except IdempotencyKeyNotFound:
            assert key not in self.holders, key
            return
        self.holders.pop(key, None)
        for promise in self.promises.values():
            if promise.key == key:
                promise.key = None

    def walk_a_page(self, data):
        """One page of a listing walk; drains and changes may happen between pages."""
        page_size = data.draw(st.integers(1, 4), label="page size")
        if self.walk is None:
            self.walk = {"expected": sorted(self.promises), "seen": [], "after": None}
        walk = self.walk
        page = task_run_list(environment=self.env, filters={"task_identifier": [TASK]}).page(
            size=page_size, after=walk["after"]
        )
        walk["seen"] += [run.friendly_id for run in page.runs]
        assert page.runs or page.next is None, "an empty page while more follow"
        walk["after"] = page.next
        if page.next is None:
            self.walk = None
            assert sorted(walk["seen"]) == walk["expected"], "a walk saw a run twice, or missed one"

    # -- what drainers do ---------------------------------------------------------------------

    def _pick(self, data, can) -> ModelDrainer:
        names = [name for name, drainer in self.drainers.items() if can(drainer)]
        return self.drainers[data.draw(st.sampled_from(names))]

    def _any(self, can) -> bool:
        return any(can(drainer) for drainer in self.drainers.values())

    @staticmethod
    def _idle(drainer: ModelDrainer) -> bool:
        return not drainer.entries and not drainer.open

    @staticmethod
    def _holding(drainer: ModelDrainer) -> bool:
        return bool(drainer.entries)

    @staticmethod
    def _can_write(drainer: ModelDrainer) -> bool:
        return bool(drainer.entries) and not drainer.written and not drainer.open

    def lease(self, data):
        """Lease up to 3 runs; sometimes the drainer then stalls past its lease at once."""
        drainer = self._pick(data, self._idle)
        stalls = data.draw(st.booleans(), label="stalls past its lease")
        popped = buffer.pop(org_id=self.org, env_id=self.env_id, limit=3, lease_ms=LEASE_MS, now_ms=now_ms())
        drainer.entries, drainer.written = popped.entries, False
        if stalls:
            self._expire(drainer)

    def _expire(self, drainer: ModelDrainer) -> None:
        for entry in drainer.entries:
            redis_client().zadd(keys.leases(self.org, self.env_id), {entry.run_id: 0}, xx=True)

    def time_passes_its_lease(self, data):
        self._expire(self._pick(data, self._holding))

    def write(self, data):
        drainer = self._pick(data, self._can_write)
        entries = drainer.entries
        TaskRunSink().write(
            entries, pin=lambda txid: buffer.pin(entries, txid=txid, now_ms=now_ms(), lease_ms=LEASE_MS)
        )
        drainer.written = True

    def write_and_stall(self, data):
        drainer = self._pick(data, self._can_write)
        drainer.open = OpenWrite(drainer.entries)

    def stall_ends(self, data):
        drainer = self._pick(data, lambda drainer: drainer.open)
        drainer.open.finish()
        drainer.open, drainer.written = None, True

    def ack(self, data):
        drainer = self._pick(data, lambda drainer: drainer.written and not drainer.open)
        buffer.ack(drainer.entries, now_ms=now_ms())
        drainer.entries, drainer.written = [], False

    def dies(self, data):
        drainer = self._pick(data, lambda drainer: not self._idle(drainer))
        if drainer.open:
            drainer.open.abort()
        drainer.entries, drainer.written, drainer.open = [], False, None

    def a_real_drainer_round(self, data):
        Drainer().drain_round()

    # -- one step: an action drawn by weight among those possible now --------------------------

    def _possible(self) -> dict[str, int]:
        """Action → weight. One rule draws among them (rather than one rule each) so that the
        interleavings that matter — a lease, time passing, a change, a late write — come often,
        not only when a random subset of rules happens to be enabled together."""
        can = {
            "trigger": 3,
            "batch": 1,
            "reset_key": 1,
            "walk_a_page": 2,
            "change_a_run": 4 if self.promises else 0,
            "lease": 3 if self._any(self._idle) else 0,
            "time_passes_its_lease": 2 if self._any(self._holding) else 0,
            "write": 3 if self._any(self._can_write) else 0,
            "write_and_stall": 2 if self._any(self._can_write) else 0,
            "stall_ends": 2 if self._any(lambda drainer: drainer.open) else 0,
            "ack": 3 if self._any(lambda drainer: drainer.written and not drainer.open) else 0,
            "dies": 1 if self._any(lambda drainer: not self._idle(drainer)) else 0,
            "a_real_drainer_round": 1 if self._any(self._idle) else 0,
        }
        return {name: weight for name, weight in can.items() if weight}

    @rule(data=st.data())
    def step(self, data):
        choices = [name for name, weight in self._possible().items() for _ in range(weight)]
        getattr(self, data.draw(st.sampled_from(choices), label="action"))(data)

    # -- what must hold after every step ------------------------------------------------------

    def _stores(self):
        rows = {f"run_{run.id}": run for run in TaskRun.objects.filter(task_identifier=TASK)}
        entries = {e.run_id: e for e in buffer.get_many(org_id=self.org, run_ids=list(self.promises))}
        holders = {
            k.decode(): v.decode() for k, v in redis_client().hgetall(keys.holders(self.org, self.env_id)).items()
        }
        return rows, entries, holders

    @invariant()
    def each_run_is_in_one_place_and_reads_show_what_was_acknowledged(self):
        if not hasattr(self, "env"):
            return
        rows, entries, holders = self._stores()
        assert set(rows) <= set(self.promises), "a row nobody was answered"
        for run_id, promise in self.promises.items():
            entry = entries.get(run_id)
            waiting = entry is not None and not entry.materialised
            assert run_id in rows or waiting, f"{run_id} is in neither store"
            if run_id in rows and waiting:
                assert ":" in holders.get(run_id, ""), f"{run_id} is in both stores without being pinned"
            run = task_run_get(environment=self.env, run_id=run_id)
            self._check(run, promise)

    def _check(self, run, promise: Promise) -> None:
        where = f"{run.friendly_id} ({'buffered' if run.is_buffered else 'row'})"
        if promise.cancelled:
            assert run.status == RunStatus.CANCELED, where
        else:
            assert run.status == (RunStatus.DELAYED if promise.delayed else RunStatus.QUEUED), (where, run.status)
        assert promise.tags <= set(run.tags), (where, run.tags, promise.tags)
        if promise.metadata is not None:
            assert metadata_of(run) == {"v": promise.metadata}, (where, run.metadata)
        assert run.idempotency_key == promise.key, (where, run.idempotency_key, promise.key)

    @invariant()
    def each_key_has_at_most_one_live_holder(self):
        if not hasattr(self, "env"):
            return
        rows, entries, _ = self._stores()
        for key in KEYS:
            holding = {run_id for run_id, row in rows.items() if row.idempotency_key == key}
            holding |= {run_id for run_id, e in entries.items() if e.idempotency_key == key and not e.materialised}
            assert len(holding) <= 1, (key, holding)
            assert holding <= {self.holders.get(key)}, (key, holding, self.holders.get(key))

    @invariant()
    def the_buffered_count_and_bytes_match_the_entries(self):
        if not hasattr(self, "env"):
            return
        redis = redis_client()
        waiting = held = 0
        for key in redis.scan_iter(match=f"{keys.entry(self.org, '')}*", count=1000):
            materialised, size = redis.hmget(key, "materialised", "bytes")
            if materialised != b"1":
                waiting += 1
                held += int(size)
        assert buffer.buffered_count(self.org) == waiting
        assert buffer.buffered_bytes(self.org) == held

    def teardown(self):
        if not hasattr(self, "env"):
            return
        for drainer in self.drainers.values():
            if drainer.open:
                drainer.open.finish()
        later = now_ms() + 2 * LEASE_MS  # every lease has expired: pins are settled, leases taken back
        Drainer(clock=lambda: later).run(once=True)
        rows, entries, _ = self._stores()
        assert sorted(rows) == sorted(self.promises), "after the drain: every run exactly one row"
        for run_id, promise in self.promises.items():
            self._check(rows[run_id], promise)
        assert buffer.buffered_count(self.org) == 0
        assert buffer.buffered_bytes(self.org) == 0
        for batch_id, members in self.batches.items():
            batch, run_ids = batch_retrieve(environment=self.env, batch_id=f"batch_{batch_id}")
            assert batch.status == BatchTaskRun.Status.COMPLETED, batch_id
            assert run_ids == [members[i] for i in sorted(members)]


def test_the_buffer_keeps_every_promise(mollifier_on, settings):
    settings.TRIGGER = {**settings.TRIGGER, "MID_DRAIN_WAIT_SECONDS": 0.05}  # a 503 need not take 2 s here
    run_state_machine_as_test(
        BufferModel,
        settings=hypothesis_settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=True,  # CI is reproducible; MODEL_EXAMPLES widens the search
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
