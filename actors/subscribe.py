"""``S.on.Customer.created(handler)``: subscribing to events.

One builder serves every form; what it does depends on the handler it is given::

    class Mailer(DO):
        @S.on.Customer.created               # in a class body: every Mailer that has
        async def welcome(self, event): ...  # been activated listens (see below)

        async def start(self):
            self.S.on.Order["*"](self.audit)                 # this actor, now
            await S.on["*"].deleted(S.Archive("main").keep)  # another actor: a call

``.with_(priority=, timeout=)`` sets the subscription's priority (among deliveries of
equally urgent events, higher first) and its handler's deadline.

A function in a class body is marked, and the class's actors subscribe themselves when
they are activated (their first call, alarm or delivery), once: subscriptions live in the
actor's database. A bound method of an actor subscribes that actor, inside one of its
own turns, and takes effect with the turn's commit. A stub's method subscribes the other
actor through a turn of its own: await it.
"""

from __future__ import annotations

import inspect
from typing import Any

from dotdo.runtime.services.workflow import check_priority, check_timeout, parse_path
from dotdo.runtime.stubs import MethodStub, method_parts
from dotdo.storage.errors import InvalidInput

SUBSCRIPTIONS_ATTR = "__dotdo_on__"


class On:
    """``S.on``: ``S.on.Noun.verb``, or ``S.on["*"].verb`` / ``S.on.Noun["*"]``."""

    __slots__ = ()

    def __getattr__(self, noun: str) -> _Noun:
        if noun.startswith("_"):
            raise AttributeError(noun)
        return _Noun(noun)

    def __getitem__(self, noun: str) -> _Noun:
        return _Noun(noun)

    def __repr__(self) -> str:
        return "<S.on>"


class _Noun:
    __slots__ = ("_noun",)

    def __init__(self, noun: str) -> None:
        self._noun = noun

    def __getattr__(self, verb: str) -> Pattern:
        if verb.startswith("_"):
            raise AttributeError(verb)
        return Pattern(f"{self._noun}.{verb}")

    def __getitem__(self, verb: str) -> Pattern:
        return Pattern(f"{self._noun}.{verb}")


class Pattern:
    """An event pattern to subscribe a handler to (call it with the handler)."""

    __slots__ = ("pattern", "priority", "timeout")

    def __init__(self, pattern: str, priority: int = 0, timeout: float | None = None) -> None:
        parse_path(pattern, wildcards=True)
        self.pattern = pattern
        self.priority = check_priority(priority)
        self.timeout = None if timeout is None else check_timeout(timeout)

    def with_(self, *, priority: int | None = None, timeout: float | None = None) -> Pattern:
        """The same pattern with a priority and/or a handler deadline (seconds)."""
        return Pattern(
            self.pattern, self.priority if priority is None else priority, self.timeout if timeout is None else timeout
        )

    def __call__(self, handler: Any) -> Any:
        if isinstance(handler, MethodStub):
            caller, target, name = method_parts(handler)
            subscriptions = getattr(caller, "subscriptions", None)
            if subscriptions is None:
                raise InvalidInput("subscribing another actor works through an in-process supervisor, not a connection")
            return subscriptions.subscribe_remote(target, self.pattern, name, priority=self.priority, timeout=self.timeout)
        owner = getattr(handler, "__self__", None)
        ctx = getattr(owner, "_dotdo_ctx", None)
        if inspect.ismethod(handler) and ctx is not None:
            return ctx.supervisor.subscriptions.subscribe(
                ctx.id, self.pattern, handler, priority=self.priority, timeout=self.timeout
            )
        if inspect.isfunction(handler):
            if not inspect.iscoroutinefunction(handler):
                raise InvalidInput(f"an event handler must be an async method, got {handler.__qualname__}")
            noun, verb = parse_path(self.pattern, wildcards=True)
            marks = list(getattr(handler, SUBSCRIPTIONS_ATTR, ()))
            marks.append((noun, verb, self.priority, self.timeout))
            setattr(handler, SUBSCRIPTIONS_ATTR, tuple(marks))
            return handler
        raise InvalidInput(
            f"S.on.{self.pattern} takes a method of an actor (self.method), a stub's method "
            f"(S.Kind('id').method) or, in a class body, an async method to decorate; got {handler!r}"
        )

    def __repr__(self) -> str:
        return f"<S.on.{self.pattern}>"


def declared(cls: type) -> tuple[tuple[str, str, str, int, float | None], ...]:
    """The subscriptions a class declares with ``@S.on...``, as (noun, verb, method,
    priority, timeout)."""
    found = []
    for name in dir(cls):
        fn = inspect.getattr_static(cls, name, None)
        for noun, verb, priority, timeout in getattr(fn, SUBSCRIPTIONS_ATTR, ()):
            found.append((noun, verb, name, priority, timeout))
    return tuple(sorted(found, key=lambda s: (s[0], s[1], s[2])))


on = On()
"""``on.Customer.created``: the same builder as ``S.on``."""
