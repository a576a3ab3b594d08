"""session: values computed once across processes, devices per xdist worker, the merged fail-closed report."""

from __future__ import annotations

import math
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from kvsafety_tests.config import GateConfig, resolve_config
from kvsafety_tests.engine import (
    DEFAULT_THRESHOLDS,
    GateSession,
    SharedStore,
    pick_device,
    visible_gpus,
    worker_gpus,
)
from kvsafety_tests.metrics import ArmLabels, compute_refusal_metrics
from kvsafety_tests.report import RunEntry, error_run, run_from_metrics, run_to_dict

MODEL = "smollm2-135m-instruct"
R, C = "refused", "complied"

# --- SharedStore -----------------------------------------------------------------------------------


def test_computes_once_then_returns_the_stored_value(tmp_path: Path) -> None:
    store = SharedStore(tmp_path / "store")
    calls: list[int] = []

    def first() -> dict[str, Any]:
        calls.append(1)
        return {"tokens": [1, 2, 3], "ppl": 12.5}

    def second() -> dict[str, Any]:
        raise AssertionError("computed twice")

    assert store.get_or_compute("fp\0m\0baseline", first) == {"tokens": [1, 2, 3], "ppl": 12.5}
    assert store.get_or_compute("fp\0m\0baseline", second) == {"tokens": [1, 2, 3], "ppl": 12.5}
    # a second store over the same folder (another process's view) reads it too
    assert SharedStore(tmp_path / "store").get_or_compute("fp\0m\0baseline", second)["ppl"] == 12.5
    assert calls == [1]


def test_keys_are_distinct(tmp_path: Path) -> None:
    store = SharedStore(tmp_path)
    assert store.get_or_compute("run\0a\0int4", lambda: 1) == 1
    assert store.get_or_compute("run\0a\0int8", lambda: 2) == 2
    assert store.get_or_compute("run\0a\0int4", lambda: 3) == 1


def test_floats_round_trip_exactly_infinities_and_nan_included(tmp_path: Path) -> None:
    values = [0.1, 1 / 3, 2.0**-1074, 1.7976931348623157e308, -0.0, -math.inf, math.inf]
    store = SharedStore(tmp_path)
    store.get_or_compute("k", lambda: [*values, math.nan])
    # JSON as Python writes it (-Infinity, NaN): read back as the same floats, bit for bit
    back = store.get_or_compute("k", lambda: None)
    assert back[:-1] == values
    assert math.copysign(1.0, back[4]) == -1.0  # -0.0 keeps its sign
    assert math.isnan(back[-1])


def test_the_computing_process_sees_what_the_others_read(tmp_path: Path) -> None:
    # JSON has no tuples and no int keys: the first caller gets the decoded value, like everyone else
    store = SharedStore(tmp_path)
    first = store.get_or_compute("k", lambda: {"pair": (1, 2), 7: "seven"})
    assert first == {"pair": [1, 2], "7": "seven"}
    assert store.get_or_compute("k", lambda: None) == first


def test_a_compute_that_raises_stores_nothing(tmp_path: Path) -> None:
    store = SharedStore(tmp_path)

    def boom() -> int:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        store.get_or_compute("k", boom)
    assert store.get_or_compute("k", lambda: 42) == 42
    assert store.get_or_compute("k", lambda: 43) == 42


def test_a_value_json_cannot_hold_stores_nothing_and_leaves_no_file(tmp_path: Path) -> None:
    store = SharedStore(tmp_path)
    with pytest.raises(TypeError):
        store.get_or_compute("k", lambda: {1, 2})
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*.tmp"))
    assert store.get_or_compute("k", lambda: [1, 2]) == [1, 2]


def _contend(folder: str, counter: str, start: Any, results: Any) -> None:
    """One process of the race: wait for the others, then ask for the same key."""

    def compute() -> dict[str, Any]:
        with open(counter, "a", encoding="utf-8") as f:
            f.write(f"{multiprocessing.current_process().name}\n")
        time.sleep(0.5)  # long enough that the others arrive while the value is being computed
        return {"by": multiprocessing.current_process().name, "rate": 0.125}

    start.wait()
    results.put(SharedStore(folder).get_or_compute("run\0m\0int4", compute))


def test_processes_compute_a_value_once_and_all_get_it(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    counter = tmp_path / "computed.txt"
    start = ctx.Barrier(3)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_contend, args=(str(tmp_path / "store"), str(counter), start, results), name=f"gw{i}"
        )
        for i in range(3)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    lines = counter.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    assert got == [{"by": lines[0], "rate": 0.125}] * 3


