"""Run the checkout that ``BENCH_CHECKOUT`` names (see ``benchmarks/checkouts.py``).

Python imports this module at start-up when its folder is on ``PYTHONPATH``, after the
site-packages (and any editable install's finder) are set up; it loads
``checkouts.py`` by its path, so that nothing but the standard library is imported.
"""

import importlib.util
import os
from pathlib import Path

if os.environ.get("BENCH_CHECKOUT"):
    _spec = importlib.util.spec_from_file_location("_bench_checkouts", Path(__file__).resolve().parent.parent / "checkouts.py")
    assert _spec is not None and _spec.loader is not None
    _checkouts = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_checkouts)
    _checkouts.install(Path(os.environ["BENCH_CHECKOUT"]))
