"""The app in a real browser: Playwright driving Debian's Chromium against `streamlit run`.

Runs on a copy of the demo studies (the generation job writes into it), with the committed
checkpoints and data linked in. Screenshots of each state go to artifacts/screenshots/.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.appserver import CHROMIUM, CHROMIUM_ARGS, REPO, demo_root, streamlit_server

SHOTS = REPO / "artifacts" / "screenshots"
STUDIES = Path(os.environ.get("MEMOSCOPE_E2E_STUDIES", REPO / "studies"))  # another demo build, for debugging

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium missing: `make test` installs it with apt"),
    pytest.mark.skipif(not (STUDIES / "demo-2d" / "summary.json").is_file(), reason="demo not built (make demo)"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # all demo studies: the Compare page puts them side by side
    root = demo_root(tmp_path_factory.mktemp("app"), STUDIES)
    with streamlit_server(REPO / "app.py", root) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server: str):  # noqa: ANN201 - playwright Browser (one sync Playwright per module)
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_ARGS, "--disable-sync"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, server: str):  # noqa: ANN001, ANN201 - playwright Page
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    page.set_default_timeout(60_000)
    page.goto(server)
    yield page
    page.close()


@contextlib.contextmanager
def _fresh_page(browser, url: str, width: int = 1024, height: int = 768):  # noqa: ANN001, ANN202
    """A new page at ``url`` (its own session), closed afterwards."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)
    try:
        page.goto(url)
        yield page
    finally:
        page.close()


def _pick_row(page, row: int) -> None:  # noqa: ANN001
    """Click the selection box of the work list's ``row`` (1-based) until the pair line shows it: the table sits
    below the images, which may still move it while they load."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    grid = page.get_by_test_id("stDataFrame").first
    for _ in range(3):
        page.get_by_test_id("stStatusWidget").wait_for(state="hidden")
        grid.scroll_into_view_if_needed()
        box = grid.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + 18, box["y"] + 35 + 35 * (row - 1) + 17)
        try:
            page.get_by_text(re.compile(rf"^{row} / \d+")).first.wait_for(timeout=15_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"clicking row {row} of the work list did not select it")


def _metric(page, label: str) -> str:  # noqa: ANN001
    block = page.get_by_test_id("stMetric").filter(has_text=label).first
    return block.get_by_test_id("stMetricValue").inner_text()


def _go(page, name: str) -> None:  # noqa: ANN001
    """Open a page and wait until its own heading has replaced the last page's (a screenshot taken earlier shows
    the page being left, still on screen while the new one runs)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    heading = page.get_by_test_id("stHeading")
    before = heading.first.inner_text() if heading.count() else ""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name).click()
    with contextlib.suppress(PlaywrightTimeout):  # the same heading (a page opened twice) changes nothing
        page.wait_for_function(
            "b => { const h = document.querySelector('[data-testid=stHeading]'); return h && h.innerText !== b; }",
            arg=before,
            timeout=5_000,
        )


def _settled(page) -> None:  # noqa: ANN001
    """Wait until the script run that a click started has finished (Streamlit marks its root with the script's
    state): first for the run to start (at most 1.5 s, for a run too quick to be seen), then for it to end."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    state = "document.querySelector('[data-testid=stApp]')?.dataset.testScriptState"
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(f"() => {state} !== 'notRunning'", timeout=1500, polling=20)
    page.wait_for_function(f"() => {state} === 'notRunning'")


def _choose_study(page, name: str) -> None:  # noqa: ANN001
    """Pick ``name`` in the sidebar's study selector. On a loaded machine a click that lands while the sidebar is
    redrawn opens nothing: the selector is opened again (up to three times) until the option shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    option = page.get_by_role("option", name=name, exact=True)
    for _ in range(3):
        _settled(page)
        page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").first.click()
        try:
            option.wait_for(timeout=15_000)
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    option.click()


