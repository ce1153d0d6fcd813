"""The report: one self-contained HTML page, checked in a real browser (Debian's chromium, driven by
Playwright), its static figures, the comparison of several runs, and its errors."""

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import groklab_cli

import groklab
from groklab.config import load_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIGURES = ["curves", "measures", "embedding_spectrum", "spectrum_slider", "neurons", "attention", "other_0", "other_1"]


def open_in_browser(path: Path):
    """Load the page in headless Chromium: console errors, page errors and a screenshot of every
    figure container."""
    if CHROMIUM is None:
        pytest.skip(
            "Debian's chromium is not installed (`make test` installs it with apt-get install chromium; "
            "it could not here), so the report cannot be checked in a browser"
        )
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on(
            "request",
            lambda req: (
                errors.append(f"network request: {req.url}")
                if not req.url.startswith(("file:", "data:", "about:"))
                else None
            ),
        )
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        shots = {}
        for div in page.locator("div.plotly-graph-div").all():
            div.scroll_into_view_if_needed()
            page.wait_for_timeout(50)
            shots[div.get_attribute("id")] = Image.open(io.BytesIO(div.screenshot())).convert("RGB")
        text = page.inner_text("body")
        frames = page.evaluate(
            "() => { const d = document.getElementById('spectrum_slider'); "
            "return d ? d._transitionData._frames.length : 0 }"
        )
        if frames:  # drag the slider to the first checkpoint: the bars must change
            before = page.evaluate(
                "() => Array.from(document.getElementById('spectrum_slider')._fullData[0].y).slice(0, 5)"
            )
            page.evaluate(
                "() => Plotly.animate('spectrum_slider', [document.getElementById('spectrum_slider')"
                "._transitionData._frames[0].name], {mode: 'immediate', transition: {duration: 0}, "
                "frame: {duration: 0, redraw: true}})"
            )
            page.wait_for_timeout(300)
            after = page.evaluate(
                "() => Array.from(document.getElementById('spectrum_slider')._fullData[0].y).slice(0, 5)"
            )
            text += f"\n[slider: {frames} frames, moved: {before != after}]"
        browser.close()
    return errors, shots, text


def drawn(image) -> bool:
    """A rendered figure: a fair share of non-white pixels in many colours (not a blank box)."""
    small = image.resize((200, 80))
    pixels = [small.getpixel((x, y)) for x in range(200) for y in range(80)]
    ink = sum(1 for r, g, b in pixels if min(r, g, b) < 235) / len(pixels)
    return ink > 0.03 and len(set(pixels)) > 30


def test_report_renders_in_chromium(quick_run):
    report = quick_run / "report.html"
    assert report.is_file()
    errors, shots, text = open_in_browser(report)
    assert errors == []
    assert sorted(shots) == sorted(FIGURES)
    blank = [key for key, image in shots.items() if not drawn(image)]
    assert blank == [], f"figures without rendered content: {blank}"
    for words in (
        "grokked: test accuracy reached 99% at step",
        "memorization ends at step",
        "source",
        "Attention from = to a",
        "How the circuit forms",
        "moved: True]",
    ):
        assert words in text


def test_report_is_self_contained_and_small(quick_run):
    import plotly

    html = (quick_run / "report.html").read_text()
    assert "<script src" not in html and "<link" not in html  # nothing to fetch (the browser test checks requests too)
    assert html.count(plotly.offline.get_plotlyjs()[:200]) == 1  # plotly.js inlined exactly once
    assert len(html.encode()) < 10_000_000


def test_png_and_svg_figures(quick_run, tmp_path):
    result = groklab_cli("report", str(quick_run), "-o", str(tmp_path / "r.html"), "--png", str(tmp_path / "figs"))
    assert result.returncode == 0, result.stderr
    names = {p.name for p in (tmp_path / "figs").iterdir()}
    assert {f"{key}.png" for key in FIGURES} <= names
    assert {"curves.svg", "measures.svg", "neurons.svg"} <= names
    assert (tmp_path / "figs" / "curves.png").stat().st_size > 20_000


