"""The turn gate: one call at a time per actor, in arrival order, with call-chain reentrancy.

Every call carries a *chain id*, shared by all the calls it causes (A calls B calls C).
The gate admits one chain at a time. A call of the chain that already holds the gate is
admitted at once (A -> B -> A does not deadlock); others queue in FIFO order and the gate
is handed to the first waiter when the holder leaves, so no caller starves.

Deadlocks between chains in this process are found when they form: before a call waits,
the gate follows "held by chain X, which waits for gate G, held by chain Y..." and, if it
comes back to the waiting chain, raises ``DeadlockError`` naming the cycle. A cycle that
passes through another process cannot be seen from here; it ends at the call's deadline,
again as ``DeadlockError`` when the holder is itself waiting, else ``CallTimeout``.
"""

from __future__ import annotations

from collections import deque

import trio

from dotdo.runtime.core.errors import CallTimeout, DeadlockError, Overloaded

# A waiting call gives up this long before its deadline, so that it (and not the
# caller's enclosing scope with the same deadline) reports why it timed out.
GATE_MARGIN = 0.001


class WaitGraph:
    """Which gates each chain is waiting for, shared by the gates of one supervisor."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[str, list[TurnGate]] = {}

    def add(self, chain: str, gate: TurnGate) -> None:
        self._waiting.setdefault(chain, []).append(gate)

    def remove(self, chain: str, gate: TurnGate) -> None:
        gates = self._waiting.get(chain)
        if gates is not None:
            gates.remove(gate)
            if not gates:
                del self._waiting[chain]

    def cycle(self, chain: str, gate: TurnGate) -> list[TurnGate] | None:
        """The gates along a cycle that waiting on ``gate`` would close, if any."""
        stack: list[tuple[TurnGate, list[TurnGate]]] = [(gate, [gate])]
        seen: set[str] = set()
        while stack:
            current, path = stack.pop()
            owner = current.owner
            if owner is None:
                continue
            if owner == chain:
                return path
            if owner in seen:
                continue
            seen.add(owner)
            for nxt in self._waiting.get(owner, ()):
                stack.append((nxt, [*path, nxt]))
        return None

    def is_waiting(self, chain: str) -> bool:
        return chain in self._waiting


class _Waiter:
    __slots__ = ("chain", "event", "granted")

    def __init__(self, chain: str) -> None:
        self.chain = chain
        self.event = trio.Event()
        self.granted = False


class TurnGate:
    """Admission to one actor's turns. Not reentrant across chains; FIFO among them.

    Attributes:
        label: The actor's address, for messages.
        owner: The chain holding the gate, or None.
        arriving: Calls on their way to the gate (counted by the caller while it
            yields before ``try_enter``); they keep the gate from being idle.
    """

    __slots__ = ("label", "owner", "depth", "arriving", "_waiters", "_graph")

    def __init__(self, label: str, graph: WaitGraph) -> None:
        self.label = label
        self.owner: str | None = None
        self.depth = 0
        self.arriving = 0
        self._waiters: deque[_Waiter] = deque()
        self._graph = graph

    @property
    def waiting(self) -> int:
        """How many calls are queued (the mailbox depth)."""
        return len(self._waiters)

    @property
    def idle(self) -> bool:
        """No call holds the gate, waits for it or is on its way to it."""
        return self.owner is None and not self._waiters and not self.arriving

    def try_enter(self, chain: str) -> bool:
        """Enter without waiting if the gate is free or already held by ``chain``."""
        owner = self.owner
        if owner is None:
            if self._waiters:
                return False
            self.owner = chain
            self.depth = 1
            return True
        if owner == chain:
            self.depth += 1
            return True
        return False

    async def enter(self, chain: str, deadline: float, max_waiting: int) -> None:
        """Wait for the gate (call ``try_enter`` first).

        Raises:
            DeadlockError: Waiting would close a cycle of chains, or the wait timed out
                while the holder was itself waiting.
            CallTimeout: The deadline passed while another chain held the gate.
            Overloaded: ``max_waiting`` calls are already queued.

        On cancellation the call leaves the queue (or passes the gate on, if it had
        just been handed it) and ``Cancelled`` propagates.
        """
        graph = self._graph
        cycle = graph.cycle(chain, self)
        if cycle is not None:
            raise DeadlockError(_cycle_message(chain, cycle), [g.label for g in cycle])
        if len(self._waiters) >= max_waiting:
            raise Overloaded(
                f"{self.label} has {len(self._waiters)} calls waiting (the limit); retry later"
            )
        waiter = _Waiter(chain)
        self._waiters.append(waiter)
        graph.add(chain, self)
        try:
            with trio.move_on_at(deadline - GATE_MARGIN) as scope:
                await waiter.event.wait()
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            graph.remove(chain, self)
        if scope.cancelled_caught:
            self._abandon(waiter)
            owner = self.owner
            cycle = graph.cycle(chain, self)
            if cycle is not None or (owner is not None and graph.is_waiting(owner)):
                labels = [g.label for g in cycle] if cycle else [self.label]
                raise DeadlockError(
                    f"possible deadlock: call chain {chain} waited until its deadline for a "
                    f"turn on {self.label}, held by chain {owner}, which is itself waiting",
                    labels,
                )
            raise CallTimeout(
                f"call chain {chain} waited until its deadline for a turn on {self.label}, "
                f"busy with chain {owner}"
            )

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.granted:
            self.exit()
        else:
            self._waiters.remove(waiter)

    def exit(self) -> None:
        """Leave the gate; hand it to the first waiter when the holder's last turn ends."""
        self.depth -= 1
        if self.depth:
            return
        self.owner = None
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.granted = True
            self.owner = waiter.chain
            self.depth = 1
            waiter.event.set()


def _cycle_message(chain: str, cycle: list[TurnGate]) -> str:
    steps = " -> ".join(g.label for g in cycle)
    return (
        f"deadlock: call chain {chain} would wait for {steps}, each held by a chain waiting "
        f"for the next, and the last held by this chain; the call was refused"
    )
