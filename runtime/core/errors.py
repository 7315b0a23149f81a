"""Errors raised by the runtime (routing, turns, calls). See ``dotdo/errors.py`` for the tree::

    DotdoError
    ├── InvalidInput
    │   ├── InvalidArguments         a call's arguments do not fit the method
    │   └── BodyTooLarge             a request body is over the server's limit
    ├── ActorNotFound                unknown namespace
    ├── MethodNotAllowed             unknown, private or lifecycle method
    ├── ActorError                   the actor's code raised; carries the remote type
    ├── Aborted                      the actor called self.abort(reason): a fresh instance next
    ├── CpuLimitExceeded             a turn computed past the CPU-time limit; rolled back
    ├── CallTimeout                  the call's deadline passed
    │   └── DeadlockError            a call waited for a turn held up the same chain
    ├── Overloaded                   the actor's mailbox is full; retry later
    ├── ProtocolError                a peer broke the wire protocol
    ├── Unauthorized                 wrong or missing token
    └── Unavailable                  the actor cannot be reached now; retry later
        ├── SupervisorClosed         the supervisor is shutting down
        └── ConnectionLost           the connection closed with the call in flight
"""

from __future__ import annotations

from collections.abc import Sequence

from dotdo.storage.errors import DotdoError, InvalidInput


class InvalidArguments(InvalidInput):
    """A call's arguments do not fit the method's signature or types."""


class BodyTooLarge(InvalidInput):
    """A request body (over HTTP, or in a transport fetch frame) is over the server's
    limit (``--max-body``); nothing ran."""

    @classmethod
    def over(cls, size: int, limit: int, *, whole: bool = True) -> BodyTooLarge:
        """The error for a body of ``size`` bytes against ``limit``; not ``whole``:
        ``size`` is what had arrived when the body passed the limit."""
        return cls(f"request body of {size} bytes{'' if whole else ' or more'} is over the {limit}-byte limit")


class InvalidSchedule(InvalidInput):
    """A schedule phrase, cron string or time zone that cannot be understood."""


class ActorNotFound(DotdoError):
    """No actor kind is registered under this namespace.

    Attributes:
        namespace: The namespace asked for.
        known: The namespaces that exist.
    """

    def __init__(self, namespace: str, known: Sequence[str]) -> None:
        listing = ", ".join(sorted(known)) or "none"
        super().__init__(f"no actor kind {namespace!r}; known kinds: {listing}")
        self.namespace = namespace
        self.known = tuple(sorted(known))


class MethodNotAllowed(DotdoError):
    """The method does not exist on the actor, or may not be called from outside.

    Attributes:
        method: The method asked for.
        allowed: The methods that can be called.
    """

    def __init__(self, namespace: str, method: str, allowed: Sequence[str], reason: str = "") -> None:
        listing = ", ".join(sorted(allowed)) or "none"
        why = reason or "no such public method"
        super().__init__(f"{namespace}.{method}: {why}; callable methods: {listing}")
        self.method = method
        self.allowed = tuple(sorted(allowed))


class ActorError(DotdoError):
    """The actor's own code raised an exception; the turn was rolled back.

    Attributes:
        remote_type: The name of the exception class raised inside the actor.
        message: Its message.
    """

    def __init__(self, remote_type: str, message: str, *, address: tuple[str, str] | None = None) -> None:
        where = f" in {address[0]}/{address[1][:16]}" if address else ""
        super().__init__(f"{remote_type}{where}: {message}", address=address)
        self.remote_type = remote_type
        self.message = message


class Aborted(DotdoError):
    """The actor called ``self.abort(reason)`` (Durable Objects' ``ctx.abort()``): its
    turn was rolled back and its activation ended; the next call gets a fresh instance.

    Attributes:
        reason: What the actor gave as the reason.
    """

    def __init__(self, reason: str, *, address: tuple[str, str] | None = None) -> None:
        super().__init__(f"the actor aborted: {reason}", address=address)
        self.reason = reason


class CpuLimitExceeded(DotdoError):
    """A turn used more CPU time than the limit (``--cpu-limit``) allows: it was stopped
    inside its own code and rolled back, and its activation ended (its instance may be
    half way through something); the next call gets a fresh instance."""


class TurnStopped(BaseException):
    """Raised into a running turn to stop it (its ``abort``, its CPU limit). Not an
    ``Exception``, so that the actor's own ``except Exception`` cannot keep the turn
    going; the turn core rolls the turn back and the caller gets ``error``."""

    def __init__(self, error: DotdoError) -> None:
        super().__init__(error.public)
        self.error = error


class CallTimeout(DotdoError):
    """The call's deadline passed before it finished; its turn, if it ran, rolled back."""


class DeadlockError(CallTimeout):
    """A call could not get a turn because the call chain it waits on waits on it.

    Attributes:
        chain: The addresses along the cycle, as ``Namespace/id`` strings.
    """

    def __init__(self, message: str, chain: Sequence[str]) -> None:
        super().__init__(message)
        self.chain = tuple(chain)


class Overloaded(DotdoError):
    """The actor has too many calls waiting; this one was refused without running."""


class Unavailable(DotdoError):
    """The actor cannot be reached right now (restarting, moving). Safe to retry."""


class Moved(Unavailable):
    """The address was placed elsewhere while the call waited for its turn (the locator
    moved it). The supervisor sends such a call on to the new owner; a caller sees it
    only where no one could (then it is safe to retry)."""


class SupervisorClosed(Unavailable):
    """The supervisor is shutting down or has shut down."""


class ConnectionLost(Unavailable):
    """The connection to the server closed while the call was in flight; whether it ran
    is unknown (a turn either committed or rolled back, never half). Safe to retry when
    the call is idempotent."""


class NotSent(ConnectionLost):
    """The connection was found broken before the call left this side: it did not run.
    Always safe to retry."""


class ProtocolError(DotdoError):
    """A peer sent bytes that break the wire protocol (``docs/protocol.md``)."""


class Unauthorized(DotdoError):
    """The connection did not present the server's token; nothing was executed."""