def _click_until(page, button, shown) -> None:  # noqa: ANN001
    """Click ``button`` until ``shown`` appears (up to three tries, 20 s each): for a click whose effect is the
    same when repeated (an error message), lost when it lands during a rerun."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(3):
        _settled(page)
        button.click()
        try:
            shown.wait_for(timeout=20_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"clicking {button} never showed {shown}")


def _show_all_if_no_copies(page) -> None:  # noqa: ANN001
    none = page.get_by_text("No samples above the threshold")
    none.or_(page.get_by_text(re.compile(r"^\d+ / \d+:"))).first.wait_for()
    if none.count():
        page.get_by_text("Only copies").first.click()


def test_opens_the_demo(page) -> None:  # noqa: ANN001
    page.get_by_text("Study: demo-2d").wait_for()
    assert re.fullmatch(r"\d+\.\d%", _metric(page, "Copies"))
    _settled(page)  # the whole page, its tables and to-do list too, not the first half of the run
    page.get_by_text("LDM checkpoint:").wait_for()
    page.screenshot(path=SHOTS / "overview.png", full_page=True)


def test_new_study_form_names_a_bad_path_then_creates_the_study(page) -> None:  # noqa: ANN001
    _settled(page)  # the first run has drawn the sidebar: a click into a sidebar still being drawn can be lost
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("New study").click()
    sidebar.get_by_label("Name", exact=True).fill("from-browser")
    sidebar.get_by_role("textbox", name="Training images (folder or manifest)").fill("nowhere/train.csv")
    sidebar.get_by_role("textbox", name="Validation images (other patients)").fill("nowhere/val.csv")
    _click_until(
        page,
        sidebar.get_by_role("button", name="Create study"),
        sidebar.get_by_text(re.compile(r"nowhere/train\.csv: no such file")),
    )
    sidebar.get_by_role("textbox", name="Training images (folder or manifest)").fill("data/demo/2d/manifest.csv")
    sidebar.get_by_role("textbox", name="Validation images (other patients)").fill("data/demo/2d/manifest.csv")
    sidebar.get_by_role("button", name="Create study").click()
    page.get_by_text("Study: from-browser").wait_for()
    page.get_by_text("No synthetic samples yet.").wait_for()
    page.screenshot(path=SHOTS / "new-study.png", full_page=True)
    _choose_study(page, "demo-2d")
    try:
        page.get_by_text("Study: demo-2d").wait_for()
    except Exception:
        page.screenshot(path=SHOTS / "debug-switch.png", full_page=True)
        raise


def test_threshold_slider_changes_the_counts(page) -> None:  # noqa: ANN001
    _go(page, "Calibrate")
    page.get_by_text("Copies", exact=True).wait_for()
    before = {label: _metric(page, label) for label in ("Threshold", "Memorized", "Copies")}
    slider = page.get_by_role("slider").first
    slider.focus()
    slider.press("Home")  # percentile 95 -> 50 in one step (one rerun, not one per 0.1)
    page.wait_for_function(
        "b => ![...document.querySelectorAll('[data-testid=stMetricValue]')].some(e => e.innerText === b)",
        arg=before["Threshold"],
    )
    _settled(page)  # the other metrics are replaced a moment after the threshold's (a read in between saw old counts)
    after = {label: _metric(page, label) for label in before}
    assert float(after["Threshold"]) < float(before["Threshold"])
    counts = [(float(before[k].rstrip("%")), float(after[k].rstrip("%"))) for k in ("Memorized", "Copies")]
    assert all(a >= b for b, a in counts) and any(a > b for b, a in counts), (before, after)
    _settled(page)
    page.locator(".js-plotly-plot .main-svg").first.wait_for()  # the chart is drawn, not just its frame
    page.screenshot(path=SHOTS / "calibrate.png", full_page=True)


def test_review_select_a_pair_and_change_the_window(page) -> None:  # noqa: ANN001
    _go(page, "Review")
    _show_all_if_no_copies(page)
    page.get_by_text(re.compile(r"^1 / \d+")).first.wait_for()
    _pick_row(page, 3)
    page.get_by_test_id("stSelectbox").filter(has_text="Window").click()
    page.get_by_role("option", name="percentile full range").click()
    page.get_by_text(re.compile(r"Window width .* applied to both images")).wait_for()
    page.get_by_test_id("stImage").nth(2).wait_for()  # synthetic | training | difference
    page.screenshot(path=SHOTS / "review-2d.png", full_page=True)


def test_3d_slice_moves(page) -> None:  # noqa: ANN001
    _choose_study(page, "demo-3d")
    _go(page, "Review")
    _show_all_if_no_copies(page)
    slider = page.locator(".st-key-slice_axial").get_by_role("slider")
    try:
        slider.wait_for()
    except Exception:
        page.screenshot(path=SHOTS / "debug-3d.png", full_page=True)
        raise
    start = int(slider.get_attribute("aria-valuetext") or slider.get_attribute("aria-valuenow") or 0)
    slider.focus()
    slider.press("ArrowRight")
    slider.press("ArrowRight")
    page.get_by_text(f"synthetic · axial {start + 2}").wait_for()
    page.get_by_test_id("stSelectbox").filter(has_text="Plane").click()  # one plane first; all three on request
    page.get_by_role("option", name="all three").click()
    page.get_by_text("synthetic · sagittal").wait_for()
    page.get_by_text(f"synthetic · axial {start + 2}").wait_for()  # the position kept
    page.screenshot(path=SHOTS / "review-3d.png", full_page=True)


def _reviewer(page, name: str) -> None:  # noqa: ANN001
    """Add ``name`` as a new reviewer (chosen from the list, then confirmed)."""
    page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(
        has_text=re.compile(r"^Reviewer")
    ).first.click()
    page.get_by_role("option", name="+ add a reviewer").click()
    page.get_by_label("New reviewer's name").fill(name)
    page.get_by_role("button", name="Add and review as this name").click()
    page.get_by_role("button", name=re.compile(r"^Copy")).wait_for()
    # the chooser now shows who you are, and the new-name form is gone (it once still read "+ add a reviewer")
    page.get_by_role("button", name="Add and review as this name").wait_for(state="detached", timeout=15_000)
    chooser = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text=re.compile(r"^Reviewer"))
    shown = chooser.first.locator("input").first.input_value() or chooser.first.inner_text()
    assert name in shown, f"the reviewer chooser reads {shown!r}"


def test_three_verdicts_survive_a_reload(page) -> None:  # noqa: ANN001
    _settled(page)
    _choose_study(page, "demo-2d")
    _go(page, "Review")
    _show_all_if_no_copies(page)
    _reviewer(page, "e2e rater")
    for label, n in (("^Copy", 1), ("^Not a copy", 2), ("^Unsure", 3)):
        page.get_by_role("button", name=re.compile(label)).click()
        page.get_by_text(re.compile(f"as e2e rater: {n}/")).wait_for()
    at = page.get_by_text(re.compile(r"^\d+ / \d+:")).first.inner_text().split(":")[0]  # the pair after the third
    page.reload()
    _show_all_if_no_copies(page)
    # the reviewer and the pair are kept in the URL: no need to choose either again after a reload
    page.get_by_text(re.compile(r"as e2e rater: 3/")).wait_for()  # read back from the study database
    page.get_by_text(re.compile(f"^{re.escape(at)}:")).first.wait_for()
    page.get_by_test_id("stImage").first.wait_for()
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden")
    page.screenshot(path=SHOTS / "verdicts.png", full_page=True)


def test_generation_job_runs_and_finishes(page) -> None:  # noqa: ANN001
    _choose_study(page, "demo-2d")
    _go(page, "Generate")
    page.get_by_test_id("stSelectbox").filter(has_text="Device").click()  # the job runs where the user says
    page.get_by_role("option", name="cpu", exact=True).click()
    page.get_by_label("Samples", exact=True).fill("3")
    page.get_by_label("Steps", exact=True).fill("3")
    assert "/generated/" in page.get_by_label("Output folder", exact=True).input_value()  # a new folder by default
    page.get_by_label("Output folder", exact=True).fill("studies/demo-2d/synthetic-browser")
    page.get_by_role("button", name="Start generation").click()
    # the folder typed is the folder written (a default that changed with the clock once dropped it)
    page.get_by_text(re.compile(r"^generate finished in.*synthetic-browser")).wait_for(timeout=120_000)
    page.get_by_text("3 samples in").wait_for()
    from playwright.sync_api import expect

    # the run that shows the new folder ends by removing the previous run's 24 thumbnails (a moment after the
    # caption changes): expect retries until only the 3 new ones are left
    expect(page.get_by_test_id("stImage")).to_have_count(3)
    page.screenshot(path=SHOTS / "generate.png", full_page=True)


def _same_dims(study: str) -> list[str]:
    """The committed studies scanned in the same dimensions as ``study`` (what Compare starts with)."""
    from core.study.results import is_scanned, read_summary

    def dims(folder: Path) -> int:
        return read_summary(folder).preprocessing.spatial_dims

    folders = [p for p in sorted((REPO / "studies").iterdir()) if p.is_dir() and is_scanned(p)]
    return [p.name for p in folders if dims(p) == dims(REPO / "studies" / study)]


def _too_poor(study: str) -> bool:
    """Whether the committed study's samples are below the anatomy floor (what the Overview must then say)."""
    from core.study.results import ScanResults
    from core.study.review import ANATOMY_FLOOR, sample_quality

    quality = sample_quality(ScanResults.open(REPO / "studies" / study).pairs())
    return quality is not None and quality < ANATOMY_FLOOR


