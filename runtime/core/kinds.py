"""What the runtime knows about an actor kind, and the registry of kinds by namespace.

The runtime does not know the ``DO`` base class (that lives in ``actors``, above it).
A kind is described by a ``KindSpec``; a class registers by providing
``__dotdo_kind__()`` returning one. Everything the runtime may call on an instance is
resolved here, once, when the kind is registered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dotdo.storage.address import validate_namespace
from dotdo.storage.errors import DotdoError

from dotdo.runtime.core.errors import ActorNotFound, MethodNotAllowed

if TYPE_CHECKING:
    from dotdo.runtime.core.context import ActorContext

Handler = Callable[..., Awaitable[Any]]
Binder = Callable[[tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """A method callable from outside.

    Attributes:
        name: Its name.
        function: The unbound coroutine function (called with the instance first).
        bind: Checks and converts ``(args, kwargs)``; raises ``InvalidArguments``.
        timeout: The method's default deadline in seconds (None: the server's).
    """

    name: str
    function: Handler
    bind: Binder
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class KindSpec:
    """Everything the runtime needs to host one actor kind.

    Attributes:
        namespace: Where its actors live (``/{namespace}/{id}``).
        create: Builds an instance for an activation.
        methods: Public methods by name.
        fetch: ``async fetch(instance, request)`` for HTTP, if the kind has one.
        on_start: ``async on_start(instance)``, run once per activation before any call.
        alarm: ``async alarm(instance, info)``, run when the actor's alarm fires.
        hidden: Names that exist on the class but may not be called, with the reason.
        cls: The class, for messages and introspection.
        subscriptions: Events every actor of the kind listens to once activated, as
            (noun, verb, method, priority, timeout).
    """

    namespace: str
    create: Callable[[ActorContext], Any]
    methods: Mapping[str, MethodSpec]
    fetch: Handler | None = None
    on_start: Handler | None = None
    alarm: Handler | None = None
    hidden: Mapping[str, str] = field(default_factory=dict)
    cls: type | None = None
    subscriptions: tuple[tuple[str, str, str, int, float | None], ...] = ()


def spec_of(kind: type | KindSpec) -> KindSpec:
    """The ``KindSpec`` of a class (through its ``__dotdo_kind__``) or a spec itself."""
    if isinstance(kind, KindSpec):
        return kind
    make = getattr(kind, "__dotdo_kind__", None)
    if make is None:
        raise DotdoError(f"{kind!r} is not an actor kind: subclass dotdo.DO")
    spec = make()
    if not isinstance(spec, KindSpec):
        raise DotdoError(f"{kind!r}.__dotdo_kind__() did not return a KindSpec")
    return spec


class Registry:
    """Actor kinds by namespace. Immutable once built."""

    __slots__ = ("_kinds",)

    def __init__(self, kinds: Iterable[type | KindSpec]) -> None:
        table: dict[str, KindSpec] = {}
        for kind in kinds:
            spec = spec_of(kind)
            validate_namespace(spec.namespace)
            other = table.get(spec.namespace)
            if other is not None and other.cls is not spec.cls:
                raise DotdoError(
                    f"two actor kinds use the namespace {spec.namespace!r}: "
                    f"{_name(other.cls)} and {_name(spec.cls)}"
                )
            table[spec.namespace] = spec
        self._kinds = table

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Registered namespaces, sorted."""
        return tuple(sorted(self._kinds))

    def __contains__(self, namespace: object) -> bool:
        return namespace in self._kinds

    def __iter__(self) -> Any:
        return iter(self._kinds.values())

    def kind(self, namespace: str) -> KindSpec:
        """The kind registered under ``namespace``.

        Raises:
            ActorNotFound: There is none (the error lists those that exist).
        """
        spec = self._kinds.get(namespace)
        if spec is None:
            raise ActorNotFound(namespace, list(self._kinds))
        return spec

    def method(self, namespace: str, name: str) -> MethodSpec:
        """The public method ``name`` of the kind in ``namespace``.

        Raises:
            ActorNotFound: Unknown namespace.
            MethodNotAllowed: Unknown, private or lifecycle method (with the reason).
        """
        spec = self.kind(namespace)
        method = spec.methods.get(name)
        if method is None:
            raise method_error(spec, name)
        return method


def method_error(spec: KindSpec, name: object) -> MethodNotAllowed:
    """The error for calling ``name`` on ``spec``, saying why it cannot be called."""
    shown = name if isinstance(name, str) else repr(name)
    if not isinstance(name, str):
        reason = "method names are strings"
    elif name.startswith("_"):
        reason = "names starting with '_' are private"
    else:
        reason = spec.hidden.get(name, "")
    return MethodNotAllowed(spec.namespace, shown[:100], list(spec.methods), reason)


def _name(cls: type | None) -> str:
    return f"{cls.__module__}.{cls.__qualname__}" if cls is not None else "?"
