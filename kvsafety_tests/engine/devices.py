"""Which device each process audits on, and which GPUs each pytest-xdist worker owns.

Plain functions of the device setting, the worker index and what CUDA reports; ``cuda_count``
imports torch, and only for a ``cuda`` or ``auto`` device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["cuda_count", "pick_device", "visible_gpus", "worker_gpus"]


def cuda_count(device: str) -> int:
    """How many CUDA devices torch sees, for a ``cuda``/``cuda:K``/``auto`` device; 0 otherwise
    (a ``cpu`` run never imports torch here)."""
    if not device.startswith(("cuda", "auto")):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pick_device(device: str, *, worker_index: int | None, cuda_count: int) -> str:
    """The device this process audits on: ``auto`` is cuda when there is one; under pytest-xdist with
    several GPUs, worker N takes GPU N mod count (a plain ``cuda`` only; ``cuda:K`` is kept)."""
    if device == "auto":
        device = "cuda" if cuda_count else "cpu"
    if device == "cuda" and worker_index is not None and cuda_count > 1:
        return f"cuda:{worker_index % cuda_count}"
    return device


def visible_gpus(environ: Mapping[str, str], cuda_count: int) -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES's entries where it is set (ids or
    UUIDs, in order; empty means none), else 0..cuda_count-1."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return [str(i) for i in range(cuda_count)]
    return [v.strip() for v in value.split(",") if v.strip()]


def worker_gpus(worker_index: int, workers: int, per_worker: int, visible: Sequence[str]) -> list[str]:
    """The GPUs pytest-xdist worker ``worker_index`` (of ``workers``) owns: its own consecutive
    block of ``per_worker`` (vLLM's tensor_parallel_size). vLLM engines claim most of a GPU's
    memory, so two workers never share one: too few GPUs is an error naming the choices."""
    need = workers * per_worker
    listed = ",".join(visible) or "none"
    if per_worker > len(visible):
        raise ValueError(
            f"tensor_parallel_size {per_worker}: each engine needs that many GPUs, "
            f"{len(visible)} visible ({listed})"
        )
    if need > len(visible):
        raise ValueError(
            f"{workers} pytest-xdist workers x tensor_parallel_size {per_worker} need {need} GPUs, "
            f"{len(visible)} visible ({listed}); use -n {len(visible) // per_worker} "
            "or fewer, or a smaller tensor_parallel_size"
        )
    return list(visible[worker_index * per_worker : (worker_index + 1) * per_worker])
