"""pytest-xdist: one store and one report for all workers, and each worker's GPUs.

The controller plans each worker's GPUs (vllm on GPUs) in ``pytest_configure``, hands every
worker the store folder and its GPUs (``pytest_configure_node``) and collects each worker's runs
when it goes down (``pytest_testnodedown``); a worker that died makes the report incomplete.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from .state import GATE, STATE

__all__ = ["plan_worker_gpus", "pytest_configure_node", "pytest_testnodedown"]


def plan_worker_gpus(config: pytest.Config, gate_config: Any) -> dict[int, list[str]]:
    """vllm on GPUs with pytest-xdist: each worker's own block of tensor_parallel_size GPUs (vLLM
    engines take most of a GPU's memory, so workers never share). The hf backend places workers
    by ``pick_device`` instead; CPU runs pin nothing."""
    from ..engine import cuda_count, visible_gpus, worker_gpus

    workers = config.getoption("numprocesses", None) if config.pluginmanager.hasplugin("xdist") else None
    if gate_config.backend != "vllm" or not workers or gate_config.device not in ("cuda", "auto"):
        return {}
    visible = visible_gpus(os.environ, cuda_count(gate_config.device))
    if not visible and gate_config.device == "auto":
        return {}  # auto on a machine without GPUs: vLLM's CPU platform
    try:
        return {
            i: worker_gpus(i, int(workers), gate_config.tensor_parallel_size, visible)
            for i in range(int(workers))
        }
    except ValueError as e:
        raise pytest.UsageError(f"kvsafety: {e}") from None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Controller: every worker shares the controller's store folder, and (vllm on GPUs) gets its
    own GPUs as CUDA_VISIBLE_DEVICES."""
    state = node.config.stash.get(STATE, None)
    if state is not None and state.owned_store is not None:
        node.workerinput["kvsafety_store"] = str(state.owned_store)
    if state is not None and state.worker_gpus:
        index = int(str(node.workerinput.get("workerid", "gw0")).removeprefix("gw"))
        node.workerinput["kvsafety_cuda_visible_devices"] = ",".join(state.worker_gpus[index])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """Controller: collect a worker's runs; a worker that died makes the report incomplete."""
    gate = node.config.stash.get(GATE, None)
    if gate is None:
        return
    output = getattr(node, "workeroutput", None) or {}
    data = output.get("kvsafety")
    worker = getattr(getattr(node, "gateway", None), "id", "worker")
    if data is not None:
        gate.merge(data["runs"], data["expected"], source=f"worker {worker}")
    if error is not None or data is None:
        node.config.stash[STATE].problems.append(f"worker {worker} died ({error or 'no results sent'})")
