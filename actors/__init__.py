"""The actor programming model: the ``DO`` base class and the example kinds."""

from dotdo.actors.base import DO
from dotdo.actors.examples import EXAMPLES, Counter, Customer, Order
from dotdo.actors.methods import LIFECYCLE, rpc
from dotdo.actors.workflow import Workflow

__all__ = ["DO", "EXAMPLES", "LIFECYCLE", "Counter", "Customer", "Order", "Workflow", "rpc"]
