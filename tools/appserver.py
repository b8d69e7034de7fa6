"""Start the Streamlit app (or any Streamlit script) on a free localhost port, for the browser tests and benchmarks.

The server runs headless, bound to 127.0.0.1, without the file watcher; its log goes to a file (a full pipe would
block it). ``demo_root`` builds a throwaway folder that looks like a checkout: copies of the demo studies (jobs
write into them) with the committed checkpoints and data linked in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; never `playwright install`
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_root(root: Path, studies: Path = REPO / "studies") -> Path:
    """``root`` with copies of the ``demo-*`` studies and links to the committed checkpoints and data."""
    for study in sorted(studies.glob("demo-*")):
        shutil.copytree(study, root / "studies" / study.name, ignore=shutil.ignore_patterns("jobs"))
    for name in ("checkpoints", "data"):
        (root / name).symlink_to(studies.parent / name)
    return root


@contextlib.contextmanager
def streamlit_server(script: Path, cwd: Path, timeout: float = 60.0) -> Iterator[str]:
    """``streamlit run script`` in ``cwd`` (MemoScope's home under ``cwd/home``); yields the URL once healthy."""
    port = free_port()
    log_path = cwd / "streamlit.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(script),
                "--server.headless",
                "true",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(port),
                "--browser.gatherUsageStats",
                "false",
                "--client.toolbarMode",
                "minimal",
                "--server.fileWatcherType",
                "none",
            ],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), "MEMOSCOPE_HOME": str(cwd / "home")},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    if time.time() > deadline or process.poll() is not None:
                        raise RuntimeError(f"streamlit did not start: {log_path.read_text()[-2000:]}") from None
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
