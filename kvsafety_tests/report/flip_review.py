"""The flip review page: every prompt whose refusal changed under quantization, fp and quantized
completions side by side, in one self-contained HTML file beside the report (``flips.html``).

A flip is read from a run's ``prompts`` (docs/report.md): each record has the fp (``baseline``) and
the quantized label. Three kinds, the flip rates of docs/metrics.md:

- ``conditional``: a harmful prompt the fp model refused and the quantized one did not (it
  complied, or answered incoherently; the label says which);
- ``reverse``: a harmful prompt the fp model did not refuse and the quantized one refused;
- ``over-refusal``: a harmless prompt the fp model answered and the quantized one refused.

A harmless prompt the fp model refused and the quantized one answered is no flip rate of the
audit and is not listed. The page is written only when completions were stored (opt-in: they
contain harmful text); without them it adds nothing report.json does not already hold, so
``write_beside_report`` writes nothing and returns the line that says why.

Each prompt's category, source and text are not in the report (it keeps an id and a sha256): they
are looked up by reloading the run's prompt set (``prompt_details``) and shown only where the text's
sha256 matches the record's. Every text is escaped with ``html.escape`` (completions are model output
and may hold markup); the page loads nothing (no network, no external asset) and a Content
Security Policy allows only its own inline style and script, by hash. Its filters (model,
quantizer, flip kind) start from the URL fragment or query, ``flips.html#quantizer=int4&kind=conditional``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, TypeAlias

from .atomic import write_atomically
from .schema import Report

__all__ = [
    "FILE_NAME",
    "FLIP_KINDS",
    "FlipKind",
    "FlipRow",
    "PromptDetail",
    "flip_kind",
    "flip_rows",
    "prompt_details",
    "render_flip_review",
    "write_beside_report",
    "write_flip_review",
]

FlipKind: TypeAlias = Literal["conditional", "reverse", "over-refusal"]
#: In the page's order.
FLIP_KINDS: tuple[FlipKind, ...] = ("conditional", "reverse", "over-refusal")
#: The page's name, in the report's folder.
FILE_NAME = "flips.html"

_KIND_TITLES: dict[str, str] = {
    "conditional": "harmful prompt: fp refused, quantized did not",
    "reverse": "harmful prompt: fp did not refuse, quantized refused",
    "over-refusal": "harmless prompt: fp answered, quantized refused",
}
#: The filters, by FlipRow attribute; the URL fragment uses these keys.
_FILTERS: tuple[tuple[str, str], ...] = (
    ("model", "model"),
    ("quantizer", "quantizer"),
    ("kind", "flip kind"),
)


@dataclass(frozen=True, kw_only=True)
class PromptDetail:
    """What the report does not store about a prompt: its category, source and text."""

    category: str
    #: The set the prompt came from (``builtin`` for the harmless prompts paired with a benchmark).
    source: str
    text: str


@dataclass(frozen=True, kw_only=True)
class FlipRow:
    """One flipped prompt of one run."""

    model: str
    quantizer: str
    prompt_set: str
    prompt_id: str
    #: "harmful" or "harmless".
    prompt_kind: str
    kind: FlipKind
    #: The fp arm's label ("refused", "complied" or "incoherent").
    baseline: str
    #: The quantized arm's label.
    quantized: str
    #: None when the run did not store completions.
    completion_baseline: str | None = None
    completion_quantized: str | None = None
    #: None when the prompt could not be looked up (``prompt_details``).
    category: str | None = None
    source: str | None = None
    prompt_text: str | None = None

    @property
    def direction(self) -> str:
        """``"refused -> complied"``: the fp label, then the quantized one."""
        return f"{self.baseline} -> {self.quantized}"


def flip_kind(prompt_kind: str, baseline: str | None, quantized: str | None) -> FlipKind | None:
    """The flip between the two labels of a prompt, or None (no flip the audit counts, or a label missing)."""
    if baseline is None or quantized is None:
        return None
    fp_refused, q_refused = baseline == "refused", quantized == "refused"
    if prompt_kind == "harmful":
        if fp_refused and not q_refused:
            return "conditional"
        if q_refused and not fp_refused:
            return "reverse"
    elif prompt_kind == "harmless" and q_refused and not fp_refused:
        return "over-refusal"
    return None


def flip_rows(report: Report, details: Mapping[tuple[str, str], PromptDetail] | None = None) -> list[FlipRow]:
    """Every flip in ``report``, by run (in report order), then kind (``FLIP_KINDS``), then prompt order.

    ``details``: by (prompt set, prompt id), e.g. from ``prompt_details``; a prompt without one
    has no category, source or text.
    """
    details = details or {}
    rows: list[FlipRow] = []
    for run in report.runs:
        flipped = []
        for record in run.prompts:
            if record.baseline is None or record.quantized is None:
                continue
            kind = flip_kind(record.kind, record.baseline, record.quantized)
            if kind is None:
                continue
            detail = details.get((run.prompt_set, record.id))
            flipped.append(
                FlipRow(
                    model=run.model,
                    quantizer=run.quantizer,
                    prompt_set=run.prompt_set,
                    prompt_id=record.id,
                    prompt_kind=record.kind,
                    kind=kind,
                    baseline=record.baseline,
                    quantized=record.quantized,
                    completion_baseline=record.completion_baseline,
                    completion_quantized=record.completion_quantized,
                    category=None if detail is None else detail.category,
                    source=None if detail is None else detail.source,
                    prompt_text=None if detail is None else detail.text,
                )
            )
        rows += sorted(flipped, key=lambda row: FLIP_KINDS.index(row.kind))  # stable: prompt order kept
    return rows


def prompt_details(report: Report) -> tuple[dict[tuple[str, str], PromptDetail], list[str]]:
    """Category, source and text of the prompts of ``report``'s runs, by (prompt set, prompt id).

    Each run's prompt set is reloaded by its name (``prompts.load_prompts``); a prompt counts only
    where the sha256 of its text equals the report's, so a set edited since the audit gives no
    wrong category. Returns the details and one note per set that could not be (fully) matched.
    """
    from ..prompts import load_prompts

    out: dict[tuple[str, str], PromptDetail] = {}
    notes: list[str] = []
    for name in dict.fromkeys(run.prompt_set for run in report.runs if run.prompts):
        try:
            loaded = {p.id: p for p in load_prompts(name)}
        except (ValueError, OSError) as e:  # PromptError is a ValueError
            notes.append(f"prompt set {name}: categories and prompt texts unavailable ({e})")
            continue
        changed: set[str] = set()
        for run in report.runs:
            if run.prompt_set != name:
                continue
            for record in run.prompts:
                prompt = loaded.get(record.id)
                if prompt is None or hashlib.sha256(prompt.text.encode("utf-8")).hexdigest() != record.sha256:
                    changed.add(record.id)
                    continue
                out[(name, record.id)] = PromptDetail(
                    category=prompt.category, source=prompt.source, text=prompt.text
                )
        if changed:
            notes.append(
                f"prompt set {name}: {len(changed)} prompt(s) missing or changed since the audit "
                "(sha256 differs): their category and text are not shown"
            )
    return out, notes


# --- the page -------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 1.5rem 3rem;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4rem;margin:1rem 0 .3rem}
.warn{background:#fde8e8;border:1px solid #e0a0a0;padding:.5rem .8rem;margin:.8rem 0;border-radius:4px}
.meta,.notes{color:#555}
table.runs{border-collapse:collapse;margin:.6rem 0 1rem}
table.runs th,table.runs td{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
table.runs td.n{text-align:right}
.filters{position:sticky;top:0;background:#fafafa;padding:.5rem 0;border-bottom:1px solid #ddd;z-index:1}
.filters label{margin-right:1rem}
.filters select{max-width:22rem}
#filter-notice{color:#a00;margin-left:.5rem}
article.flip{background:#fff;border:1px solid #ddd;border-radius:4px;margin:.8rem 0;padding:.5rem .8rem}
article.flip[hidden]{display:none}
.head{display:flex;flex-wrap:wrap;gap:.3rem .8rem;align-items:baseline}
.kind{font-weight:600;padding:0 .4rem;border-radius:3px;color:#fff}
.kind-conditional{background:#b42318}.kind-reverse{background:#6941c6}.kind-over-refusal{background:#b54708}
.where{color:#555}
.prompt{margin:.3rem 0}
.prompt summary{cursor:pointer;color:#555}
.arms{display:grid;grid-template-columns:1fr 1fr;gap:.8rem}
.arm h3{font-size:.9rem;margin:.3rem 0}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0;padding:.4rem;background:#f3f3f3;
border-radius:3px;font:13px/1.4 ui-monospace,monospace;max-height:24rem;overflow:auto}
.label{padding:0 .35rem;border-radius:3px;font-weight:600}
.label-refused{background:#d1e9ff}.label-complied{background:#fecdca}.label-incoherent{background:#e4e4e7}
.missing{color:#888;font-style:italic}
"""

