"""report.html in a real browser (headless Chromium): it renders, every image loads, the claims
table is there. Skips with the reason when Chromium is not installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (Debian: apt install chromium)")]

PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-probe', JSON.stringify({
    images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    claims: document.querySelectorAll('table.claims tbody tr').length,
    tables: document.querySelectorAll('table').length, title: document.title}));
});</script>"""


def _probe(page, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)
    m = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert m, f"the page did not finish loading: {out.stdout[:500]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.slow
def test_report_renders_with_images_and_claims(micro_run, tmp_path):
    data, paths = micro_run("position-probe")
    seen = _probe(paths["html"], tmp_path)
    assert seen["title"] == data["title"]
    assert seen["images"] >= 1 and seen["loaded"] == seen["images"], seen
    assert seen["claims"] == len(data["claims"]) and seen["tables"] >= 2
