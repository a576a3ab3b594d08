"""The pytest11 entry point (``kvsafety_tests.plugin``): the hooks and fixtures that wire the gate in.

pytest registers this module, so every hook and fixture is a name here, imported from its part.
The parts, in the order a run goes through them::

    options     the marker, the hooks (hookspecs) and the --kvsafety-* options (the settings table)
    configure   pytest_configure: the configuration checked (UsageError), the GateSession made
    state       what the hooks share in config.stash: the GateSession, the controller's state
    xdist       pytest-xdist: the shared store and each worker's GPUs, the workers' runs collected
    collection  the gate items added, the kv_* tests parametrized, the selected runs noted
    items       GateItem: one threshold of one audited run, pass / fail / inconclusive
    fixtures    kv_model, kv_quantizer, kv_bits, kv_audit: a user's own tests on the runs
    finish      the report kept current, written at the end; the gate's exit code; the summary
    hookspecs   pytest_kvsafety_run_finished, the hook the plugin adds

Cheap by design: without ``--kvsafety`` importing this package (which pytest does in every run
where it is installed) imports nothing heavier than the settings table, and the plugin adds no
test; the audit engine (``kvsafety_tests.engine``) and the items load only with ``--kvsafety``.
``pytest_sessionfinish`` turns a gate that did not pass into a failing run.
"""

from .collection import pytest_collection_finish, pytest_collection_modifyitems, pytest_generate_tests
from .configure import pytest_configure
from .finish import pytest_sessionfinish, pytest_terminal_summary, pytest_unconfigure
from .fixtures import _kv_combo, kv_audit, kv_bits, kv_model, kv_quantizer
from .options import MARKERS, pytest_addhooks, pytest_addoption
from .xdist import pytest_configure_node, pytest_testnodedown

__all__ = [
    "MARKERS",
    "_kv_combo",
    "kv_audit",
    "kv_bits",
    "kv_model",
    "kv_quantizer",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_collection_finish",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_configure_node",
    "pytest_generate_tests",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
    "pytest_testnodedown",
    "pytest_unconfigure",
]