# Filters read from the fragment or query (URLSearchParams), written back to the fragment.
_SCRIPT = """
(function () {
  "use strict";
  var axes = %(axes)s;
  var rows = Array.prototype.slice.call(document.querySelectorAll("article.flip"));
  var shown = document.getElementById("shown");
  var notice = document.getElementById("filter-notice");
  function select(axis) { return document.getElementById("f-" + axis); }
  function apply() {
    var n = 0;
    rows.forEach(function (row) {
      var keep = axes.every(function (a) { var v = select(a).value; return v === "" || row.dataset[a] === v; });
      row.hidden = !keep;
      if (keep) { n += 1; }
    });
    shown.textContent = String(n);
  }
  function fromUrl() {
    var text = location.hash.replace(/^#/, "") || location.search.replace(/^\\?/, "");
    var params = new URLSearchParams(text), unknown = [];
    axes.forEach(function (a) {
      var sel = select(a), v = params.has(a) ? params.get(a) : "";
      var known = Array.prototype.some.call(sel.options, function (o) { return o.value === v; });
      if (!known) {
        var opt = document.createElement("option");
        opt.value = v;
        opt.textContent = v + " (not in this report)";
        sel.appendChild(opt);
        unknown.push(a + " " + v);
      }
      sel.value = v;
    });
    notice.textContent = unknown.length ? "not in this report: " + unknown.join(", ") : "";
  }
  function toUrl() {
    var params = new URLSearchParams();
    axes.forEach(function (a) { if (select(a).value !== "") { params.set(a, select(a).value); } });
    var target = "#" + params.toString();
    try { history.replaceState(null, "", target); } catch (e) { location.hash = target; }
  }
  axes.forEach(function (a) { select(a).addEventListener("change", function () { toUrl(); apply(); }); });
  window.addEventListener("hashchange", function () { fromUrl(); apply(); });
  fromUrl();
  apply();
})();
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _csp_hash(source: str) -> str:
    return (
        "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"
    )


def _completion(text: str | None, stored: bool) -> str:
    if text is None:
        why = "not stored for this run" if not stored else "not recorded"
        return f'<p class="missing">({why})</p>'
    if not text:
        return '<p class="missing">(empty completion)</p>'
    return f"<pre>{_e(text)}</pre>"


def _row_html(row: FlipRow, stored: bool) -> str:
    category = row.category or "category unknown"
    source = (
        row.prompt_set
        if row.source in (None, row.prompt_set)
        else f"{row.prompt_set} (prompt from {row.source})"
    )
    prompt = (
        f'<details class="prompt"><summary>prompt</summary><pre>{_e(row.prompt_text)}</pre></details>'
        if row.prompt_text is not None
        else '<p class="prompt missing">(prompt text not available)</p>'
    )
    arms = "".join(
        f'<div class="arm arm-{arm}"><h3>{title} <span class="label label-{_e(label)}">{_e(label)}</span></h3>'
        f"{_completion(text, stored)}</div>"
        for arm, title, label, text in (
            ("baseline", "fp", row.baseline, row.completion_baseline),
            ("quantized", f"quantized ({_e(row.quantizer)})", row.quantized, row.completion_quantized),
        )
    )
    return (
        f'<article class="flip" data-model="{_e(row.model)}" data-quantizer="{_e(row.quantizer)}" '
        f'data-kind="{_e(row.kind)}" data-prompt-id="{_e(row.prompt_id)}">'
        f'<div class="head"><span class="kind kind-{_e(row.kind)}" title="{_e(_KIND_TITLES[row.kind])}">'
        f'{_e(row.kind)}</span><strong class="direction">{_e(row.baseline)} &rarr; {_e(row.quantized)}</strong>'
        f'<span class="where">{_e(row.model)} · {_e(row.quantizer)} · {_e(row.prompt_kind)} prompt '
        f'<code>{_e(row.prompt_id)}</code> · category <span class="category">{_e(category)}</span> · '
        f'source <span class="source">{_e(source)}</span></span></div>'
        f'{prompt}<div class="arms">{arms}</div></article>'
    )


def _runs_table(report: Report, rows: Sequence[FlipRow]) -> str:
    per_run = Counter((r.model, r.quantizer, r.prompt_set, r.kind) for r in rows)
    head = "".join(f"<th>{_e(k)}</th>" for k in FLIP_KINDS)
    body = []
    for run in report.runs:
        key = (run.model, run.quantizer, run.prompt_set)
        counts = "".join(f'<td class="n">{per_run[(*key, k)]}</td>' for k in FLIP_KINDS)
        if not run.prompts:
            counts = f'<td colspan="{len(FLIP_KINDS)}" class="missing">no prompt records</td>'
        body.append(
            f"<tr><td>{_e(run.model)}</td><td>{_e(run.quantizer)}</td><td>{_e(run.prompt_set)}</td>"
            f'<td>{_e(run.verdict)}</td><td class="n">{run.n_harmful}</td><td class="n">{run.n_harmless}</td>'
            f"<td>{'yes' if run.completions_stored else 'no'}</td>{counts}</tr>"
        )
    return (
        '<table class="runs"><thead><tr><th>model</th><th>quantizer</th><th>prompt set</th><th>verdict</th>'
        f"<th>harmful</th><th>harmless</th><th>completions</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _filters_html(rows: Sequence[FlipRow]) -> str:
    parts = []
    for axis, title in _FILTERS:
        values = list(dict.fromkeys(getattr(r, axis) for r in rows))
        if axis == "kind":
            values = [k for k in FLIP_KINDS if k in values]
        options = '<option value="">all</option>' + "".join(
            f'<option value="{_e(v)}">{_e(v)}</option>' for v in values
        )
        parts.append(f'<label>{_e(title)} <select id="f-{axis}">{options}</select></label>')
    return (
        f'<div class="filters">{"".join(parts)}<span><output id="shown">{len(rows)}</output> of '
        f'{len(rows)} flips shown</span><span id="filter-notice"></span></div>'
    )


def render_flip_review(
    report: Report, details: Mapping[tuple[str, str], PromptDetail] | None = None, notes: Sequence[str] = ()
) -> str:
    """The page as HTML text: the flips of ``flip_rows(report, details)`` and ``notes`` above them."""
    rows = flip_rows(report, details)
    stored = {(r.model, r.quantizer, r.prompt_set): r.completions_stored for r in report.runs}
    script = _SCRIPT % {"axes": "[" + ", ".join(f'"{axis}"' for axis, _ in _FILTERS) + "]"}
    csp = (
        f"default-src 'none'; style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(script)}; "
        "img-src 'none'; base-uri 'none'; form-action 'none'"
    )
    kinds = Counter(r.kind for r in rows)
    summary = ", ".join(f"{kinds[k]} {k}" for k in FLIP_KINDS)
    flips = "".join(_row_html(r, stored.get((r.model, r.quantizer, r.prompt_set), False)) for r in rows)
    note_items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        '<meta name="referrer" content="no-referrer"><meta name="robots" content="noindex">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>kvsafety flip review: {len(rows)} flips</title><style>{_STYLE}</style></head><body>"
        "<h1>kvsafety flip review</h1>"
        '<p class="warn"><strong>Contains harmful text</strong> (prompts and model completions stored '
        "with the report). For reviewing the audit: do not publish, attach to public CI or share.</p>"
        f'<p class="meta">report started {_e(report.started)} · finished {_e(report.finished or "n/a")} · '
        f"status {_e(report.status)} · judge {_e(report.config.judge or 'n/a')} · "
        f'<span id="total">{len(rows)}</span> flips: {_e(summary)}</p>'
        f"{_runs_table(report, rows)}"
        + (f'<ul class="notes">{note_items}</ul>' if notes else "")
        + _filters_html(rows)
        + (
            flips
            or '<p class="missing">No flips: no conditional, reverse or over-refusal flip in these runs.</p>'
        )
        + f"<script>{script}</script></body></html>\n"
    )


def write_flip_review(
    report: Report,
    path: str | os.PathLike[str],
    *,
    details: Mapping[tuple[str, str], PromptDetail] | None = None,
) -> Path:
    """Write the page to ``path`` atomically (``atomic.write_atomically``); returns the path.

    ``details`` None looks the prompts up (``prompt_details``), noting on the page what it could not.
    """
    notes: list[str] = []
    if details is None:
        details, notes = prompt_details(report)
    page = render_flip_review(report, details, notes).encode("utf-8")

    def dump(f: IO[bytes]) -> None:
        f.write(page)

    return write_atomically(path, dump)


def write_beside_report(report: Report, folder: str | os.PathLike[str], *, option: str) -> str:
    """Write ``FILE_NAME`` into the report's ``folder`` when a run stored completions; one line saying
    where, or why not. ``option`` names the flag that stores completions, for that line.

    A page that cannot be written is reported in the line, not raised: report.json holds the gate.
    """
    target = Path(folder) / FILE_NAME
    if not any(run.completions_stored for run in report.runs):
        stale = f"; the {target} there is from an earlier run" if target.exists() else ""
        return f"flip review: not written: completions were not stored (pass {option} to review them){stale}"
    try:
        write_flip_review(report, target)
    except OSError as e:
        return f"flip review: not written: cannot write {target}: {e.strerror or e}"
    n = len(flip_rows(report))
    return f"flip review: {target} ({n} flip{'' if n == 1 else 's'}; contains harmful text, do not publish)"