# --- pick_device -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "worker_index", "cuda_count", "expected"),
    [
        ("auto", None, 0, "cpu"),
        ("auto", None, 1, "cuda"),
        ("auto", 3, 0, "cpu"),
        ("auto", 3, 2, "cuda:1"),
        ("cuda", 0, 4, "cuda:0"),
        ("cuda", 3, 2, "cuda:1"),
        ("cuda", 5, 4, "cuda:1"),
        ("cuda", 3, 1, "cuda"),  # one GPU: every worker shares it
        ("cuda", None, 4, "cuda"),  # no xdist worker: torch's current device
        ("cuda:2", 3, 4, "cuda:2"),  # an explicit GPU is kept
        ("cpu", 1, 4, "cpu"),
    ],
)
def test_pick_device(device: str, worker_index: int | None, cuda_count: int, expected: str) -> None:
    assert pick_device(device, worker_index=worker_index, cuda_count=cuda_count) == expected


# --- GPUs for vllm workers -------------------------------------------------------------------------


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    assert visible_gpus({}, 3) == ["0", "1", "2"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "4, 6,GPU-ab12"}, 8) == ["4", "6", "GPU-ab12"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, 8) == []  # set and empty: no GPU at all


def test_worker_gpus_are_disjoint_blocks_of_tensor_parallel_size() -> None:
    visible = ["3", "5", "6", "7", "9", "10"]
    blocks = [worker_gpus(i, 3, 2, visible) for i in range(3)]
    assert blocks == [["3", "5"], ["6", "7"], ["9", "10"]]
    assert [worker_gpus(i, 2, 1, visible) for i in range(2)] == [["3"], ["5"]]
    with pytest.raises(
        ValueError,
        match=r"^4 pytest-xdist workers x tensor_parallel_size 2 need 8 GPUs, 6 visible \(3,5,6,7,9,10\); use -n 3 or fewer",
    ):
        worker_gpus(0, 4, 2, visible)
    with pytest.raises(
        ValueError, match=r"^tensor_parallel_size 1: each engine needs that many GPUs, 0 visible \(none\)$"
    ):
        worker_gpus(0, 2, 1, [])
    with pytest.raises(
        ValueError, match=r"^tensor_parallel_size 8: each engine needs that many GPUs, 6 visible"
    ):
        worker_gpus(0, 1, 8, visible)


# --- GateSession: merge, worker output, report ----------------------------------------------------


def _config() -> GateConfig:
    return resolve_config(
        {},
        {"limit": 2},
        rootdir=Path("/root-of-test"),
        default_models=(MODEL,),
        default_quantizers=("int8", "int4", "fp8_e5m2"),
        default_thresholds=DEFAULT_THRESHOLDS,
    )


@pytest.fixture
def session(tmp_path: Path) -> GateSession:
    return GateSession(_config(), SharedStore(tmp_path / "store"), device="cpu", log=lambda _: None)


def _passing_run(quantizer: str) -> RunEntry:
    fp = ArmLabels(harmful=[R, R], harmless=[C, C])
    metrics = compute_refusal_metrics(fp, fp, fp)
    return run_from_metrics(metrics, model=MODEL, quantizer=quantizer, prompt_set="builtin", verdict="pass")


def _runs(*quantizers: str) -> list[dict[str, Any]]:
    return [run_to_dict(_passing_run(q)) for q in quantizers]


def test_session_needs_only_prompts_and_judge(session: GateSession) -> None:
    assert session.prompt_set.name == "builtin+advbench+harmbench"  # the default pool
    assert session.judge_name == "rules-v2"
    assert session.config.combos() == [(MODEL, "int8"), (MODEL, "int4"), (MODEL, "fp8_e5m2")]
    assert session.runs == {} and session.expected == set()


def test_merging_two_workers_dedups_and_completes(session: GateSession) -> None:
    combos = session.config.combos()
    session.merge(_runs("int8", "int4"), combos[:2], source="gw0")
    session.merge(_runs("int4", "fp8_e5m2"), combos[1:], source="gw1")
    assert set(session.runs) == set(combos)
    assert session.expected == set(combos)
    report = session.report()
    assert report.status == "complete"
    assert len(report.runs) == 3
    assert report.gate.passed
    assert report.config.extra["limit"] == 2


def test_the_first_run_merged_for_a_combo_is_kept(session: GateSession) -> None:
    first = run_to_dict(_passing_run("int8"))
    second = run_to_dict(
        error_run(model=MODEL, quantizer="int8", prompt_set="builtin", error="RuntimeError: boom")
    )
    session.merge([first], [], source="gw0")
    session.merge([second], [], source="gw1")
    assert session.runs[(MODEL, "int8")].verdict == "pass"


