"""``python -m kvsafety_tests``: run an audit outside pytest and write the JSON report.

Exit codes: 0 gate passed, 1 gate failed on a threshold, 2 bad usage (a report path that cannot
be written included), 3 operational error (a run errored: its verdict is error; or the audit could
not finish: the report says incomplete, or could not be written), 4 nothing measured.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .argtypes import confidence_arg, fraction_arg, inconclusive_arg, positive_int_arg, spec_arg
from .audit import DEFAULT_QUANTIZERS, DEFAULT_THRESHOLDS, AuditSettings
from .models import DEFAULT_MODEL
from .thresholds import Thresholds

__all__ = ["EXIT_ERROR", "EXIT_FAILED", "EXIT_NOTHING", "EXIT_PASSED", "EXIT_USAGE", "main"]

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR, EXIT_NOTHING = 0, 1, 2, 3, 4


def _threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"threshold {text!r} is not NAME=VALUE (e.g. max_refusal_drop=0.05)")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold {name}: {value!r} is not a number") from None
    try:
        Thresholds.from_mapping({name: number})
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name, number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kvsafety_tests",
        description="Audit a model's refusals under KV-cache quantizers and write the JSON report.",
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registry name, local folder/GGUF, or hub id (default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--quantizer",
        action="append",
        type=spec_arg,
        help=f"quantizer spec, repeatable (default: {' '.join(DEFAULT_QUANTIZERS)})",
    )
    p.add_argument("--prompts", default="builtin", help="prompt set name or file:PATH (default: builtin)")
    p.add_argument(
        "--limit", type=positive_int_arg, default=None, help="at most N harmful and N harmless prompts"
    )
    p.add_argument("--judge", default="rules", help="judge name or path to a classifier (default: rules)")
    p.add_argument("--max-new-tokens", type=positive_int_arg, default=64)
    p.add_argument("--batch-size", type=positive_int_arg, default=16)
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--backend",
        choices=["hf", "vllm"],
        default="hf",
        help="hf: transformers + our quantized cache (default); vllm: the vLLM engine's own KV cache",
    )
    p.add_argument(
        "--tensor-parallel-size",
        type=positive_int_arg,
        default=1,
        help="vllm backend: GPUs the engine shards the model over (default: 1)",
    )
    p.add_argument("--kernel-backend", choices=["torch", "triton"], default="torch")
    defaults = ", ".join(f"{k}={v:g}" for k, v in DEFAULT_THRESHOLDS.items())
    p.add_argument(
        "--threshold",
        action="append",
        type=_threshold,
        default=[],
        metavar="NAME=VALUE",
        help=f"gate threshold, repeatable; replaces that default (defaults: {defaults})",
    )
    p.add_argument(
        "--no-default-thresholds", action="store_true", help="gate only on the --threshold values given"
    )
    p.add_argument("--no-noise-floor", action="store_true", help="skip the fp rerun at another batch size")
    p.add_argument("--no-perplexity", action="store_true")
    p.add_argument("--store-completions", action="store_true", help="store completion texts in the report")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickled (*.bin) checkpoints")
    p.add_argument(
        "--pcr",
        action="store_true",
        help="PCR on each quantized run: mode, plan within the budget, predicted and measured recovery",
    )
    p.add_argument(
        "--pcr-budget",
        type=fraction_arg,
        default=0.07,
        metavar="FRACTION",
        help="the plan's extra KV memory, a fraction of the quantized cache (default: 0.07)",
    )
    p.add_argument(
        "--noise-ratio", action="store_true", help="the safety-subspace noise ratio (implied by --pcr)"
    )
    p.add_argument(
        "--confidence",
        type=confidence_arg,
        default=0.95,
        metavar="LEVEL",
        help="confidence of the gate's one-sided bounds (default: 0.95)",
    )
    p.add_argument(
        "--inconclusive",
        type=inconclusive_arg,
        default="fail",
        metavar="fail|warn",
        help="what a threshold the sample cannot decide does: fail (default) or warn",
    )
    p.add_argument(
        "--report", default=".kvsafety/report.json", help="JSON report path (default: .kvsafety/report.json)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = AuditSettings(
            model=args.model,
            quantizers=tuple(args.quantizer or DEFAULT_QUANTIZERS),
            prompts=args.prompts,
            limit=args.limit,
            judge=args.judge,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            device=args.device,
            backend=args.backend,
            tensor_parallel_size=args.tensor_parallel_size,
            dtype=args.dtype,
            thresholds=Thresholds.from_mapping(
                {**({} if args.no_default_thresholds else DEFAULT_THRESHOLDS), **dict(args.threshold)}
            ),
            noise_floor=not args.no_noise_floor,
            perplexity=not args.no_perplexity,
            store_completions=args.store_completions,
            kernel_backend=args.kernel_backend,
            trust_remote_code=args.trust_remote_code,
            allow_pickle=args.allow_pickle,
            pcr=args.pcr,
            pcr_budget=args.pcr_budget,
            noise_ratio=args.noise_ratio,
            confidence=args.confidence,
            inconclusive=args.inconclusive,
        )
        settings.validate()
    except ValueError as e:
        print(f"python -m kvsafety_tests: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from .report import report_path_problem

    problem = report_path_problem(args.report)
    if problem is not None:
        print(
            f"python -m kvsafety_tests: error: {problem}; pass --report PATH somewhere writable",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:  # what can be checked without the model is usage, before any model loads
        from .judge import load_judge
        from .models import check_model
        from .prompts import load_prompts

        check_model(settings.model)
        load_judge(settings.judge)
        load_prompts(settings.prompts, limit=settings.limit)
    except ValueError as e:
        print(f"python -m kvsafety_tests: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from .audit import run_audit
    from .report import to_markdown

    try:
        report = run_audit(settings, report_path=args.report)
    except KeyboardInterrupt:
        print(f"interrupted: the report at {args.report} says incomplete", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as e:  # bad model, prompts or judge: one line, the report says incomplete
        print(f"python -m kvsafety_tests: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:  # the report could not be written mid-audit (disk full, folder gone)
        print(f"python -m kvsafety_tests: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # e.g. out of memory in the fp arm: one line, never exit 1 ("failed")
        print(
            f"python -m kvsafety_tests: error: the audit stopped: {type(e).__name__}: {e}; "
            f"the report at {args.report} says incomplete",
            file=sys.stderr,
        )
        return EXIT_ERROR
    print(to_markdown(report))
    from pathlib import Path

    from .flip_review import write_beside_report

    flips_line = write_beside_report(report, Path(args.report).parent, option="--store-completions")
    print(flips_line, file=sys.stderr)
    gate = report.gate
    if not report.runs:
        return EXIT_NOTHING
    if gate.errors:
        return EXIT_ERROR
    return EXIT_PASSED if gate.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
