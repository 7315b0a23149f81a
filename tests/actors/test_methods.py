"""Which methods of a DO class are callable, argument checking, and ``@rpc``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dotdo.actors.methods import LIFECYCLE, binder_for, public_methods
from dotdo import DO, ActorId, ActorNotFound, CallTimeout, InvalidArguments, MethodNotAllowed, rpc
from dotdo.runtime.supervisor import Supervisor


class Greeter:
    """A plain mixin (not a DO subclass) whose async methods the user means to expose."""

    async def greet(self, name: str) -> str:
        return f"hello {name}"

    def helper(self) -> int:
        return 1


class Base(DO):
    async def inherited(self) -> str:
        return "from Base"

    async def overridden(self) -> str:
        return "Base"

    def made_async(self) -> str:
        return "sync in Base"

    async def made_sync(self) -> str:
        return "async in Base"


class Kind(Greeter, Base):
    async def public(self) -> str:
        return "public"

    async def overridden(self) -> str:
        return "Kind"

    async def made_async(self) -> str:
        return "async in Kind"

    def made_sync(self) -> str:  # type: ignore[override]
        return "sync in Kind"

    def sync_method(self) -> int:
        return 1

    async def _private(self) -> int:
        return 1

    async def __dunder__(self) -> int:
        return 1

    @staticmethod
    async def static() -> int:
        return 1

    @classmethod
    async def klass(cls) -> int:
        return 1

    @property
    def prop(self) -> int:
        return 1

    async def on_start(self) -> None:
        pass

    async def fetch(self, request: Any) -> Any:
        return None

    async def alarm(self) -> None:
        pass

    # -- for the argument checks --------------------------------------------------

    async def typed(self, a: int, b: str = "x", *rest: int, flag: bool = False, **extra: float) -> list[Any]:
        return [a, b, list(rest), flag, extra]

    async def untyped(self, a, b=2):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
        return [a, b]

    async def unresolvable(self, a: "NoSuchType") -> Any:  # type: ignore[name-defined]  # noqa: F821
        return a

    async def nothing(self) -> str:
        return "nothing"

    async def items(self, xs: list[int]) -> int:
        return sum(xs)

    async def optional(self, v: int | None = None) -> int | None:
        return v

    async def keyword_only(self, *, k: int) -> int:
        return k

    @rpc
    async def marked(self) -> str:
        return "marked"

    @rpc(timeout=0.5)
    async def quick(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return "done"


@pytest.fixture
async def sup(tmp_path: Path) -> Any:
    async with Supervisor([Kind], tmp_path) as supervisor:
        yield supervisor


# -- discovery -----------------------------------------------------------------------


def test_the_callable_methods_of_a_kind() -> None:
    spec = Kind.__dotdo_kind__()
    assert set(spec.methods) == {
        "public",
        "inherited",
        "overridden",
        "made_async",
        "greet",  # from a plain mixin
        "typed",
        "untyped",
        "unresolvable",
        "nothing",
        "items",
        "optional",
        "keyword_only",
        "marked",
        "quick",
    }
    assert spec.methods["overridden"].function is Kind.overridden


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("sync_method", "only async methods"),
        ("helper", "only async methods"),  # a sync method of the mixin
        ("made_sync", "only async methods"),  # async in the base, overridden by a sync one
        ("static", "static and class methods"),
        ("klass", "static and class methods"),
        ("fetch", "lifecycle hook"),
        ("on_start", "lifecycle hook"),
        ("alarm", "lifecycle hook"),
        ("namespace", "part of the DO base class"),
    ],
)
def test_names_that_exist_but_are_not_callable_say_why(name: str, reason: str) -> None:
    spec = Kind.__dotdo_kind__()
    assert name not in spec.methods
    assert reason in spec.hidden[name]


def test_private_and_dunder_names_are_never_listed() -> None:
    spec = Kind.__dotdo_kind__()
    for name in ("_private", "__dunder__", "__init__", "_dotdo_create", "__dotdo_kind__", "prop"):
        assert name not in spec.methods
    assert "prop" not in spec.hidden  # not a method at all: "no such public method"


def test_public_names_of_do_itself_are_not_callable() -> None:
    spec = Kind.__dotdo_kind__()
    inherited = [name for name in dir(DO) if not name.startswith("_") and name not in LIFECYCLE]
    assert "namespace" in inherited
    for name in inherited:
        assert name not in spec.methods
        assert spec.hidden[name] == "part of the DO base class, not callable from outside"


def test_lifecycle_names() -> None:
    assert LIFECYCLE == frozenset({"fetch", "alarm", "on_start", "websocket_message", "websocket_close", "websocket_error"})


def test_a_kind_without_methods_has_none() -> None:
    class Empty(DO):
        pass

    methods, hidden = public_methods(Empty, DO)
    assert methods == {}
    assert set(LIFECYCLE) <= set(hidden)


async def test_callable_methods_are_called_and_others_refused(sup: Supervisor) -> None:
    stub = sup.S.Kind("a")
    assert await stub.public() == "public"
    assert await stub.inherited() == "from Base"
    assert await stub.overridden() == "Kind"
    assert await stub.made_async() == "async in Kind"
    assert await stub.greet("bob") == "hello bob"
    assert await stub.marked() == "marked"
    for name, reason in [
        ("sync_method", "only async"),
        ("made_sync", "only async"),
        ("static", "static and class"),
        ("fetch", "lifecycle"),
        ("on_start", "lifecycle"),
        ("alarm", "lifecycle"),
        ("namespace", "DO base class"),
        ("_private", "private"),
        ("__dunder__", "private"),
        ("__init__", "private"),
        ("prop", "no such public method"),
        ("missing", "no such public method"),
    ]:
        with pytest.raises(MethodNotAllowed, match=reason) as info:
            await sup.call(stub.id, name)
        assert info.value.method == name
        assert "public" in info.value.allowed and name not in info.value.allowed


async def test_a_stub_refuses_a_method_where_it_is_written(sup: Supervisor) -> None:
    stub = sup.S.Kind("a")
    with pytest.raises(MethodNotAllowed, match=r"Kind\.sync_method: only async methods.*callable methods: .*public"):
        stub.sync_method  # noqa: B018
    with pytest.raises(AttributeError):
        stub._private  # noqa: B018
    assert not sup.is_active(stub.id)


async def test_an_unknown_namespace_is_actor_not_found(sup: Supervisor) -> None:
    with pytest.raises(ActorNotFound, match="no actor kind 'Nope'; known kinds: Kind"):
        sup.S.Nope  # noqa: B018
    with pytest.raises(ActorNotFound):
        await sup.call(ActorId("Nope", "0" * 64), "public")


def test_a_sync_lifecycle_hook_is_refused_when_the_kind_is_described() -> None:
    class SyncStart(DO):
        def on_start(self) -> None:  # type: ignore[override]
            pass

    with pytest.raises(TypeError, match="SyncStart.on_start must be an async method"):
        SyncStart.__dotdo_kind__()


def test_do_itself_is_not_a_kind() -> None:
    with pytest.raises(TypeError, match="subclass it"):
        DO.__dotdo_kind__()


def test_the_spec_is_computed_once_per_class_and_not_inherited() -> None:
    class Parent(DO):
        async def a(self) -> None:
            pass

    class Child(Parent):
        async def b(self) -> None:
            pass

    parent = Parent.__dotdo_kind__()
    assert Parent.__dotdo_kind__() is parent
    child = Child.__dotdo_kind__()
    assert child is not parent
    assert set(parent.methods) == {"a"} and set(child.methods) == {"a", "b"}
    assert (parent.namespace, child.namespace) == ("Parent", "Child")


def test_the_namespace_defaults_to_the_class_name_and_can_be_set() -> None:
    class Shop(DO):
        namespace = "Store"

    class Outlet(Shop):  # namespace is read from the class itself, not inherited
        pass

    assert Shop.__dotdo_kind__().namespace == "Store"
    assert Outlet.__dotdo_kind__().namespace == "Outlet"


# -- arguments -----------------------------------------------------------------------


def test_typed_arguments_are_converted_in_lax_mode() -> None:
    bind = binder_for(Kind.typed)
    args, kwargs = bind(("3",), {})
    assert args == (3,) and kwargs["b"] == "x" and kwargs["flag"] is False
    args, kwargs = bind((1, "b", 2, "3"), {"flag": "yes", "score": "1.5"})
    assert args == (1, "b", 2, 3)
    assert kwargs["flag"] is True and kwargs["score"] == 1.5


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("x",), {}, "typed(): argument 'a': Input should be a valid integer"),
        ((3.5,), {}, "argument 'a': Input should be a valid integer, got a number with a fractional part"),
        ((), {}, "typed(): argument 'a': Missing required argument"),
        ((1, 2), {}, "argument 'b': Input should be a valid string"),
        ((1, "b", 2, "z"), {}, "argument 'rest[1]': Input should be a valid integer"),
        ((1,), {"flag": "perhaps"}, "argument 'flag': Input should be a valid boolean"),
        ((1,), {"score": "q"}, "argument 'score': Input should be a valid number"),
        ((1,), {"a": 2}, "argument 'a': Got multiple values for argument"),
    ],
)
def test_wrong_arguments_are_invalid_with_a_clear_message(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    bind = binder_for(Kind.typed)
    with pytest.raises(InvalidArguments) as info:
        bind(args, kwargs)
    assert message in str(info.value)
    assert info.value.public == str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no pydantic internals


def test_extra_keyword_arguments_are_refused() -> None:
    with pytest.raises(InvalidArguments, match="items\\(\\): argument 'extra': Unexpected keyword argument"):
        binder_for(Kind.items)(([1],), {"extra": 1})
    with pytest.raises(InvalidArguments, match="argument 0: Unexpected positional argument"):
        binder_for(Kind.keyword_only)((5,), {"k": 1})


def test_containers_and_optionals_are_checked() -> None:
    assert binder_for(Kind.items)(([1, "2"],), {}) == (([1, 2],), {})
    with pytest.raises(InvalidArguments, match="argument 'xs'"):
        binder_for(Kind.items)(([1, "q"],), {})
    with pytest.raises(InvalidArguments, match="argument 'xs': Input should be a valid list"):
        binder_for(Kind.items)(("nope",), {})
    optional = binder_for(Kind.optional)
    assert optional((), {}) == ((), {"v": None})
    assert optional((None,), {}) == ((None,), {})
    assert optional(("5",), {}) == ((5,), {})


def test_a_message_names_the_first_wrong_arguments_and_counts_the_rest() -> None:
    bind = binder_for(Kind.typed)
    with pytest.raises(InvalidArguments) as caught:
        bind((1, "x", *["no"] * 5000), {})
    message = str(caught.value)
    assert message.count("argument 'rest[") == 10
    assert message.endswith("; and 4,990 more")
    assert len(message) < 1000


def test_unannotated_methods_are_checked_against_their_signature() -> None:
    bind = binder_for(Kind.untyped)
    assert bind(("anything",), {}) == (("anything",), {})
    assert bind((1,), {"b": object}) == ((1,), {"b": object})
    with pytest.raises(InvalidArguments, match="untyped\\(\\): missing a required argument: 'a'"):
        bind((), {})
    with pytest.raises(InvalidArguments, match="too many positional arguments"):
        bind((1, 2, 3), {})
    with pytest.raises(InvalidArguments, match="unexpected keyword argument 'c'"):
        bind((1,), {"c": 1})


@pytest.mark.parametrize("method", ["typed", "untyped", "items"])
def test_the_instance_parameter_is_never_a_keyword_argument(method: str) -> None:
    # typed() takes **extra, so only the explicit check refuses it; pydantic 2.13 raised a
    # bare TypeError here, which the HTTP layer answered with a 500
    bind = binder_for(getattr(Kind, method))
    with pytest.raises(InvalidArguments, match=f"{method}\\(\\) got an unexpected keyword argument 'self'"):
        bind((), {"self": 1, "a": 1})


def test_the_instance_parameter_is_refused_by_its_own_name() -> None:
    async def odd(this, a: int) -> int:  # noqa: ANN001
        return a

    bind = binder_for(odd)
    with pytest.raises(InvalidArguments, match="'self'"):  # only an unknown name here
        bind((), {"self": 1, "a": 2})
    with pytest.raises(InvalidArguments, match="unexpected keyword argument 'this'"):
        bind((), {"this": 1, "a": 1})


def test_unresolvable_annotations_fall_back_to_the_signature() -> None:
    bind = binder_for(Kind.unresolvable)
    assert bind(({"any": "value"},), {}) == (({"any": "value"},), {})
    with pytest.raises(InvalidArguments, match="missing a required argument: 'a'"):
        bind((), {})


def test_a_method_without_parameters_takes_no_arguments() -> None:
    bind = binder_for(Kind.nothing)
    assert bind((), {}) == ((), {})
    for args, kwargs in [((1,), {}), ((), {"a": 1})]:
        with pytest.raises(InvalidArguments, match="^nothing\\(\\) takes no arguments$"):
            bind(args, kwargs)


async def test_bad_arguments_are_refused_before_the_turn(sup: Supervisor) -> None:
    stub = sup.S.Kind("a")
    with pytest.raises(InvalidArguments, match="argument 'a'"):
        await stub.typed("not a number")
    with pytest.raises(InvalidArguments, match="Missing required argument"):
        await sup.call(stub.id, "typed")
    with pytest.raises(InvalidArguments, match="takes no arguments"):
        await sup.call(stub.id, "nothing", (1,))
    assert not sup.is_active(stub.id)  # refused before the actor was even activated
    assert await stub.typed("7", flag=1) == [7, "x", [], True, {}]
    assert await stub.typed(1, "y", 2, 3, score=2) == [1, "y", [2, 3], False, {"score": 2.0}]


# -- @rpc ----------------------------------------------------------------------------


def test_rpc_sets_the_method_timeout() -> None:
    methods = Kind.__dotdo_kind__().methods
    assert methods["quick"].timeout == 0.5
    assert methods["marked"].timeout is None
    assert methods["public"].timeout is None


@pytest.mark.parametrize("timeout", [0, -1, math.nan, "5"])
def test_rpc_refuses_a_timeout_that_is_not_a_positive_number(timeout: Any) -> None:
    with pytest.raises(ValueError, match="rpc timeout must be a positive number of seconds"):
        rpc(timeout=timeout)


def test_rpc_refuses_sync_private_and_lifecycle_methods() -> None:
    def sync(self: Any) -> None:
        pass

    async def _hidden(self: Any) -> None:
        pass

    async def fetch(self: Any, request: Any) -> None:
        pass

    with pytest.raises(TypeError, match="@rpc needs an async method"):
        rpc(sync)
    with pytest.raises(TypeError, match="@rpc cannot expose private method"):
        rpc(timeout=1)(_hidden)
    with pytest.raises(TypeError, match="@rpc cannot expose lifecycle hook"):
        rpc(fetch)


def test_rpc_returns_the_function_itself() -> None:
    async def method(self: Any) -> None:
        pass

    assert rpc(method) is method
    assert method.__dotdo_rpc_timeout__ is None  # type: ignore[attr-defined]
    assert rpc(timeout=None)(method) is method
    assert rpc(timeout=2)(method) is method
    assert method.__dotdo_rpc_timeout__ == 2  # type: ignore[attr-defined]


async def test_the_rpc_timeout_bounds_calls_unless_the_caller_gives_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with Supervisor([Kind], tmp_path, call_timeout=30) as sup:
        stub = sup.S.Kind("slow")
        with pytest.raises(CallTimeout, match="within 0.5 s"):
            await stub.quick(2)
        assert await stub.quick(0.1) == "done"
        assert await sup.call(stub.id, "quick", (2,), timeout=5) == "done"  # the caller's wins
