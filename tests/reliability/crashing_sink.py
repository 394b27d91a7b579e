"""A fault-injecting sink for the crash tests: the real sink, with the drainer process killed
(os._exit, like SIGKILL: no cleanup, no ack) at the step MOLLIFIER_CRASH_AT names.

- after_pop: the round is leased, nothing is written;
- before_commit: the round is pinned to its transaction, which never commits;
- after_commit: the rows are committed, the round is never acked.
"""

import os

from runs.services.materialise import TaskRunSink


class CrashingSink(TaskRunSink):
    def write(self, entries, *, pin, last_resort=False):
        step = os.environ["MOLLIFIER_CRASH_AT"]
        if step == "after_pop":
            os._exit(9)

        def pin_then_maybe_crash(txid):
            kept = pin(txid)
            if step == "before_commit":
                os._exit(9)  # a pinned round whose transaction dies with the process
            return kept

        report = super().write(entries, pin=pin_then_maybe_crash, last_resort=last_resort)
        if step == "after_commit":
            os._exit(9)
        return report
