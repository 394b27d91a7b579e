"""Running calls at the same moment, from real threads (each with its own database connection)."""

import threading
from collections.abc import Callable, Iterable
from typing import Any

from django.db import connection


def run_concurrently(call: Callable[..., Any], arguments: Iterable[tuple]) -> tuple[list[Any], list[Exception]]:
    """Call ``call(*args)`` for every tuple in ``arguments``, each on its own thread, all released
    together by a barrier. Returns the results (in ``arguments`` order; None where it raised) and
    the exceptions raised."""
    arguments = list(arguments)
    barrier = threading.Barrier(len(arguments))
    results: list[Any] = [None] * len(arguments)
    errors: list[Exception] = []

    def worker(index: int, args: tuple) -> None:
        try:
            barrier.wait()
            results[index] = call(*args)
        except Exception as error:  # collected for the test to assert on
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, args)) for i, args in enumerate(arguments)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results, errors