def test_comparison_report(quick_run, tmp_path):
    other = tmp_path / "other"
    groklab.run(
        load_config("quick", ["train.max_steps=300", "train.eval_every=50", "measures=null"], seed=1),
        other,
        report=False,
    )
    out = tmp_path / "cmp.html"
    result = groklab_cli("report", str(quick_run), str(other), "-o", str(out))
    assert result.returncode == 0, result.stderr
    errors, shots, text = open_in_browser(out)
    assert errors == [] and "curves" in shots and all(drawn(image) for image in shots.values())
    assert "quick: train" in text or "quick: test" in text or "other" in text
    assert "groklab comparison" in text


def test_report_of_a_run_in_progress_and_of_a_diverged_run(quick_run, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(quick_run, live)
    summary = json.loads((live / "summary.json").read_text())
    summary.update(status="running", pid=os.getpid())  # this process is alive: the run counts as training
    (live / "summary.json").write_text(json.dumps(summary))
    groklab.write_report([live])
    assert "This run is in progress" in (live / "report.html").read_text()

    diverged = groklab.run(
        load_config("quick", ["train.lr=1e30", "train.max_steps=100", "train.eval_every=10", "measures=null"]),
        tmp_path / "diverged",
    )
    assert diverged.summary["status"] == "diverged"
    html = (tmp_path / "diverged" / "report.html").read_text()
    assert "This run diverged" in html and "the last good step is" in html


def test_report_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, match in (
        (["report", str(empty)], "is not a groklab run"),
        (["report", str(tmp_path / "missing")], "no run directory"),
    ):
        result = groklab_cli(*args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and match in result.stderr
    fresh = tmp_path / "fresh"  # a run directory created, with no evaluation yet
    from groklab.store import RunDir

    RunDir.create(fresh, (Path(groklab.config.PRESET_DIR) / "quick.yaml").read_text())
    result = groklab_cli("report", str(fresh))
    assert result.returncode == 2 and "no metrics yet" in result.stderr
    assert not (fresh / "report.html").exists()


def test_no_report_flag(tmp_path):
    result = groklab_cli(
        "run", "quick", "--set", "train.max_steps=20", "--no-report", "--out", str(tmp_path / "r"), "-q"
    )
    assert result.returncode == 0 and not (tmp_path / "r" / "report.html").exists()


def test_grouped_bars_stand_side_by_side():
    """A grouped panel's bar traces share each category's slot without overlapping; an ungrouped one overlays them
    (the spectrum's key frequencies over the norms); both renderers place them the same way."""
    from groklab.report.figures import Figure, Panel, Trace, bar_slots
    from groklab.report.html import plotly_figure

    a, b = Trace("a", ["s0", "s1", "s2"], [1, 2, 3], kind="bar"), Trace("b", ["s0", "s1", "s2"], [3, 2, 1], kind="bar")
    grouped, overlaid = Panel("g", [a, b], grouped=True), Panel("o", [a, b])
    (pa, wa), (pb, wb) = bar_slots(grouped, a, a.x), bar_slots(grouped, b, b.x)
    assert wa == wb == pytest.approx(0.4) and list(pa) == pytest.approx([-0.2, 0.8, 1.8])
    assert list(pb) == pytest.approx([0.2, 1.2, 2.2])  # right of a's bars, touching, no overlap
    assert bar_slots(overlaid, b, b.x)[0].tolist() == [0, 1, 2] and bar_slots(overlaid, b, b.x)[1] == pytest.approx(0.8)
    bars = plotly_figure(Figure("f", "t", "c", [grouped])).data
    assert [bar.offset for bar in bars] == pytest.approx([-0.4, 0.0]) and [bar.width for bar in bars] == pytest.approx(
        [0.4, 0.4]
    )
