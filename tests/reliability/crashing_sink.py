"""A fault-injecting sink for the crash tests: the real sink, with the drainer process killed
(os._exit, like SIGKILL: no cleanup, no ack) at the step MOLLIFIER_CRASH_AT names.

- after_pop: the round is leased, nothing is written;
- before_commit: the rows are inserted inside the transaction, which never commits;
- after_commit: the rows are committed, the round is never acked.
"""

import os

from django.db import transaction

from runs.services import materialise


def crashing_sink(entries):
    step = os.environ["MOLLIFIER_CRASH_AT"]
    if step == "after_pop":
        os._exit(9)
    if step == "before_commit":
        with transaction.atomic():
            materialise._materialise(entries)
            os._exit(9)
    report = materialise.materialise_entries(entries)
    if step == "after_commit":
        os._exit(9)
    return report
