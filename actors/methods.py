"""Which methods of an actor class can be called from outside, and argument checking.

A method is callable when it is an ``async def`` whose name does not start with ``_``,
defined on the user's class (or a base or mixin of it other than ``DO`` and its bases),
and not a lifecycle hook.
Its arguments are checked before its turn starts: against its signature, and against
its type annotations with pydantic (lax mode: ``"3"`` is accepted for an ``int``), so
a wrong call is refused with ``InvalidArguments`` and changes nothing.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic

from dotdo.runtime.core.errors import InvalidArguments
from dotdo.runtime.core.kinds import Binder, MethodSpec

# Hooks the runtime calls itself; never callable by RPC.
LIFECYCLE = frozenset({"fetch", "alarm", "on_start", "websocket_message", "websocket_close", "websocket_error"})

_CONFIG = pydantic.ConfigDict(arbitrary_types_allowed=True)
DESCRIBED = 10  # wrong arguments named in one InvalidArguments message

F = TypeVar("F", bound=Callable[..., Any])


def rpc(fn: F | None = None, *, timeout: float | None = None) -> Any:
    """Mark a method as callable and set its options (``@rpc`` or ``@rpc(timeout=5)``).

    Every public async method is callable without it; use it to give a method its own
    default deadline, or to make the intent explicit.

    Args:
        timeout: Seconds a call of this method may take unless the caller says otherwise.
    """
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(f"rpc timeout must be a positive number of seconds, got {timeout!r}")

    def mark(f: F) -> F:
        if not inspect.iscoroutinefunction(f):
            raise TypeError(f"@rpc needs an async method, got {f.__qualname__}")
        if f.__name__.startswith("_"):
            raise TypeError(f"@rpc cannot expose private method {f.__qualname__}")
        if f.__name__ in LIFECYCLE:
            raise TypeError(f"@rpc cannot expose lifecycle hook {f.__qualname__}")
        f.__dotdo_rpc_timeout__ = timeout  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def binder_for(fn: Callable[..., Any]) -> Binder:
    """Build the argument checker of method ``fn`` (its first parameter is ``self``)."""
    signature = inspect.signature(fn)
    instance, *params = signature.parameters.values()
    public = signature.replace(parameters=params, return_annotation=inspect.Signature.empty)
    name = fn.__name__
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: fall back to the signature alone
        hints = {}
    annotations = {p.name: hints[p.name] for p in params if p.name in hints}

    def shadow(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    shadow.__signature__ = public  # type: ignore[attr-defined]
    shadow.__annotations__ = annotations
    shadow.__name__ = shadow.__qualname__ = name
    validated: Callable[..., tuple[tuple[Any, ...], dict[str, Any]]] | None = None
    if annotations:
        try:
            validated = pydantic.validate_call(config=_CONFIG)(shadow)
        except Exception:  # a type pydantic cannot check: the signature still is
            validated = None

    if not params:

        def bind_nothing(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            if args or kwargs:
                raise InvalidArguments(f"{name}() takes no arguments")
            return args, kwargs

        return bind_nothing

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if kwargs and instance.name in kwargs:  # the instance's own parameter is never an argument
            raise InvalidArguments(f"{name}() got an unexpected keyword argument {instance.name!r}")
        if validated is not None:
            try:
                return validated(*args, **kwargs)
            except pydantic.ValidationError as exc:
                raise InvalidArguments(_describe(name, params, exc)) from None
            except TypeError:  # pydantic before 2.14 cannot take a keyword argument named "self"
                checked(args, kwargs)
                raise InvalidArguments(f"{name}(): a keyword argument named 'self' cannot be checked") from None
        checked(args, kwargs)
        return args, kwargs

    def checked(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            public.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"{name}(): {exc}") from None

    return bind


def _describe(name: str, params: list[inspect.Parameter], exc: pydantic.ValidationError) -> str:
    """One line naming each wrong argument (the first ``DESCRIBED`` of them, then how many
    more: a call with thousands of wrong values gets a message of bounded size)."""
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
    problems = []
    errors = exc.errors()
    for error in errors[:DESCRIBED]:
        loc = error.get("loc", ())
        where = loc[0] if loc else "?"
        if isinstance(where, int):
            if where < len(positional):
                where = positional[where].name
            elif star is not None:
                where = f"{star.name}[{where - len(positional)}]"
        problems.append(f"argument {where!r}: {error.get('msg', 'invalid')}")
    if len(errors) > DESCRIBED:
        problems.append(f"and {len(errors) - DESCRIBED:,} more")
    return f"{name}(): " + "; ".join(problems)


def public_methods(cls: type, base: type) -> tuple[dict[str, MethodSpec], dict[str, str]]:
    """The callable methods of ``cls`` (defined on it or any base, mixins included, except
    ``base`` and its own bases), and the names that exist but cannot be called, each with
    the reason."""
    methods: dict[str, MethodSpec] = {}
    hidden: dict[str, str] = {name: "a lifecycle hook is not callable from outside" for name in LIFECYCLE}
    for name in dir(base):
        if not name.startswith("_") and name not in hidden:
            hidden[name] = "part of the DO base class, not callable from outside"
    for klass in reversed(cls.__mro__):
        if klass in base.__mro__:  # DO and what it derives from; mixins count as the user's
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_") or name in LIFECYCLE:
                continue
            if isinstance(attr, staticmethod | classmethod):
                hidden[name] = "static and class methods are not callable from outside"
                methods.pop(name, None)
                continue
            if not inspect.isfunction(attr):
                continue
            if not inspect.iscoroutinefunction(attr):
                hidden[name] = "only async methods are callable from outside"
                methods.pop(name, None)
                continue
            timeout = getattr(attr, "__dotdo_rpc_timeout__", None)
            methods[name] = MethodSpec(name, attr, binder_for(attr), timeout)
            hidden.pop(name, None)
    return methods, hidden