PAGES = ("Overview", "Generate", "Detector", "Calibrate", "Review", "Agreement", "Compare", "Report")


@pytest.mark.parametrize("size", [(1024, 768), (1920, 1080)], ids=["1024x768", "1920x1080"])
def test_every_page_renders_without_an_error(browser, server: str, size: tuple[int, int]) -> None:  # noqa: ANN001
    """Each page of the 2D and 3D demos opens at both window sizes without an exception (screenshots for a look)."""
    width, height = size
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)
    page.goto(server)
    page.get_by_text("Study: demo-2d").wait_for()
    for study, pages in (("demo-2d", PAGES), ("demo-3d", PAGES), ("demo-3d-early", ("Overview", "Compare"))):
        _choose_study(page, study)
        for name in pages:
            _go(page, name)
            page.get_by_test_id("stHeading").first.wait_for()
            _settled(page)
            page.get_by_test_id("stStatusWidget").wait_for(state="hidden")
            errors = page.get_by_test_id("stException").count()
            assert errors == 0, f"{study} / {name} at {width}x{height}: {page.inner_text('body')[:500]}"
            page.screenshot(path=SHOTS / f"page-{study}-{name.lower()}-{width}x{height}.png")
            if name == "Compare" and any(_too_poor(other) for other in _same_dims(study)):
                page.get_by_text(re.compile(r"^Too poor to judge: ")).first.wait_for()
            if name == "Overview":  # a stage whose samples are not anatomy says so; one that makes anatomy does not
                warning = page.get_by_text("do not look like scans yet")
                if _too_poor(study):
                    warning.first.wait_for()
                else:
                    assert warning.count() == 0, f"{study}: its samples are anatomy, yet the Overview calls them noise"
            if name == "Review":  # the pair's images come first: their top is on screen without scrolling
                first = page.get_by_test_id("stImage").first
                first.wait_for()
                box = first.bounding_box()
                assert box is not None and box["y"] < height, f"{study} review images start at {box}"
    page.close()


