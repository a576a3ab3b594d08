"""PCR against planted outliers: which constructions PCR localises and names as intended.

    python benchmarks/pcr_planted.py [--model NAME] [VARIANT ...]

Each variant quantizes a band of layers (the rest stays 16-bit), plants a key outlier (a RoPE
channel pair of k_proj x s, q_proj / s, every KV head; the fp model is unchanged) in some layers,
and runs PCR over the band on the harmful calibration prompts. Prints the damage, where R_layer
peaks, the mode, and the three curves. Letters: A per-token INT4 (expect outlier-crushes-safety at
the planted layer), B INT4 in groups of 8 (expect outlier-as-safety), C every band layer planted
(expect multi-layer-dilution), D no plant (control).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kvsafety_tests.engine import calibration_refusal_tokens
from kvsafety_tests.judge import load_judge
from kvsafety_tests.models import DEFAULT_MODEL, load_model, resolve_model
from kvsafety_tests.pcr import diagnose
from kvsafety_tests.prompts import load_prompts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the planting is test code
from planted import plant_outlier

B8, B12, B9 = range(8, 16), range(12, 20), range(9, 17)
#: name -> (spec, probed band, planted layers, scale)
VARIANTS: dict[str, tuple[str, range, list[int], float]] = {
    "A": ("none;L8-15=int4", B8, [12], 64.0),
    "A2": ("none;L12-19=int4", B12, [16], 64.0),
    "A4": ("none;L9-16=int4", B9, [12], 64.0),
    "B": ("none;L8-15=int4-g8", B8, [12], 64.0),
    "B2": ("none;L12-19=int4-g8", B12, [16], 64.0),
    "B3": ("none;L12-19=int4-g8", B12, [16], 256.0),
    "B4": ("none;L9-16=int4-g8", B9, [12], 64.0),
    "B5": ("none;L9-16=int4-g8", B9, [12], 256.0),
    "C": ("none;L8-15=int4", B8, list(B8), 16.0),
    "C2": ("none;L12-19=int4", B12, list(B12), 32.0),
    "C3": ("none;L12-19=int4", B12, list(B12), 64.0),
    "C4": ("none;L9-16=int4-g8", B9, list(B9), 64.0),
    "C5": ("none;L9-16=int4", B9, list(B9), 16.0),
    "D": ("none;L8-15=int4", B8, [], 1.0),
    "D2": ("none;L12-19=int4", B12, [], 1.0),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("variants", nargs="*", metavar="VARIANT", help=f"default: all of {', '.join(VARIANTS)}")
    args = p.parse_args()
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant {bad[0]!r}; valid: {', '.join(VARIANTS)}")
    import torch

    from kvsafety_tests.backends.hf import HFBackend

    model, tok = load_model(resolve_model(args.model), dtype=torch.bfloat16)
    backend = HFBackend(model, tok, batch_size=16)
    cal = [q.text for q in load_prompts("builtin").calibration if q.label == "harmful"]
    tokens = calibration_refusal_tokens(backend, load_judge("rules"), cal)
    if not tokens:
        p.error(f"{args.model} refused none of the harmful calibration prompts: PCR's score has no anchor")
    print(f"refusal tokens {[tok.decode([t]) for t in tokens]}")
    print("| variant | quantized | planted (s) | damage D | R_layer peaks at | mode | top layers |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.variants or VARIANTS:
        spec, band, planted, scale = VARIANTS[name]
        plants = [
            plant_outlier(model, layer, scale=scale, kv_head=h)
            for layer in planted
            for h in range(backend.num_kv_heads)
        ]
        start = time.monotonic()
        try:
            d = diagnose(backend, spec, cal, tokens, layers=list(band))
        finally:
            for plant in reversed(plants):
                plant.undo()
        peak = f"{d.layers[d.r_layer.index(max(d.r_layer))]} ({max(d.r_layer):.2f})" if d.mode else "-"
        where = ",".join(map(str, planted)) if len(planted) < 3 else f"{planted[0]}..{planted[-1]}"
        print(
            f"| {name} | `{spec}` | {where or 'none'} ({scale:g}) | {d.damage:+.3f} | {peak} | "
            f"{d.mode or 'nothing to diagnose'} | {d.top} |  <!-- {time.monotonic() - start:.0f} s -->",
            flush=True,
        )


if __name__ == "__main__":
    main()
