"""Open a report in headless Chromium from file:// and check what a reader would see.

Used by test_browser.py and test_compare.py. Checks: no console errors, no
request but the file itself, every drawn figure has a non-empty rendered size,
the metrics table is there; saves a full-page screenshot to test-artifacts/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import skip_or_fail

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


def require_chromium() -> tuple[str, str]:
    chromium = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    driver = CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver")
    if not chromium or not driver:
        skip_or_fail("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    return chromium, driver


def open_report(report: Path, profile_dir: Path, screenshot_name: str, script: str | None = None) -> dict:
    """Load ``report`` and return what the browser saw (raises AssertionError on any failed check);
    ``script`` (JavaScript with a return) runs in the page, its value under "script"."""
    chromium, driver_path = require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        url = report.resolve().as_uri()
        driver.get(url)
        driver.execute_script("return document.readyState")
        console = driver.get_log("browser")
        requests = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                params = message["params"]
                requests.append((params["request"]["url"], params.get("documentURL")))
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        navigation = driver.execute_script("return performance.getEntriesByType('navigation').map(e => e.name)")

        figures = {}
        for fig in driver.find_elements(By.CSS_SELECTOR, "figure"):
            svgs = fig.find_elements(By.CSS_SELECTOR, ":scope > svg")
            size = svgs[0].size if svgs else None
            # Rendered content, not just the box: the bounding box of what the SVG draws.
            bbox = driver.execute_script("const s = arguments[0].querySelector(':scope > svg'); if (!s) return null;"
                                         "const b = s.getBBox(); return [b.width, b.height];", fig)
            # Drawn lines and point sets (matplotlib's SVG groups: line2d_*, PathCollection_*), legend included.
            marks = driver.execute_script("const s = arguments[0].querySelector(':scope > svg'); if (!s) return 0;"
                                          "return s.querySelectorAll('g[id^=line2d], g[id^=PathCollection]').length;", fig)
            figures[fig.get_attribute("id")] = {"class": fig.get_attribute("class"), "size": size, "bbox": bbox,
                                                "marks": marks}
        scripted = driver.execute_script(script) if script else None
        table_rows = driver.find_elements(By.CSS_SELECTOR, "#metrics-table tbody tr[data-run]")
        rows = {r.get_attribute("data-run"): r.get_attribute("class") for r in table_rows}
        verdict = [[c.text for c in r.find_elements(By.CSS_SELECTOR, "td")]
                   for r in driver.find_elements(By.CSS_SELECTOR, "#verdict-table tr")]
        verdict = [v for v in verdict if v]
        groups = [g.text for g in driver.find_elements(By.CSS_SELECTOR, "#metrics-table tr.group th")]
        title = driver.find_element(By.TAG_NAME, "h1")
        heading = {"text": title.text, "width": title.size["width"], "height": title.size["height"]}
        # Text drawn outside its figure's box is cut off for the reader (a label wider than the margin).
        clipped = driver.execute_script(CLIPPED_TEXT_JS)
        # The main metrics table must fit 1400 px: no horizontal scrolling for it.
        table_fit = driver.execute_script(
            "const t = document.getElementById('metrics-table'); const s = t.parentElement;"
            "return [t.scrollWidth, s.clientWidth, window.innerWidth];")
        texts = {fig.get_attribute("id"): [t.text for t in fig.find_elements(By.CSS_SELECTOR, ":scope > svg text")]
                 for fig in driver.find_elements(By.CSS_SELECTOR, "figure.drawn")}

        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 100, 16000))
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / screenshot_name
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()

    errors = [e for e in console if e.get("level") == "SEVERE"]
    assert not errors, f"console errors: {errors}"
    # The browser's own pages (new tab, chrome://resources) log requests too: judge the
    # requests our document made, and forbid any network scheme whoever asked.
    page = [u for u, doc in requests if doc == url and not u.startswith("data:")]
    assert page == [url], f"requests of the report besides the file itself: {page}"
    network = [u for u, _ in requests if u.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")]
    assert not network, f"network requests: {network}"
    assert navigation == [url]
    assert [r for r in resources if not r.startswith("data:")] == [], resources
    drawn = {k: v for k, v in figures.items() if "drawn" in (v["class"] or "")}
    for name, fig in drawn.items():
        assert fig["size"]["width"] > 100 and fig["size"]["height"] > 50, (name, fig)
        assert fig["bbox"][0] > 50 and fig["bbox"][1] > 30, (name, fig)
    assert table_rows, "no metrics table"
    assert not clipped, f"text cut off at the edge of its figure: {clipped}"
    assert table_fit[0] <= table_fit[1], f"the main metrics table needs horizontal scrolling at 1400 px: {table_fit}"
    assert shot.stat().st_size > 10_000
    return {"script": scripted, "figures": figures, "rows": rows, "verdict": verdict, "requests": [u for u, _ in requests], "console": console, "screenshot": shot,
            "groups": groups, "heading": heading, "texts": texts}


# Every <text> of every drawn figure's SVG must lie inside the SVG's box (1 px tolerance).
CLIPPED_TEXT_JS = """
const out = [];
for (const svg of document.querySelectorAll('figure.drawn > svg')) {
  const box = svg.getBoundingClientRect();
  for (const t of svg.querySelectorAll('text')) {
    const r = t.getBoundingClientRect();
    if (r.width === 0) continue;
    if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 || r.bottom > box.bottom + 1) {
      out.push([svg.parentElement.id, t.textContent, Math.round(r.left - box.left), Math.round(box.right - r.right)]);
    }
  }
}
return out;
"""