def test_direct_page_urls_open_the_app_with_its_navigation(browser, server: str) -> None:  # noqa: ANN001
    """A bookmarked /review or /calibrate opens that page of the app (study and navigation), not a bare script."""
    with _fresh_page(browser, f"{server}/overview") as page:
        page.get_by_text("Study: demo-2d").wait_for()
        assert not page.get_by_text("Page not found").count()
        page.goto(f"{server}/calibrate")
        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Overview").wait_for()
        page.get_by_role("heading", name=re.compile("Calibrate")).first.wait_for()
        assert not page.get_by_text("Open or create a study in the sidebar first").count()
        assert not page.get_by_test_id("stSidebarNav").get_by_role("link", name="_ui").count()


def test_presentation_mode_shows_pseudonyms_on_the_review_page(browser, server: str) -> None:  # noqa: ANN001
    """With the sidebar switch on, no training scan or patient name of the demo is on the Review page, and the
    switch survives a reload (it is kept in the URL)."""
    with _fresh_page(browser, f"{server}/review") as page:
        page.get_by_text(re.compile(r"^\d+ / \d+:")).first.wait_for()
        assert "mni152" in page.get_by_test_id("stMainBlockContainer").inner_text()
        page.get_by_test_id("stSidebar").get_by_text("Presentation mode").click()
        page.get_by_text(re.compile(r"\(patient patient-\d{4}\)")).first.wait_for()
        # the whole page re-rendered (elements below the fold are replaced last): no real name left anywhere
        page.wait_for_function(
            "() => { const t = document.querySelector('[data-testid=stMainBlockContainer]').innerText;"
            " return !t.includes('mni152') && t.includes('train-0'); }"
        )
        page.screenshot(path=SHOTS / "presentation-mode.png")
        assert "present=1" in page.url
        page.reload()
        page.get_by_text(re.compile(r"\(patient patient-\d{4}\)")).first.wait_for()
        assert "mni152" not in page.get_by_test_id("stMainBlockContainer").inner_text()


def test_the_view_is_kept_in_the_url_and_typing_a_note_never_records_a_verdict(browser, server: str) -> None:  # noqa: ANN001
    """A shared link opens the same pair, window and zoom; keys typed into the note box stay in the note."""
    link = f"{server}/review?pair=3&zoom=2x&window=percentile%20full%20range&compare=flicker"
    with _fresh_page(browser, link, 1920, 1080) as page:
        page.get_by_text(re.compile(r"^3 / \d+:")).first.wait_for()
        page.get_by_text("flicker: synthetic / training").wait_for()
        page.get_by_text(re.compile(r"^Window width 2, level 0 ")).wait_for()  # the full range of [-1, 1]
        page.get_by_role("button", name=re.compile(r"^Next")).click()
        page.get_by_text(re.compile(r"^4 / \d+:")).first.wait_for()
        page.wait_for_function("() => location.search.includes('pair=4')")
        _reviewer(page, "note taker")
        note = page.get_by_label("Note (optional)")
        note.click()
        note.press_sequentially("yes, unsure")  # y, n and u are verdict shortcuts outside text fields
        page.wait_for_timeout(1500)
        assert note.input_value() == "yes, unsure"
        page.get_by_text(re.compile(r"as note taker: 0/")).wait_for()  # nothing recorded
        page.screenshot(path=SHOTS / "review-url-state.png")


