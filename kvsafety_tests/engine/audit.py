"""One model's audit: the fp arm once, then each quantizer's run against it (docs/metrics.md).

Flow per model: the fp arm (unquantized cache) is generated once and reused by every quantizer;
the fp arm again at another batch size gives the noise floor; the fp model's own greedy answers to
the harmless prompts are the perplexity corpus; each quantizer then gets its generations, the
judge's labels, the refusal metrics, teacher-forced perplexity, true KV bytes per token and the
fraction of the cache that was quantized when the first response token was produced. Thresholds
turn each run into pass / fail; an exception turns it into error. Nothing here passes by default.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..backends import Backend, make_backend
from ..gate import (
    MIN_QUANTIZED_FRACTION,
    BoundedEvidence,
    coverage_violation,
    decide_all,
    run_verdict,
    threshold_violation,
)
from ..gate.bounds import Method
from ..metrics import ArmLabels, PromptId, compute_refusal_metrics, log_odds, perplexity, with_drop_sample
from ..models import log_progress
from ..prompts import Prompt, PromptSet
from ..prompts.calibration import calibration_pool
from ..report import (
    RunEntry,
    SourceRates,
    error_run,
    pcr_from_diagnosis,
    prompt_record,
    run_from_metrics,
)
from ..settings import (
    DEFAULT_MODEL,
    DEFAULT_QUANTIZERS,
    DEFAULT_THRESHOLDS,
    SETTINGS,
    GateConfig,
    SettingError,
    Settings,
    coerce,
)
from ..spec import NoQuant, QuantSpec, parse_spec
from .baseline_cache import BaselineCache, baseline_cache_dir, cache_key
from .calibration import (
    CALIBRATION_NEW_TOKENS,
    CalibrationSelection,
    calibration_refusal_tokens,
    fallback_refusal_tokens,
    select_refused,
)
from .evidence import gate_evidence, ratio_evidence, recovery_evidence, undiagnosed_recovery_evidence
from .rounds import NEEDS, RATE_METRICS, Arm, Feed, concat, needs_of, prompt_order, subset

__all__ = [
    "DEFAULT_QUANTIZERS",
    "DEFAULT_THRESHOLDS",
    "MIN_QUANTIZED_FRACTION",
    "Arm",
    "AuditSettings",
    "Log",
    "Memo",
    "ModelAudit",
]

Log = Callable[[str], None]
#: The settings the unquantized arm depends on (the baseline cache's key holds their values).
BASELINE_SETTINGS: tuple[str, ...] = (
    "prompt_seed",
    "max_new_tokens",
    "batch_size",
    "dtype",
    "device",
    "backend",
    "system_prompt",
    "kernels",
    "judge",
    "noise_floor",
    "perplexity",
    "trust_remote_code",
)
#: ``memo(key, compute)``: compute's JSON-able value, computed once per key (across processes, for
#: the plugin's shared store under pytest-xdist).
Memo = Callable[[str, Callable[[], Any]], Any]


def _compute(key: str, compute: Callable[[], Any]) -> Any:
    return compute()


@dataclass(frozen=True, kw_only=True)
class AuditSettings(Settings):
    """One model's audit: the shared settings (``settings.Settings``, the settings table) and the
    model. Checked before any model loads (``validate``)."""

    model: str = DEFAULT_MODEL
    #: The layers PCR probes (None: all); a subset bounds the diagnosis's cost on deep models.
    pcr_layers: tuple[int, ...] | None = None

    @property
    def wants_pcr(self) -> bool:
        return self.pcr or self.thresholds.min_pcr_recovery is not None

    @property
    def wants_noise_ratio(self) -> bool:
        return self.noise_ratio or self.pcr or self.thresholds.max_noise_ratio is not None

    def specs(self) -> list[QuantSpec]:
        return [parse_spec(q) for q in self.quantizers]

    def validate(self) -> None:
        """Raise ValueError (one line) for anything wrong that can be seen without the model: each
        value against the settings table, then what keys decide together."""
        from ..config import ConfigError, _check_choices, canonical_quantizers

        for key in SETTINGS:
            if key.name in ("models", "report"):
                continue
            try:
                coerce(key.name, getattr(self, key.name))
            except SettingError as e:
                raise ConfigError(str(e)) from None
        canonical_quantizers(self.quantizers, "AuditSettings")
        self.specs()  # a sweep ({a,b}) is for the configuration, not a spec the engine can run
        _check_choices(GateConfig(**self.shared(), models=(self.model,)))


class ModelAudit:
    """One loaded model: the fp arm once, then any number of quantizers against it."""

    def __init__(
        self,
        settings: AuditSettings,
        prompt_set: PromptSet,
        *,
        log: Log = log_progress,
        memo: Memo | None = None,
        rerun_first: bool = False,
    ) -> None:
        import torch

        from ..judge import load_judge
        from ..models import load_model, resolve_model

        self.settings = settings
        self.log = log
        self.prompt_set = prompt_set
        self.eval_prompts: list[Prompt] = [*prompt_set.harmful, *prompt_set.harmless]
        self.n_harmful = len(prompt_set.harmful)
        #: Sequential audits take prompts in this order (rounds.py): harmful, harmless positions.
        self.order = prompt_order(self.eval_prompts, self.n_harmful, settings.prompt_seed)
        self.judge = load_judge(settings.judge)
        log(f"model {settings.model}: resolving")
        self.resolved = resolve_model(settings.model, allow_pickle=settings.allow_pickle)
        _check_specs_against_config(Path(self.resolved.path) / "config.json", settings.specs())
        if settings.backend == "vllm":  # vLLM loads the weights itself, from the converted folder
            self.backend: Backend = make_backend(settings, self.resolved.path)
        else:
            model, tokenizer = load_model(
                self.resolved,
                dtype=getattr(torch, settings.dtype),
                device=settings.device,
                trust_remote_code=settings.trust_remote_code,
                allow_pickle=settings.allow_pickle,
            )
            self.backend = make_backend(settings, self.resolved.path, model, tokenizer)
        for spec in settings.specs():
            spec.validate_for(head_dim=self.backend.head_dim, num_layers=self.backend.num_layers)
        self._check_context()
        # the fp side is computed once per (model, settings), and once across processes with a memo;
        # with the baseline cache, once per (model, pool, settings, versions) on this disk
        memo = memo or _compute
        #: The on-disk baseline (baseline_cache.py), or None when off or the model has no identity.
        self.baseline_cache: BaselineCache | None = None
        if settings.baseline_cache:
            key = cache_key(
                model_sha256=self.resolved.sha256,
                model_path=self.resolved.path,
                prompts=self.prompt_set.prompts,
                settings={k: getattr(settings, k) for k in BASELINE_SETTINGS},
            )
            if key is not None:
                self.baseline_cache = BaselineCache(baseline_cache_dir(), key)
                shared, disk = memo, self.baseline_cache

                def memo(name: str, compute: Callable[[], Any]) -> Any:
                    return disk.get_or_compute(name, lambda: shared(name, compute))

        self.refusal_tokens: list[int] = memo("refusal_tokens", self._refusal_tokens)
        self._memo = memo
        self._calibration: CalibrationSelection | None = None
        half = max(1, settings.batch_size // 2)

        def rerun() -> Arm | None:
            if not settings.noise_floor:
                return None
            return Arm(
                **memo("rerun", lambda: asdict(self.generate("none", batch_size=half, what="fp rerun")))
            )

        # rerun_first: a second process sharing the memo computes the rerun while the first
        # computes the fp arm, instead of waiting for it (the two are independent)
        early = rerun() if rerun_first else None
        self.baseline = Arm(**memo("baseline", lambda: asdict(self.generate("none"))))
        self.rerun: Arm | None = early if rerun_first else rerun()
        self._ppl_corpus: list[list[int]] | None = None
        self._fp_hidden: Any = None  # [N, L, hidden] fp residual stream, captured on first need
        self.ppl_baseline: float | None = None
        #: Per corpus text: (sum of token log-likelihoods, tokens) under the fp cache.
        self.ppl_baseline_parts: list[tuple[float, int]] | None = None
        if settings.perplexity:
            parts = memo("perplexity_baseline_parts", lambda: self.perplexity_parts("none"))
            self.ppl_baseline_parts = None if parts is None else [(float(s), int(n)) for s, n in parts]
            self.ppl_baseline = _perplexity_of(self.ppl_baseline_parts)

    def _check_context(self) -> None:
        """Refuse, before any generation, a prompt whose tokens and new tokens exceed the model's context."""
        limit = self.backend.max_positions
        if not limit:
            return
        for p in self.prompt_set.prompts:
            new = CALIBRATION_NEW_TOKENS if p.kind == "calibration" else self.settings.max_new_tokens
            n = len(self.backend.encode(p.text))
            if n + new > limit:
                raise ValueError(
                    f"prompt {p.id!r} is {n} tokens after the chat template; with {new} new tokens it exceeds "
                    f"the model's max_position_embeddings {limit}; shorten it or lower max_new_tokens"
                )

    # -- arms ----------------------------------------------------------------------------------
    def _refusal_tokens(self) -> list[int]:
        """First tokens of the model's own refusals on the set's harmful calibration prompts (fp):
        the first-token score every arm records (PCR's own come from ``calibration``)."""
        harmful_cal = [p.text for p in self.prompt_set.calibration if p.label == "harmful"]
        tokens = calibration_refusal_tokens(self.backend, self.judge, harmful_cal)
        if not tokens:
            tokens = fallback_refusal_tokens(self.backend.tokenizer)
            self.log("no calibration refusals: the refusal score uses the fallback openings")
        return tokens

    @property
    def calibration(self) -> CalibrationSelection:
        """PCR's calibration prompts: the first CALIBRATION_PROMPTS of the set's pool that the fp
        model refuses (engine/calibration.py), selected on first use, once per model."""
        if self._calibration is None:

            def select() -> dict[str, Any]:
                pool = calibration_pool(self.prompt_set)
                return select_refused(self.backend, self.judge, [(p.id, p.text) for p in pool]).as_dict()

            self._calibration = CalibrationSelection.from_dict(self._memo("calibration", select))
            self.log(f"{self.settings.model}: {self._calibration.note()}")
        return self._calibration

    def generate(
        self,
        spec: str,
        *,
        batch_size: int | None = None,
        what: str | None = None,
        prompts: list[Prompt] | None = None,
    ) -> Arm:
        """One arm over ``prompts`` (default: the evaluation prompts, harmful then harmless)."""
        start = time.monotonic()
        label = what or spec
        prompts = self.eval_prompts if prompts is None else prompts
        backend = self.backend
        saved = backend.batch_size
        backend.batch_size = batch_size or saved
        try:
            out = backend.run(
                [p.text for p in prompts],
                spec,
                max_new_tokens=self.settings.max_new_tokens,
                score_tokens={"refusal": self.refusal_tokens},
                progress=lambda done, total: self.log(
                    f"{self.settings.model} / {label}: generated {done}/{total}"
                ),
            )
        finally:
            backend.batch_size = saved
        texts = [c.text for c in out]
        labels = self.judge.label_many([p.text for p in prompts], texts)
        fractions = [c.quantized_fraction for c in out if c.quantized_fraction is not None]
        return Arm(
            spec=spec,
            texts=texts,
            token_ids=[c.token_ids for c in out],
            labels=labels,
            refusal_scores=[log_odds(c.first_token_scores["refusal"]) for c in out],
            quantized_fraction=sum(fractions) / len(fractions) if fractions else None,
            kv_bytes_per_token=backend.last_kv_bytes_per_token,
            seconds=time.monotonic() - start,
        )

    def perplexity_parts(self, spec: str) -> list[tuple[float, int]] | None:
        """Per corpus text (the fp model's greedy answers to the harmless prompts, empty ones left
        out): (sum of teacher-forced token log-likelihoods, token count) under ``spec``'s cache."""
        if self._ppl_corpus is None:
            harmless = range(self.n_harmful, len(self.eval_prompts))
            self._ppl_corpus = [self.baseline.token_ids[i] for i in harmless]
        prompts = [self.eval_prompts[i].text for i in range(self.n_harmful, len(self.eval_prompts))]
        keep = [i for i, t in enumerate(self._ppl_corpus) if t]
        if not keep:
            return None
        out = self.backend.run(
            [prompts[i] for i in keep],
            spec,
            forced=[self._ppl_corpus[i] for i in keep],
            progress=lambda done, total: self.log(
                f"{self.settings.model} / {spec}: perplexity {done}/{total}"
            ),
        )
        parts = []
        for c in out:
            perplexity(c.logprobs)  # checks every log-likelihood (finite, <= 0)
            parts.append((math.fsum(c.logprobs), len(c.logprobs)))
        return parts

    # -- one run -----------------------------------------------------------------------------
    def audit(self, spec_text: str) -> RunEntry:
        spec = parse_spec(spec_text)
        name = str(spec)
        start = time.monotonic()
        s = self.settings
        try:
            method: Method
            cache_notes = [] if self.baseline_cache is None else [self.baseline_cache.note()]
            drop_sample: list[int] | None = None  # the drop's harmful prompts, when not all of them
            if s.round_size is None:  # one look at every prompt
                arm, method, extra_notes = self.generate(name), "exact", cache_notes
            else:
                arm, stop, drop_sample = self._sequential(name)
                method, extra_notes = "sequence", [*cache_notes, stop]
            metrics = self._metrics(arm, drop_sample)
            alpha = 1.0 - s.confidence
            ppl_parts = self.perplexity_parts(name) if s.perplexity else None
            ppl_q = _perplexity_of(ppl_parts)
            bytes_16 = self.backend.fp16_bytes_per_token
            extra_notes += self._coverage_notes(arm)
            evidence = gate_evidence(metrics)
            evidence["perplexity_ratio"] = ratio_evidence(self.ppl_baseline_parts, ppl_parts, alpha)
            nr = None
            if s.wants_noise_ratio and spec.is_quantized:
                nr, nr_bounds = self.noise_ratio(name, alpha)
                evidence["noise_ratio"] = BoundedEvidence(
                    nr.max, *nr_bounds, method="stratified-bootstrap", n=len(self.eval_prompts)
                )
            elif s.wants_noise_ratio:
                evidence["noise_ratio"] = None
            if nr is not None:
                extra_notes.append(
                    f"safety-subspace noise ratio {nr.max:.3g} at layer {nr.argmax_layer} "
                    f"(noise against the safety signal over noise against the whole spread); "
                    f"noise concentration {nr.max_concentration:.3g} at layer {nr.argmax_concentration_layer} "
                    f"(noise per dimension inside the safety subspace over that in the whole stream)"
                )
            pcr_entry = None
            if s.wants_pcr and spec.is_quantized:
                # never skipped: without a recovery to bound the threshold is inconclusive, with why
                # recovery is of a net loss: on the drop's in-order sample, not the extra fp refusals
                pcr_entry, pcr_notes, evidence["pcr_recovery"] = self.pcr(
                    name, self._in_order(arm, drop_sample), alpha
                )
                extra_notes.extend(pcr_notes)
            outcomes = decide_all(s.thresholds, evidence, confidence=s.confidence, method=method)
            violations = [
                v
                for o in outcomes
                if (v := threshold_violation(o, model=s.model, quantizer=name)) is not None
            ]
            # fail closed: a run that quantized (almost) nothing the answer attends to vouches for nothing
            coverage = coverage_violation(
                model=s.model,
                quantizer=name,
                quantized=spec.is_quantized,
                quantized_fraction=arm.quantized_fraction,
            )
            other_violations = [] if coverage is None else [coverage]
            violations += other_violations
            run = run_from_metrics(
                metrics,
                model=s.model,
                quantizer=name,
                prompt_set=self.prompt_set.name,
                verdict=run_verdict(outcomes, other_violations),
                violations=[str(v) for v in violations],  # the report holds their lines
                thresholds=outcomes,
                backend=s.backend,
                model_sha256=self.resolved.sha256 or None,
                quantized_fraction=arm.quantized_fraction,
                perplexity_baseline=self.ppl_baseline,
                perplexity_quantized=ppl_q,
                perplexity_corpus="fp greedy answers to the harmless prompts" if ppl_q is not None else None,
                kv_bytes_per_token=arm.kv_bytes_per_token,
                kv_bytes_ratio=None if arm.kv_bytes_per_token is None else arm.kv_bytes_per_token / bytes_16,
                noise_ratio=None if nr is None else nr.max,
                noise_ratio_per_layer=None if nr is None else nr.per_layer,
                noise_concentration=None if nr is None else nr.max_concentration,
                noise_concentration_per_layer=None if nr is None else nr.concentration,
                pcr=pcr_entry,
                seconds=time.monotonic() - start,
                prompts=self._records(arm),
                store_completions=s.store_completions,
                notes=extra_notes,
            )
            run = replace(run, kernels=self.kernels_used(spec), by_source=self._by_source(arm, drop_sample))
        except Exception as e:  # a crash is an error verdict, never a pass
            self.log(f"{s.model} / {name}: error: {type(e).__name__}: {e}")
            return error_run(
                model=s.model,
                quantizer=name,
                prompt_set=self.prompt_set.name,
                error=f"{type(e).__name__}: {e}",
                backend=s.backend,
                seconds=time.monotonic() - start,
            )
        return run

    def _metrics(self, arm: Arm, drop_sample: Sequence[int] | None = None) -> Any:
        """The refusal metrics of ``arm`` against the fp arm (and its rerun) on the same prompts.

        ``drop_sample``: the harmful positions the refusal drop is measured on, when a prioritized
        audit fed more at-risk prompts than those (rounds.py's ``Feed``); the flip rates from fp
        refusals then use every at-risk prompt of ``arm`` (``metrics.with_drop_sample``)."""

        def of(part: Arm) -> Any:
            rerun = None if self.rerun is None else self._labels(subset(self.rerun, part.index))
            return compute_refusal_metrics(
                self._labels(subset(self.baseline, part.index)), self._labels(part), rerun
            )

        everything = of(arm)
        in_order = self._in_order(arm, drop_sample)
        if in_order is arm:
            return everything
        generated = sum(1 for i in arm.positions(len(self.eval_prompts)) if i < self.n_harmful)
        return with_drop_sample(everything, of(in_order), generated=generated)

    def _in_order(self, arm: Arm, drop_sample: Sequence[int] | None) -> Arm:
        """``arm`` without the harmful prompts outside ``drop_sample`` (the fp refusals a
        prioritized audit fed alone); ``arm`` itself when there are none."""
        if drop_sample is None:
            return arm
        keep = set(drop_sample)
        positions = arm.positions(len(self.eval_prompts))
        if all(i >= self.n_harmful or i in keep for i in positions):
            return arm
        return subset(arm, [i for i in positions if i >= self.n_harmful or i in keep])

    def _by_source(self, arm: Arm, drop_sample: Sequence[int] | None = None) -> dict[str, SourceRates]:
        """Each prompt source's rates and counts, when ``arm`` holds prompts of several sources."""
        positions = arm.positions(len(self.eval_prompts))
        sources = sorted({self.eval_prompts[i].source for i in positions})
        if len(sources) < 2:
            return {}
        out = {}
        for source in sources:
            mine = [i for i in positions if self.eval_prompts[i].source == source]
            props = self._metrics(subset(arm, mine), drop_sample).proportions
            out[source] = SourceRates(
                rates={name: p.rate for name, p in props.items()},
                counts={name: (p.k, p.n) for name, p in props.items()},
            )
        return out

    def _sequential(self, spec: str) -> tuple[Arm, str, list[int]]:
        """``spec``'s arm over rounds of prompts (rounds.py), each round only the prompts its open
        rate thresholds need, stopping once every one is decided, the pool is spent, or the time
        budget is; a note saying which; and the refusal drop's sample (``Feed.drop_prefix``)."""
        s = self.settings
        assert s.round_size is not None
        start = time.monotonic()
        harmful, harmless = self.order
        at_risk = [i for i in harmful if self.baseline.labels[i] == "refused"]
        feed = Feed(harmful, harmless, at_risk, s.round_size)
        parts: list[Arm] = []
        needs = needs_of(NEEDS)  # round 1: every group
        open_: list[str] = []
        k = 0
        stop = ""
        while True:
            positions = feed.next(needs)
            if not positions:
                stop = f"sequential: the pool held no more prompts for the open thresholds after round {k}"
                break
            k += 1
            part = self.generate(
                spec, prompts=[self.eval_prompts[i] for i in positions], what=f"{spec} round {k}"
            )
            part.index = positions
            parts.append(part)
            arm = concat(parts)
            metrics = self._metrics(arm, feed.drop_prefix)
            evidence = {m: e for m, e in gate_evidence(metrics).items() if m in RATE_METRICS}
            outcomes = decide_all(s.thresholds, evidence, confidence=s.confidence, method="sequence")
            # a rate with no prompts at risk yet (n = 0) is open, not failed: later rounds may bring some
            undecided = [o for o in outcomes if o.outcome == "inconclusive" or o.n == 0]
            open_ = [o.threshold for o in undecided]
            open_metrics = [o.metric for o in undecided]
            if not open_:
                stop = f"sequential: every rate threshold decided after round {k}"
                break
            if s.time_budget is not None and time.monotonic() - start > s.time_budget:
                stop = f"sequential: the time budget of {s.time_budget:g} s was spent after round {k}"
                break
            needs = needs_of(open_metrics)  # from round 2: only what the open thresholds need
        arm = concat(parts)
        positions = arm.positions(len(self.eval_prompts))
        h = sum(1 for i in positions if i < self.n_harmful)
        refusals = sum(1 for i in positions if i in feed.at_risk)
        fed = f"{h} harmful ({refusals} fp refusals) and {len(positions) - h} harmless prompts"
        stop = f"{stop} ({fed})" + (f"; still open: {', '.join(open_)}" if open_ else "")
        self.log(f"{s.model} / {spec}: {stop}")
        return arm, stop, feed.drop_prefix

    def kernels_used(self, spec: QuantSpec) -> str:
        """Which implementations quantized this spec's cache: ``torch``, ``compiled``, ``triton``,
        joined with + where ``compiled`` left a scheme to the reference; ``vllm`` for the engine."""
        from ..backends.hf import HFBackend
        from ..kernels import implementation

        if not isinstance(self.backend, HFBackend):  # vLLM quantizes its own cache: its name says which
            return self.backend.name

        used = {
            implementation(scheme, self.backend.kernels)
            for layer in range(self.backend.num_layers)
            for scheme in (spec.layer(layer).key, spec.layer(layer).value)
            if not isinstance(scheme, NoQuant)
        }
        return "+".join(sorted(used)) or "none"

    # -- safety subspace and PCR ------------------------------------------------------------------
    def noise_ratio(self, spec: str, alpha: float = 0.05) -> tuple[Any, tuple[float, float]]:
        """The safety-subspace noise ratio of ``spec`` over the evaluation prompts (all layers), and
        one-sided (lower, upper) bounds on its maximum at level ``alpha`` each (stratified bootstrap)."""
        import torch

        from ..pcr.subspace import capture, noise_ratio, noise_ratio_bounds

        texts = [p.text for p in self.eval_prompts]
        if self._fp_hidden is None:
            self.log(f"{self.settings.model}: capturing the fp residual stream")
            self._fp_hidden = capture(self.backend, texts, "none")  # [N, L, hidden]
        self.log(f"{self.settings.model} / {spec}: capturing the quantized residual stream")
        quantized = capture(self.backend, texts, spec)
        harmful = torch.arange(len(texts)) < self.n_harmful  # [N]
        nr = noise_ratio(self._fp_hidden, quantized, harmful)
        return nr, noise_ratio_bounds(self._fp_hidden, quantized, harmful, alpha)

    def pcr(self, spec: str, arm: Arm, alpha: float = 0.05) -> tuple[Any, list[str], BoundedEvidence]:
        """(PCR's report entry or None, notes, ``min_pcr_recovery``'s evidence): the diagnosis on the
        harmful calibration prompts, then the plan's recovery measured on the evaluation prompts
        (and, for ``pcr_recovery_basis`` predicted or both, bootstrapped on the calibration prompts).
        Recovery is defined only where the fp-to-q change on the evaluation prompts is a significant
        loss (exact McNemar at ``alpha``); otherwise the evidence has no value and says why."""
        from ..pcr import MIN_DAMAGE, diagnose
        from ..pcr.diagnosis import refusal_scores
        from ..pcr.plan import measure_recovery, paired_change, ratio_recovery

        s = self.settings
        # the harmful calibration prompts the fp model refuses (a diagnosis needs refusals to lose)
        cal = list(self.calibration.texts)
        if not cal:
            why = f"PCR cannot diagnose: {self.calibration.note()}, so there is no refusal to lose"
            return None, [why], BoundedEvidence(None, None, None, method=why)
        model = s.model
        diagnosis = diagnose(
            self.backend,
            spec,
            cal,
            self.calibration.first_tokens,
            openings=self.calibration.openings(),
            score=s.pcr_score,
            budget=s.pcr_budget,
            layers=s.pcr_layers,
            log=lambda msg: self.log(f"{model} / {msg}"),
        )
        notes = [self.calibration.note(), diagnosis.damage_note(), *diagnosis.notes]
        harmful = self._harmful(arm)  # recovery is measured on the harmful prompts the arm holds
        fp = [self.baseline.labels[i] == "refused" for i, _ in harmful]
        quantized = [arm.labels[j] == "refused" for _, j in harmful]
        change = paired_change(fp, quantized)
        if diagnosis.mode is None:  # inconclusive either way; the line says which way
            undiagnosed = undiagnosed_recovery_evidence(change, diagnosis.damage, MIN_DAMAGE, alpha)
            notes.append(f"PCR recovery: {undiagnosed.method}")
            return None, notes, undiagnosed
        measured = None
        rec = predicted = None
        missing = f"PCR found no plan within the {s.pcr_budget:.0%} memory budget ({change})"
        if diagnosis.plan != spec:
            plan_arm = self.generate(
                diagnosis.plan, what=f"{spec} PCR plan", prompts=[self.eval_prompts[i] for i, _ in harmful]
            )
            rec = measure_recovery(fp, quantized, [x == "refused" for x in plan_arm.labels], alpha=alpha)
            measured = rec.value
            ci = "" if rec.ci is None else f" [95% CI {rec.ci[0]:.2f}, {rec.ci[1]:.2f}]"
            notes.append(
                f"PCR plan {diagnosis.plan} (+{diagnosis.plan_memory_overhead:.1%} KV memory): refusal rate "
                f"{rec.refusal_rate:.3f}, measured recovery "
                + (f"{rec.value:.2f}{ci} ({change})" if rec.value is not None else f"null: {rec.reason}")
                + f", predicted {diagnosis.predicted_recovery:.2f}"
            )
            if s.pcr_recovery_basis != "measured":  # per prompt, on the score the diagnosis ran on
                s_fp, s_q, s_plan = (
                    refusal_scores(
                        self.backend,
                        x,
                        cal,
                        score=diagnosis.score,
                        refusal_tokens=self.calibration.first_tokens,
                        openings=self.calibration.openings(),
                    )
                    for x in ("none", spec, diagnosis.plan)
                )
                predicted = ratio_recovery(s_fp, s_q, s_plan, min_damage=MIN_DAMAGE)
                if predicted.ci is not None:
                    notes.append(
                        f"PCR predicted recovery {predicted.value:.2f} [95% CI {predicted.ci[0]:.2f}, "
                        f"{predicted.ci[1]:.2f}] over {predicted.n} calibration prompts"
                    )
        evidence = recovery_evidence(rec, predicted, alpha=alpha, basis=s.pcr_recovery_basis, missing=missing)
        return pcr_from_diagnosis(diagnosis, measured), notes, evidence

    def _labels(self, arm: Arm) -> ArmLabels:
        harmful: dict[PromptId, str] = {}
        harmless: dict[PromptId, str] = {}
        for i, label in zip(arm.positions(len(self.eval_prompts)), arm.labels, strict=True):
            (harmful if i < self.n_harmful else harmless)[self.eval_prompts[i].id] = label
        return ArmLabels(harmful, harmless)

    def _records(self, arm: Arm) -> list[Any]:
        return [
            prompt_record(
                self.eval_prompts[i].id,
                self.eval_prompts[i].text,
                self.eval_prompts[i].kind,
                baseline=self.baseline.labels[i],
                quantized=arm.labels[j],
                completion_baseline=self.baseline.texts[i],
                completion_quantized=arm.texts[j],
            )
            for j, i in enumerate(arm.positions(len(self.eval_prompts)))
        ]

    def _harmful(self, arm: Arm) -> list[tuple[int, int]]:
        """(position in the evaluation prompts, position in ``arm``) of each harmful prompt it holds."""
        return [(i, j) for j, i in enumerate(arm.positions(len(self.eval_prompts))) if i < self.n_harmful]

    def _coverage_notes(self, arm: Arm) -> list[str]:
        notes = []
        harmful = self._harmful(arm)
        scores_fp = [self.baseline.refusal_scores[i] for i, _ in harmful]
        scores_q = [arm.refusal_scores[j] for _, j in harmful]
        if scores_fp:
            damage = sum(a - b for a, b in zip(scores_fp, scores_q, strict=True)) / len(scores_fp)
            notes.append(f"first-token refusal score damage (mean log-odds, harmful set): {damage:+.3f}")
        return notes


def _check_specs_against_config(config_json: Path, specs: list[QuantSpec]) -> None:
    """Layer indices and group sizes against the model's config.json, before any weight loads
    (a hub id has no local config: ``validate_for`` runs again on the loaded model either way)."""
    try:
        cfg = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no readable config here: loading the model reports it
    if isinstance(cfg, dict) and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]  # a multimodal model's language part
    if not isinstance(cfg, dict):
        return
    layers, heads, hidden = (cfg.get(k) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size"))
    head_dim = cfg.get("head_dim") or (
        hidden // heads if isinstance(hidden, int) and isinstance(heads, int) else None
    )
    if not (isinstance(layers, int) and isinstance(head_dim, int)):
        return
    for spec in specs:
        spec.validate_for(head_dim=head_dim, num_layers=layers)


def _perplexity_of(parts: list[tuple[float, int]] | None) -> float | None:
    """Token-level perplexity of a corpus from its per-text (log-likelihood sum, tokens)."""
    if not parts:
        return None
    tokens = sum(n for _, n in parts)
    return math.exp(-math.fsum(s for s, _ in parts) / tokens) if tokens else None
