"""08_visualize_top10 in JupyterLab in a real (headless) Chromium: run the notebook, pick another query
in the result browser and check that the result images change; saves ``figures/08_browser.png``.

Needs the Debian ``chromium`` package and the ``playwright`` Python package (which drives that
binary: no browser download). Skipped with the reason when either is missing; ``.ci/run`` installs
Chromium so that CI runs it.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import pytest

from retrieval.datasets import get_test
from retrieval.run import record_ranks

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
TOKEN = "retrieval-lab-browser-test"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y "
                                 "chromium; .ci/run installs it)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving a folder with 08 parameterised to a run folder made here
    (tiny synthetic set; a seeded random ranking against the ground-truth order)."""
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    base = tmp_path_factory.mktemp("lab")
    ds = get_test("synth", "tiny", root=base / "data", progress=False)
    rng = np.random.default_rng(0)
    rand = np.stack([rng.permutation(ds.n_db) for _ in range(ds.n_query)], axis=1)
    record_ranks(base / "run", ds.name, "first", rand, ds.gnd, keep=20, data_root=base / "data")
    oracle = np.array([list(g["easy"]) + list(g["hard"]) + list(g["junk"]) +
                       [i for i in range(ds.n_db) if i not in set(g["easy"]) | set(g["hard"]) | set(g["junk"])]
                       for g in ds.gnd]).T
    record_ranks(base / "run", ds.name, "first+oracle", oracle, ds.gnd, keep=20, data_root=base / "data")

    nb = load_notebook_node(str(ROOT / "notebooks" / "08_visualize_top10.ipynb"))
    nb = parameterize_notebook(nb, {"run_dir": str(base / "run"), "fig_dir": str(base / "figures"),
                                    "method_b": "+oracle", "thumb": 64, "dpi": 60})
    (base / "nb").mkdir()
    nbformat.write(nb, base / "nb" / "08.ipynb")

    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "share"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
        env[var] = str(base / "jupyter" / sub)
    page_config = base / "jupyter" / "config" / "labconfig" / "page_config.json"
    page_config.parent.mkdir(parents=True)
    page_config.write_text('{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}')
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    port = _free_port()
    log = open(base / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
                             f"--port={port}", f"--IdentityProvider.token={TOKEN}", "--allow-root",
                             f"--ServerApp.root_dir={base / 'nb'}"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited: {(base / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            raise RuntimeError(f"jupyter lab did not answer on {url}: {(base / 'lab.log').read_text()[-2000:]}")
        yield url, ds, rand
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


_IMAGE_HASHES = """els => els.map(e => { const c = document.createElement('canvas');
    c.width = e.naturalWidth; c.height = e.naturalHeight; c.getContext('2d').drawImage(e, 0, 0);
    return c.toDataURL(); })"""


def _result_images(page):
    """Content hashes of the browser's result tiles (method A's row first), and their captions."""
    urls = page.eval_on_selector_all(".retrieval-browser .retrieval-tile img", _IMAGE_HASHES)
    captions = page.eval_on_selector_all(".retrieval-browser .retrieval-tile button", "els => els.map(e => e.innerText)")
    return [hashlib.sha1(u.encode()).hexdigest() for u in urls], captions


def test_widget_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    url, ds, rand = lab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{url}/lab/tree/08.ipynb?token={TOKEN}")
            page.wait_for_selector(".jp-Notebook", timeout=90_000)
            page.locator("text=/\\|\\s*Idle/").first.wait_for(timeout=90_000)  # status bar: kernel idle
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
            page.wait_for_selector(".retrieval-browser .retrieval-tile img", timeout=180_000)
            page.wait_for_function("document.querySelectorAll('.retrieval-browser .retrieval-tile img').length == 20",
                                   timeout=60_000)
            before, captions = _result_images(page)
            assert len(before) == 20 and captions[0].startswith("1. #")
            assert all(c.startswith(f"{r % 10 + 1}. #") for r, c in enumerate(captions))

            query = page.locator(".retrieval-browser .widget-dropdown:has(label:text-is('query')) select")
            query.select_option(index=3)
            page.wait_for_function(
                "first => { const b = document.querySelector('.retrieval-browser .retrieval-tile button');"
                " return b && b.innerText !== first; }", arg=captions[0], timeout=60_000)
            page.wait_for_timeout(500)  # the images of the last tiles
            after, captions_after = _result_images(page)
            assert captions_after[:10] == [f"{r + 1}. #{i}" for r, i in enumerate(rand[:10, 3])]
            assert sum(x != y for x, y in zip(before, after)) >= 10  # the result images changed

            page.locator(".retrieval-browser .retrieval-tile button").nth(10).click()  # first result of B
            page.wait_for_selector(".retrieval-browser .retrieval-detail img", timeout=30_000)
            assert "rank 1" in page.inner_text(".retrieval-browser .retrieval-detail")
            page.locator(".retrieval-browser").evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(300)
            shot = ROOT / "figures" / "08_browser.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot))  # JupyterLab with the browser in view
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
