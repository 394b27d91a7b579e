"""What the mollifier raises; callers decide how each maps to an answer."""


class BufferUnavailable(Exception):
    """Redis could not be reached, timed out, or refused a command (mollifier/client.py raises it
    for every Redis failure). The caller decides: fail open (the gate, the claim), answer 503 (a
    read that needs the buffer), or back off (the drainer)."""


class RateWaitTooLong(Exception):
    """The shared drain rate grants no round before the caller's deadline (the dashboard's "drain
    now", which runs inside a web request); nothing was reserved."""


class ClaimTimeout(Exception):
    """Another trigger with the same idempotency key held the claim past the wait limit."""


class SinkUnavailable(Exception):
    """The sink's database could not be reached: retry the whole round later (with backoff).

    ``answered``: the database answered, with an error that a trivial query would not meet (a
    statement timeout under a lock, a full disk): the wait keeps its whole backoff. Otherwise
    (refused, no answer, shutting down) the drainer ends its wait as soon as the sink ``answers()``.
    """

    def __init__(self, message: str = "", *, answered: bool = False):
        super().__init__(message)
        self.answered = answered
