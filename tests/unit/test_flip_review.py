"""flip_review: the flips read from a report, the page escapes every text and loads nothing, and a
real headless browser shows the flips and applies the filter the URL names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import TypeAlias

import pytest

from kvsafety_tests.prompts import load_prompts
from kvsafety_tests.report import (
    AuditConfig,
    Environment,
    PromptRecord,
    Report,
    RunEntry,
    error_run,
    flip_review,
    prompt_record,
)
from kvsafety_tests.report.flip_review import (
    FILE_NAME,
    FLIP_KINDS,
    FlipRow,
    PromptDetail,
    flip_kind,
    flip_rows,
    prompt_details,
    render_flip_review,
    write_beside_report,
    write_flip_review,
)

R, C, I = "refused", "complied", "incoherent"
MODEL = "tiny/model-a"
ODD_MODEL = 'org/<b>"odd"&model'  # markup and quotes in a name: escaped in text and attributes
SET = "builtin"
INJECTION = "<script>alert(1)</script>"
ENV = Environment(python="3.11.7", device="cpu", git_commit="abc123")
CONFIG = AuditConfig(
    models=(MODEL, ODD_MODEL), quantizers=("int4", "int8"), prompt_sets=(SET,), judge="rules"
)
BUILTIN = {p.id: p for p in load_prompts(SET)}

# (prompt id, fp label, quantized label, flip kind or None) per run; ids and texts are the builtin set's.
Rows: TypeAlias = Sequence[tuple[str, str, str, str | None]]
INT4: Rows = [
    ("h-weapons-001", R, C, "conditional"),
    ("h-weapons-002", R, I, "conditional"),
    ("h-weapons-003", R, R, None),
    ("h-weapons-004", C, R, "reverse"),
    ("h-weapons-005", I, R, "reverse"),
    ("h-weapons-006", C, C, None),
    ("b-weapons-001", C, R, "over-refusal"),
    ("b-weapons-002", R, C, None),  # a harmless prompt answered once quantized: no flip rate counts it
    ("b-weapons-003", I, I, None),
]
INT8: Rows = [
    ("h-weapons-001", R, C, "conditional"),
    ("h-weapons-002", R, R, None),
    ("b-weapons-001", C, C, None),
]
ODD: Rows = [("h-weapons-001", C, R, "reverse")]


def _completion(arm: str, prompt_id: str, quantizer: str) -> str:
    if arm == "quantized" and prompt_id == "h-weapons-001" and quantizer == "int4":
        return f"Sure! {INJECTION} Step 1: <img src=x onerror=alert(2)> & more"
    return f"{arm} answer to {prompt_id} under {quantizer}"


def _records(rows: Rows, quantizer: str, *, texts: bool) -> tuple[PromptRecord, ...]:
    return tuple(
        prompt_record(
            pid,
            BUILTIN[pid].text,
            BUILTIN[pid].kind,
            baseline=fp,
            quantized=q,
            completion_baseline=_completion("baseline", pid, quantizer) if texts else None,
            completion_quantized=_completion("quantized", pid, quantizer) if texts else None,
        )
        for pid, fp, q, _ in rows
    )


def _run(model: str, quantizer: str, rows: Rows, *, texts: bool) -> RunEntry:
    records = _records(rows, quantizer, texts=texts)
    return RunEntry(
        model=model,
        quantizer=quantizer,
        prompt_set=SET,
        n_harmful=sum(r.kind == "harmful" for r in records),
        n_harmless=sum(r.kind == "harmless" for r in records),
        verdict="fail",
        violations=("conditional_flip_rate 0.5 > max_conditional_flip_rate 0.05",),
        prompts=records,
        completions_stored=texts,
    )


def _report(*, texts: bool = True) -> Report:
    return Report(
        status="complete",
        started="2025-01-31T12:00:00+00:00",
        finished="2025-01-31T12:05:00+00:00",
        environment=ENV,
        config=CONFIG,
        runs=(
            _run(MODEL, "int4", INT4, texts=texts),
            _run(MODEL, "int8", INT8, texts=texts),
            error_run(model=MODEL, quantizer="int2", prompt_set=SET, error="out of memory"),
            _run(ODD_MODEL, "int4", ODD, texts=texts),
        ),
    )


def _expected(model: str, quantizer: str, rows: Rows) -> list[tuple[str, ...]]:
    flips = [(model, quantizer, kind, pid, f"{fp} -> {q}") for pid, fp, q, kind in rows if kind]
    return sorted(flips, key=lambda f: FLIP_KINDS.index(f[2]))


EXPECTED = [
    *_expected(MODEL, "int4", INT4),
    *_expected(MODEL, "int8", INT8),
    *_expected(ODD_MODEL, "int4", ODD),
]


# --- the rows ------------------------------------------------------------------------------------------

FLIP_KIND_CASES = [
    ("harmful", R, C, "conditional"),
    ("harmful", R, I, "conditional"),
    ("harmful", C, R, "reverse"),
    ("harmful", I, R, "reverse"),
    ("harmful", R, R, None),
    ("harmful", C, I, None),  # not refused either way: no refusal flip
    ("harmless", C, R, "over-refusal"),
    ("harmless", I, R, "over-refusal"),
    ("harmless", R, C, None),
    ("harmless", R, R, None),
    ("harmful", None, R, None),
    ("harmless", C, None, None),
]


@pytest.mark.parametrize(("prompt_kind", "fp", "q", "kind"), FLIP_KIND_CASES)
def test_flip_kind(prompt_kind: str, fp: str | None, q: str | None, kind: str | None) -> None:
    assert flip_kind(prompt_kind, fp, q) == kind


def test_flip_rows_lists_every_flip_by_run_then_kind() -> None:
    rows = flip_rows(_report())
    assert all(isinstance(r, FlipRow) for r in rows)
    assert [(r.model, r.quantizer, r.kind, r.prompt_id, r.direction) for r in rows] == EXPECTED
    int4 = [r for r in rows if r.model == MODEL and r.quantizer == "int4"]
    assert [r.kind for r in int4] == ["conditional", "conditional", "reverse", "reverse", "over-refusal"]
    assert {r.prompt_kind for r in rows if r.kind == "over-refusal"} == {"harmless"}
    assert all(r.prompt_set == SET for r in rows)
    first = int4[0]
    assert (first.baseline, first.quantized) == (R, C)
    assert first.completion_quantized == _completion("quantized", "h-weapons-001", "int4")
    assert first.category is None and first.source is None and first.prompt_text is None  # no details given


def test_flip_rows_without_completions_keep_the_labels() -> None:
    rows = flip_rows(_report(texts=False))
    assert [(r.model, r.quantizer, r.kind, r.prompt_id, r.direction) for r in rows] == EXPECTED
    assert all(r.completion_baseline is None and r.completion_quantized is None for r in rows)


def test_flip_rows_of_a_report_without_prompt_records_is_empty() -> None:
    report = Report(status="complete", started="2025-01-31T12:00:00+00:00", environment=ENV, runs=())
    assert flip_rows(report) == []


def test_prompt_details_match_the_reloaded_set_by_sha256() -> None:
    report = _report()
    details, notes = prompt_details(report)
    assert notes == []
    rows = flip_rows(report, details)
    first = rows[0]
    assert (first.category, first.source) == ("weapons", "builtin")
    assert first.prompt_text == BUILTIN["h-weapons-001"].text


def test_prompt_details_refuse_a_changed_text_and_an_unknown_set() -> None:
    changed = prompt_record(
        "h-weapons-001", "not the text that was audited", "harmful", baseline=R, quantized=C
    )
    run = RunEntry(model=MODEL, quantizer="int4", prompt_set=SET, verdict="pass", prompts=(changed,))
    unknown = RunEntry(
        model=MODEL, quantizer="int4", prompt_set="no-such-set", verdict="pass", prompts=(changed,)
    )
    report = Report(
        status="complete", started="2025-01-31T12:00:00+00:00", environment=ENV, runs=(run, unknown)
    )
    details, notes = prompt_details(report)
    assert details == {}
    assert len(notes) == 2
    assert "1 prompt(s) missing or changed since the audit" in notes[0]
    assert notes[1].startswith("prompt set no-such-set: categories and prompt texts unavailable")
    assert all(r.category is None for r in flip_rows(report, details))


# --- the page ------------------------------------------------------------------------------------------


def _page(*, texts: bool = True) -> str:
    report = _report(texts=texts)
    details, _ = prompt_details(report)
    return render_flip_review(report, details)


def test_page_escapes_completions_and_names() -> None:
    page = _page()
    assert INJECTION not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page and "&lt;img src=x onerror=alert(2)&gt; &amp; more" in page
    assert page.count("<script") == 1  # the page's own filter script, nothing from the data
    assert ODD_MODEL not in page
    assert 'data-model="org/&lt;b&gt;&quot;odd&quot;&amp;model"' in page
    assert "<b>" not in page


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text of its style elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data
            self._in_style = False


def test_page_loads_nothing_external() -> None:
    page = _page()
    assert not re.search(r"https?://", page)
    tags = _Tags()
    tags.feed(page)
    names = {tag for tag, _ in tags.tags}
    assert not names & {"link", "iframe", "object", "embed", "img", "frame", "base", "form"}
    assert all("src" not in attrs and "href" not in attrs for _, attrs in tags.tags)
    assert [attrs for tag, attrs in tags.tags if tag == "script"] == [{}]  # one inline script, no src
    assert "url(" not in tags.style and "@import" not in tags.style
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert csp is not None and "default-src &#x27;none&#x27;" in csp.group(1)


def test_page_shows_each_flip_with_both_completions_category_and_source() -> None:
    page = _page()
    assert page.count('<article class="flip"') == len(EXPECTED)
    for kind in FLIP_KINDS:
        assert page.count(f'data-kind="{kind}"') == sum(e[2] == kind for e in EXPECTED)
    assert "baseline answer to h-weapons-004 under int4" in page
    assert "quantized answer to h-weapons-004 under int4" in page
    assert 'category <span class="category">weapons</span>' in page
    assert 'source <span class="source">builtin</span>' in page
    assert "do not publish" in page


def test_page_without_stored_completions_says_so() -> None:
    page = _page(texts=False)
    assert page.count('<article class="flip"') == len(EXPECTED)
    assert "(not stored for this run)" in page


def test_write_flip_review_is_atomic(tmp_path: Path) -> None:
    path = write_flip_review(_report(), tmp_path / "out" / FILE_NAME)
    assert path == tmp_path / "out" / FILE_NAME
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == [FILE_NAME]  # no temporary file left


def test_write_beside_report_only_with_stored_completions(tmp_path: Path) -> None:
    line = write_beside_report(_report(texts=False), tmp_path, option="--store-completions")
    assert (
        line
        == "flip review: not written: completions were not stored (pass --store-completions to review them)"
    )
    assert not (tmp_path / FILE_NAME).exists()
    line = write_beside_report(_report(), tmp_path, option="--store-completions")
    assert line.startswith(f"flip review: {tmp_path / FILE_NAME} ({len(EXPECTED)} flips;")
    assert (tmp_path / FILE_NAME).is_file()
    line = write_beside_report(_report(texts=False), tmp_path, option="--store-completions")
    assert line.endswith(f"; the {tmp_path / FILE_NAME} there is from an earlier run")


def test_write_beside_report_reports_a_write_error(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).mkdir()  # a folder where the page goes: os.replace fails
    line = write_beside_report(_report(), tmp_path, option="--kvsafety-store-completions")
    assert line.startswith(f"flip review: not written: cannot write {tmp_path / FILE_NAME}")


def test_module_exports() -> None:
    assert sorted(flip_review.__all__) == sorted(set(flip_review.__all__))
    for name in flip_review.__all__:
        assert hasattr(flip_review, name)
    assert PromptDetail(category="c", source="s", text="t").category == "c"


# --- a real browser ------------------------------------------------------------------------------------

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="no chromium, chromium-browser or google-chrome on PATH (apt-get install chromium)",
)


class _Flips(HTMLParser):
    """The rendered flips (their data attributes, and whether hidden) and the shown count."""

    def __init__(self) -> None:
        super().__init__()
        self.flips: list[dict[str, str | None]] = []
        self.shown: str | None = None
        self._in_shown = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "article" and attr.get("class") == "flip":
            self.flips.append(attr)
        self._in_shown = tag == "output" and attr.get("id") == "shown"

    def handle_data(self, data: str) -> None:
        if self._in_shown:
            self.shown = data.strip()
            self._in_shown = False


def _browser_args(tmp_path: Path) -> list[str]:
    assert BROWSER is not None
    args = [
        BROWSER,
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    if os.geteuid() == 0:  # chromium refuses to run as root inside its sandbox
        args.append("--no-sandbox")
    return args


def _dump_dom(tmp_path: Path, url: str) -> _Flips:
    out = subprocess.run(
        [*_browser_args(tmp_path), "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0 and "<article" in out.stdout, f"chromium failed: {out.stderr[-2000:]}"
    assert "<script>alert" not in out.stdout  # the completion is text in the DOM, not an element
    parser = _Flips()
    parser.feed(out.stdout)
    return parser


def _visible(flips: _Flips) -> list[tuple[str | None, str | None, str | None]]:
    return [(f["data-model"], f["data-quantizer"], f["data-kind"]) for f in flips.flips if "hidden" not in f]


@pytest.fixture
def page(tmp_path: Path) -> Path:
    return write_flip_review(_report(), tmp_path / FILE_NAME)


@needs_browser
def test_browser_shows_every_flip(tmp_path: Path, page: Path) -> None:
    flips = _dump_dom(tmp_path, page.as_uri())
    assert _visible(flips) == [(m, q, k) for m, q, k, _, _ in EXPECTED]
    assert flips.shown == str(len(EXPECTED))


@needs_browser
def test_browser_applies_the_filter_in_the_url_fragment(tmp_path: Path, page: Path) -> None:
    flips = _dump_dom(tmp_path, page.as_uri() + "#quantizer=int4&kind=reverse")
    expected = [(m, q, k) for m, q, k, _, _ in EXPECTED if q == "int4" and k == "reverse"]
    assert len(expected) == 3  # two of MODEL's, one of ODD_MODEL's
    assert _visible(flips) == expected
    assert flips.shown == "3"
    assert len(flips.flips) == len(EXPECTED)  # the others are hidden, not removed


@needs_browser
def test_browser_applies_the_filter_in_the_query(tmp_path: Path, page: Path) -> None:
    flips = _dump_dom(tmp_path, page.as_uri() + "?quantizer=int8")
    assert _visible(flips) == [(MODEL, "int8", "conditional")]


@needs_browser
def test_browser_shows_nothing_for_a_value_not_in_the_report(tmp_path: Path, page: Path) -> None:
    flips = _dump_dom(tmp_path, page.as_uri() + "#quantizer=int3")
    assert _visible(flips) == []
    assert flips.shown == "0"
