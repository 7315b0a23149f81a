"""The actor programming model: the ``DO`` base class and the example kinds."""

from actors.base import DO
from actors.examples import EXAMPLES, Counter, Customer, Order
from actors.methods import LIFECYCLE, rpc
from actors.workflow import Workflow

__all__ = ["DO", "EXAMPLES", "LIFECYCLE", "Counter", "Customer", "Order", "Workflow", "rpc"]