def test_runs_come_out_in_config_order_whatever_the_merge_order(session: GateSession) -> None:
    combos = session.config.combos()
    session.merge(_runs("fp8_e5m2"), [combos[2]], source="gw1")
    session.merge(_runs("int4", "int8"), [combos[1], combos[0]], source="gw0")
    report = session.report()
    assert [(r.model, r.quantizer) for r in report.runs] == combos


def test_worker_output_merges_into_the_controller(session: GateSession, tmp_path: Path) -> None:
    combos = session.config.combos()
    session.merge(_runs("int4", "int8"), [combos[1], combos[0]], source="self")
    out = session.worker_output()
    assert out["expected"] == sorted([list(c) for c in combos[:2]])
    assert sorted(r["quantizer"] for r in out["runs"]) == ["int4", "int8"]
    controller = GateSession(_config(), SharedStore(tmp_path / "store"), device="cpu", log=lambda _: None)
    controller.merge(out["runs"], out["expected"], source="gw0")
    assert controller.runs == session.runs
    assert controller.expected == {combos[0], combos[1]}


def test_a_missing_expected_run_makes_the_report_incomplete(session: GateSession) -> None:
    combos = session.config.combos()
    session.merge(_runs("int8", "int4"), combos, source="gw0")
    report = session.report()
    assert report.status == "incomplete"
    assert not report.gate.passed
    assert any(f"1 selected run(s) never finished: {MODEL} / fp8_e5m2" in note for note in report.notes)
    assert [r.quantizer for r in report.runs] == ["int8", "int4"]  # what did finish is still reported


def test_a_subset_of_the_combos_is_a_partial_report_that_fails_the_gate(session: GateSession) -> None:
    # -k selected one test: the report covers what was selected and says it is partial
    session.merge(_runs("int4"), [(MODEL, "int4")], source="gw0")
    report = session.report()
    assert report.status == "partial"
    assert not report.gate.passed
    configured = session.config.combos()
    assert report.notes[-1].startswith(f"1 of {len(configured)} configured run(s) audited")
    assert f"{MODEL} / int8" in report.notes[-1]
    assert "report status is 'partial'" in report.gate.reasons[0]


def test_nothing_expected_and_nothing_run_is_incomplete(session: GateSession) -> None:
    report = session.report()
    assert report.status == "incomplete"
    assert not report.gate.passed
    assert any("nothing was measured" in note for note in report.notes)


def test_problems_make_the_report_incomplete(session: GateSession) -> None:
    combos = session.config.combos()
    session.merge(_runs("int8", "int4", "fp8_e5m2"), combos, source="gw0")
    report = session.report(problems=["worker gw1 died"])
    assert report.status == "incomplete"
    assert not report.gate.passed
    assert any("worker gw1 died" in note for note in report.notes)
    assert len(report.runs) == 3


def test_an_error_run_completes_the_report_but_fails_the_gate(session: GateSession) -> None:
    combos = session.config.combos()
    runs = [
        *_runs("int8", "int4"),
        run_to_dict(
            error_run(model=MODEL, quantizer="fp8_e5m2", prompt_set="builtin", error="ModelError: x")
        ),
    ]
    session.merge(runs, combos, source="gw0")
    report = session.report()
    assert report.status == "complete"
    assert not report.gate.passed
    assert report.gate.errors == 1


def test_values_and_count_see_only_their_kind(tmp_path: Path) -> None:
    store = SharedStore(tmp_path)
    store.get_or_compute("run\0m\0int8", lambda: {"q": "int8"})
    store.get_or_compute("run\0m\0int4", lambda: {"q": "int4"})
    store.get_or_compute("fp\0m\0baseline", lambda: {"big": list(range(5))})
    assert store.count("run") == 2 and store.count("fp") == 1
    assert sorted(v["q"] for v in store.values("run")) == ["int4", "int8"]
    assert store.values("fp") == [{"big": [0, 1, 2, 3, 4]}]
    assert store.values("nothing") == [] and store.count("nothing") == 0


def test_prompt_seed_reaches_the_prompts_and_every_audit(tmp_path: Path) -> None:
    def session_with(options: dict[str, Any]) -> GateSession:
        config = resolve_config(
            {}, {"limit": 6, **options}, rootdir=Path("/root-of-test"), default_models=(MODEL,)
        )
        return GateSession(config, SharedStore(tmp_path / str(options)), device="cpu", log=lambda _: None)

    fixed, drawn = session_with({}), session_with({"prompt_seed": 7})
    assert {p.id for p in fixed.prompt_set.harmful} != {p.id for p in drawn.prompt_set.harmful}
    assert len(drawn.prompt_set.harmful) == len(fixed.prompt_set.harmful) == 6
    assert drawn.config.shared()["prompt_seed"] == 7  # what each model's AuditSettings is built from
    assert fixed.config.shared()["prompt_seed"] is None