def test_verdicts_go_into_the_study_on_screen(browser, server: str) -> None:  # noqa: ANN001
    """A reload once returned to demo-2d whatever study was open, the pair number carried over between studies, the
    blinded check was lost on a reload, and the reviewer dropped out of the URL after moving between pages; the
    Review heading did not name the study the next verdict goes into."""
    with _fresh_page(browser, server, 1400, 1500) as page:
        _settled(page)
        _go(page, "Review")
        _show_all_if_no_copies(page)
        page.get_by_role("heading", name=re.compile(r"^Review pairs: demo-2d")).wait_for()
        _reviewer(page, "url rater")
        _pick_row(page, 3)
        _choose_study(page, "demo-3d")
        page.get_by_role("heading", name=re.compile(r"^Review pairs: demo-3d")).wait_for()
        _show_all_if_no_copies(page)
        page.get_by_text(re.compile(r"^1 / \d+:")).first.wait_for()  # not demo-2d's pair 3
        _go(page, "Overview")
        _settled(page)
        assert "study=demo-3d" in page.url and "reviewer=url+rater" in page.url, page.url
        page.reload()
        page.get_by_text("Study: demo-3d").wait_for()  # the reload stays in the study that was open
        _go(page, "Review")
        page.get_by_test_id("stSidebar").get_by_text("Blinded check").click()
        _settled(page)
        page.reload()
        page.get_by_role("heading", name=re.compile(r"^Review pairs: demo-3d")).wait_for()
        page.get_by_text(re.compile(r"^Blinded: \d+ pairs")).wait_for()  # still blinded after the reload


@pytest.mark.parametrize("study", ["demo-2d", "demo-3d"])
@pytest.mark.parametrize("size", [(1440, 900), (1024, 768)], ids=["1440x900", "1024x768"])
def test_the_pair_and_the_verdict_buttons_fit_the_screen(
    browser, server: str, study: str, size: tuple[int, int]
) -> None:  # noqa: ANN001
    """A radiologist sees the pair and the three verdict buttons without scrolling at 1440x900 and with at most one
    scroll at 1024x768; the buttons' labels are whole and the work list's "your verdict" column is on screen. (The
    buttons once sat below the images, below the fold; at 1024 px they read "Co...", "No...", "Un...".)"""
    width, height = size
    with _fresh_page(browser, f"{server}/review?study={study}&reviewer=layout%20rater", width, height) as page:
        page.get_by_role("heading", name=re.compile(f"^Review pairs: {study}")).wait_for()
        _show_all_if_no_copies(page)
        images = page.get_by_test_id("stImage")
        images.nth(2).wait_for()
        _settled(page)
        page.screenshot(path=SHOTS / f"review-layout-{study}-{width}x{height}.png")
        for label in ("Copy (y)", "Not a copy (n)", "Unsure (u)"):
            button = page.get_by_role("button", name=label)
            box = button.bounding_box()
            assert box is not None and box["y"] + box["height"] <= height, f"{label} at {box} in a {size} window"
            cut = button.evaluate("b => [b, ...b.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1)")
            assert not cut, f"the label {label!r} is cut at {size}"
        fold = height if width >= 1440 else 2 * height  # one scroll allowed at 1024x768
        for i in range(3):  # synthetic | training | difference
            box = images.nth(i).locator("img").bounding_box()
            assert box is not None and box["y"] + box["height"] <= fold, f"image {i} ends at {box} (fold {fold})"
        thumbnails = (
            page.get_by_test_id("stImage")
            .locator("img")
            .evaluate_all(
                "els => els.map(e => e.getBoundingClientRect()).filter(r => r.height > 30).slice(3)"
                ".map(r => Math.round(r.width))"
            )
        )
        assert len(set(thumbnails)) <= 1, f"the neighbour thumbnails differ in size: {thumbnails}"
        frame = page.get_by_test_id("stDataFrame")
        frame.scroll_into_view_if_needed()
        columns = frame.locator("[role=columnheader]")  # the grid's accessible table: the columns drawn on screen
        columns.first.wait_for(state="attached")
        headers = columns.all_inner_texts()
        assert "your verdict" in headers, f"the work list's visible columns are {headers}"
