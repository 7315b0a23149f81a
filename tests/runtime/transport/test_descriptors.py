"""The file-descriptor budget (dotdo.runtime.transport.descriptors): its parts, their sum, the default
active-actor cap, and the refusals."""

from __future__ import annotations

import dataclasses
import resource
from pathlib import Path

import pytest

from dotdo.runtime.config import SupervisorConfig, default_max_active
from dotdo.runtime.transport.descriptors import (
    DEFAULT_MAX_HANDSHAKES,
    LISTENERS,
    MIN_ACTIVE,
    PROCESS_OWN,
    DescriptorBudget,
    descriptor_budget,
    open_file_limit,
    peer_connections,
    raise_soft_limit,
    websocket_share,
)
from dotdo.storage.errors import DotdoError
from dotdo.storage.opening import DESCRIPTORS_PER_ACTOR


@pytest.mark.parametrize(
    ("limit", "workers", "parts", "max_active"),
    [
        # limit, workers: process, http, transport, workers, reserve -> max_active
        (1024, 1, (32, 258, 322, 0, 128), 94),
        (1024, 2, (32, 258, 322, 18, 128), 88),
        (20000, 1, (32, 258, 322, 0, 1000), 6129),
        (20000, 2, (32, 258, 322, 18, 1000), 6123),
        (20000, 8, (32, 258, 322, 72, 1000), 6105),
        (65536, 1, (32, 258, 322, 0, 3276), 20549),
        (65536, 4, (32, 258, 322, 36, 3276), 20537),
    ],
)
def test_the_parts_and_the_actors_add_up_to_at_most_the_limit(
    limit: int, workers: int, parts: tuple[int, ...], max_active: int
) -> None:
    budget = descriptor_budget(limit=limit, workers=workers)
    assert (budget.process, budget.http, budget.transport, budget.workers, budget.reserve) == parts
    assert budget.fixed == sum(parts)
    assert budget.per_actor == DESCRIPTORS_PER_ACTOR == 3
    assert budget.max_active == max_active
    assert budget.needed(max_active) <= limit < budget.needed(max_active + 1)


def test_each_part_follows_its_setting() -> None:
    budget = descriptor_budget(limit=20000, max_connections=1000, handshakes=10, workers=3)
    assert budget.process == PROCESS_OWN
    assert budget.http == 1000 + LISTENERS
    assert budget.transport == 1000 + 10 + LISTENERS
    assert budget.workers == 2 + 2 * peer_connections(3) + 1  # links out, the peer server's two caps, its listener
    assert descriptor_budget(limit=20000).transport == 256 + DEFAULT_MAX_HANDSHAKES + LISTENERS
    assert descriptor_budget(limit=100_000).reserve == 5000  # 5% of the limit, at least 128


def test_the_default_cap_fills_what_is_left_and_an_explicit_one_must_fit() -> None:
    budget = descriptor_budget(limit=20000)
    assert budget.admit(None) == 6129
    assert budget.admit(6129) == 6129
    assert budget.admit(16) == 16
    with pytest.raises(DotdoError) as refused:
        budget.admit(7000)
    message = str(refused.value)
    for figure in ("--max-active 7000", "open-file limit (20000)", "21000 descriptors", "at most 6129 fit", "ulimit -n 22612"):
        assert figure in message
    assert "lower --max-active or --max-connections" in message
    assert budget.describe() in message


@pytest.mark.parametrize("max_active", [None, 16])
def test_a_limit_too_small_for_the_fixed_parts_is_refused(max_active: int | None) -> None:
    budget = descriptor_budget(limit=256)
    assert budget.max_active == 0
    with pytest.raises(DotdoError, match=r"open-file limit \(256\) is too small.*ulimit -n 788 or more"):
        budget.admit(max_active)
    enough = dataclasses.replace(budget, limit=budget.needed(MIN_ACTIVE))
    assert enough.max_active == MIN_ACTIVE and enough.admit(None) == MIN_ACTIVE


def test_a_supervisor_not_told_a_cap_takes_the_default_budget() -> None:
    assert default_max_active() == max(MIN_ACTIVE, descriptor_budget().max_active)
    assert SupervisorConfig(data_dir=Path(".")).max_active == default_max_active()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert descriptor_budget().limit == open_file_limit() == (65536 if soft == resource.RLIM_INFINITY else soft)


def test_the_budget_is_a_frozen_record() -> None:
    budget = descriptor_budget(limit=1024)
    assert isinstance(budget, DescriptorBudget)
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.limit = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("limit", "gained", "max_active", "max_websockets", "share"),
    [
        (1024, 4096, None, None, 4096),  # raised by all they need: the rest spends the 1024 as before
        (20000, 0, None, None, 4096),  # not raised, but a quarter of what the actors have is more
        (1024, 0, None, None, 71),  # not raised: a quarter of the 284 the actors had
        (1024, 100, None, None, 171),  # raised by some: that and the quarter
        (1024, 0, 90, None, 14),  # an explicit --max-active keeps its own: the 14 left over
        (1024, 0, 94, None, 2),
        (512, 0, None, None, 0),  # not even room for the rest: none
        (1024, 0, None, 7, 7),  # an explicit cap is taken as given (admit says whether it fits)
        (100_000, 0, None, None, 4096),
    ],
)
def test_the_websockets_share_comes_from_the_raise_then_from_what_the_actors_had(
    limit: int, gained: int, max_active: int | None, max_websockets: int | None, share: int
) -> None:
    base = descriptor_budget(limit=limit)
    assert websocket_share(base, gained, max_active, max_websockets) == share
    budget = descriptor_budget(limit=limit + gained, websockets=share)
    assert budget.websockets == share and budget.fixed - share <= base.fixed  # the reserve: a share of the rest
    if gained >= share:
        assert budget.fixed == base.fixed + share
    if base.max_active >= MIN_ACTIVE:
        fits = budget.admit(max_active)  # what the share leaves the actors fits their cap
        assert fits >= (max_active or MIN_ACTIVE) and (gained < share or max_active or fits == base.max_active)


def test_an_explicit_websockets_cap_that_does_not_fit_is_refused_naming_it() -> None:
    budget = descriptor_budget(limit=1024, websockets=5000)
    with pytest.raises(DotdoError, match=r"open-file limit \(1024\) is too small.*or --max-websockets"):
        budget.admit(None)
    assert "WebSockets 5000" in budget.describe()


def test_the_soft_limit_is_raised_up_to_the_hard_one_only() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        room = (hard - 256) if hard != resource.RLIM_INFINITY else 100
        assert raise_soft_limit(min(100, room)) == min(100, room)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 256 + min(100, room)
        assert raise_soft_limit(0) == 0
        if hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            assert raise_soft_limit(10) == 0  # at the hard limit already
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
