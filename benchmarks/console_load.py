"""How long each console page takes to load in a real browser, with a deployment running.

Run: python benchmarks/console_load.py [--repeat N]
Uses the running deployment of this home (starts the embedded default if none runs), starts
`dsagent console` on a free port, logs in with Debian's chromium through Playwright, and loads each
page N times, reading the browser's own navigation timing (request start to the load event).
Prints the median per page and its ratio to the login page (no data behind it), measured in the
same run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsagent.deploy.launch.options import ServeOptions  # noqa: E402
from dsagent.deploy.status import reports  # noqa: E402
from dsagent.deploy.up import up  # noqa: E402
from dsagent.settings import Settings  # noqa: E402
from dsagent.system.ports import free_port  # noqa: E402

PAGES = ["/login", "/", "/plan?model=deepseek-r1-distill-qwen-14b&gpus=4&gpu_memory_gib=24", "/gpus", "/try"]
TIMING = "(() => { const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime; })()"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    settings = Settings.load()
    if not any(r.get("state") == "ready" for r in reports(settings)):
        up(options=ServeOptions(port=0, device="cpu"), settings=settings)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dsagent.cli", "console", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/login", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        args=["--headless=new", "--no-sandbox", "--disable-gpu",
                                              "--disable-background-networking"])
            page = browser.new_page()
            page.goto(f"{url}/login")
            page.fill("#key", settings.api_key())
            page.click("#login")
            page.wait_for_url(f"{url}/")
            times: dict[str, list[float]] = {}
            for _ in range(args.repeat):
                for path in PAGES:
                    page.goto(f"{url}{path}")
                    times.setdefault(path, []).append(page.evaluate(TIMING))
            browser.close()
    finally:
        proc.terminate()
        proc.wait()
    base = statistics.median(times["/login"])
    print(f"\n{'page':70} {'median ms':>10} {'vs login':>9}")
    for path in PAGES:
        med = statistics.median(times[path])
        print(f"{path:70} {med:>10.1f} {med / base:>8.2f}x")


if __name__ == "__main__":
    main()
