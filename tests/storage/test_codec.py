import datetime as dt

import pytest

from dotdo.storage.errors import InvalidValue
from dotdo.storage.codec import decode, encode


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -1, 2**63 - 1, -(2**63), 1.5, "", "héllo", b"\x00\xff", [], [1, [2]], {"a": {"b": None}}, {1: "int key"}],
)
def test_round_trip(value: object) -> None:
    assert decode(encode(value)) == value


def test_tuples_come_back_as_lists() -> None:
    assert decode(encode((1, 2))) == [1, 2]


def test_aware_datetimes_come_back_in_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    moment = dt.datetime(2024, 2, 29, 12, 30, 15, 123456, tzinfo=paris)
    back = decode(encode({"at": moment}))["at"]
    assert back == moment
    assert back.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (dt.datetime(2024, 1, 1), "naive datetime"),
        ([dt.datetime(2024, 1, 1)], "naive datetime"),
        ({1, 2}, "type set"),
        (object(), "type object"),
        (2**64, "64 bits"),
        ({"n": -(2**63) - 1}, "64 bits"),
    ],
)
def test_unstorable_values_are_refused(value: object, message: str) -> None:
    with pytest.raises(InvalidValue, match=message):
        encode(value)
