"""The app's time to first render: from a healthy server to the Overview's first metric in Chromium.

The reference is a bare Streamlit page (one title, one metric) served and timed the same way in the same run, so the
ratio is what MemoScope adds to Streamlit itself. Each server is fresh (its first script run imports everything).
Usage: PYTHONPATH=. .venv/bin/python benchmarks/app_start.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tools.appserver import CHROMIUM, CHROMIUM_ARGS, REPO, demo_root, streamlit_server

BARE = 'import streamlit as st\n\nst.title("bare")\nst.metric("Memorized training", "1.0 %")\n'
METRIC = '[data-testid="stMetric"]'


def first_render(script: Path, root: Path, browser) -> float:  # noqa: ANN001 - playwright Browser
    """Seconds from a healthy fresh server to the first metric drawn on its first page."""
    with streamlit_server(script, root) as url:
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        try:
            start = time.perf_counter()
            page.goto(url)
            page.locator(METRIC).first.wait_for(state="visible", timeout=120_000)
            return time.perf_counter() - start
        finally:
            page.close()


def measure(repeat: int = 3) -> tuple[list[float], list[float]]:
    """First-render seconds of the app's Overview and of the bare page, ``repeat`` fresh servers each."""
    from playwright.sync_api import sync_playwright

    app, bare = [], []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        root = demo_root(Path(tmp))
        (root / "bare.py").write_text(BARE, encoding="utf-8")
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            for _ in range(repeat):
                bare.append(first_render(root / "bare.py", root, browser))
                app.append(first_render(REPO / "app.py", root, browser))
        finally:
            browser.close()
    return app, bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    app, bare = measure(args.repeat)
    print(f"app Overview first render: median {statistics.median(app):.2f} s  ({', '.join(f'{t:.2f}' for t in app)})")
    print(f"bare Streamlit page:       median {statistics.median(bare):.2f} s  ({', '.join(f'{t:.2f}' for t in bare)})")


if __name__ == "__main__":
    main()
