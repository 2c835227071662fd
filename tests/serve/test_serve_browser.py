"""Real-browser tests (Chromium driven by Playwright): the viewer, clicked through, and a static report.

Each test checks that every ``<img>`` on the page loaded (``naturalWidth > 0``) and that the browser logged no
console error and no uncaught exception.
"""

from __future__ import annotations

import os

import pytest
from playwright import sync_api

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")

ALL_LOADED = """() => Array.from(document.images).length > 0 &&
    Array.from(document.images).every((img) => img.complete && img.naturalWidth > 0)"""
BROKEN = "() => Array.from(document.images).filter((img) => !img.complete || img.naturalWidth === 0).map((i) => i.src)"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.page.on("console", lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def all_images_loaded(self, minimum: int = 1) -> int:
        page = self.page
        try:
            page.wait_for_function(ALL_LOADED, timeout=30_000)
        except Exception:  # say which pictures failed
            raise AssertionError(f"images not loaded: {page.evaluate(BROKEN)}") from None
        count = page.evaluate("() => document.images.length")
        assert count >= minimum
        assert page.evaluate(BROKEN) == []
        assert "[object" not in page.inner_text("body")  # every value rendered as text, not as an object
        return count

    def text(self, selector: str = "body") -> str:
        text = self.page.inner_text(selector)
        assert "[object" not in text and "undefined" not in text and "NaN" not in text
        return text

    def close(self) -> None:
        self.context.close()


def test_viewer_layers_channels_saliency_and_inversion(browser, live_server, viewer):
    view = Page(browser)
    page = view.page
    try:
        page.goto(live_server.url + "/")
        page.wait_for_selector("dl.kv")
        assert "resnet20_cifar" in page.inner_text("#model-name")
        facts = view.text("dl.kv")
        assert "parameters" in facts and f"{sum(p.numel() for p in viewer.model.parameters()):,}" in facts

        page.click("[data-nav=layers]")
        page.wait_for_selector("tr.layer-row")
        assert page.locator("tr.layer-row").count() == len(viewer.layers)
        page.click("tr.layer-row[data-layer='layer2'] a")
        page.wait_for_selector(".channel-tile", timeout=60_000)
        assert page.locator(".channel-tile").count() == 4  # layer2 has 4 channels
        view.all_images_loaded(minimum=4)
        assert page.locator(".pic .box").count() >= 1  # receptive-field boxes drawn

        page.click(".channel-tile[data-channel='1']")
        page.wait_for_selector(".grid.examples .tile")
        page.wait_for_selector(".grid.filters .tile", timeout=60_000)
        assert page.locator(".grid.examples .tile").count() == 16
        assert page.locator(".grid.filters .tile").count() == 8
        view.all_images_loaded(minimum=16 + 16)
        page.click("text=next channel")
        page.wait_for_function("() => location.hash.endsWith('/2')")
        page.wait_for_selector(".grid.filters .tile", timeout=60_000)
        view.all_images_loaded(minimum=32)

        page.click("[data-nav=saliency]")
        page.wait_for_selector(".gallery button[data-ref='sample:4']")
        page.click(".gallery button[data-ref='sample:4']")
        page.wait_for_selector(".grid.maps .tile", timeout=60_000)
        methods = len(viewer.info()["methods"])
        assert methods >= 8 and page.locator(".grid.maps .tile").count() == methods  # every method
        view.all_images_loaded(minimum=methods + 1)
        predicted = page.inner_text("h2")
        bars = view.text(".bars")
        assert bars.count("%") == 10 and "Ankle boot" in bars
        page.select_option("#target-class", "0")
        page.wait_for_function("() => location.hash.endsWith('/0')")
        page.wait_for_selector("text=Saliency for T-shirt/top", timeout=60_000)
        page.wait_for_selector(".grid.maps .tile")
        view.all_images_loaded(minimum=9)
        assert page.inner_text("h2") == predicted
        page.uncheck("#overlay")  # the maps alone
        view.all_images_loaded(minimum=9)

        page.click("[data-nav=inversion]")
        page.click(".gallery button[data-ref='sample:6']")
        page.wait_for_function("() => location.hash === '#/inversion/sample%3A6'")
        page.select_option("#inversion-layer", "layer1")
        page.fill("#inversion-steps", "6")
        page.click("#invert")
        page.wait_for_selector(".grid.inversion .tile", timeout=60_000)
        assert "feature error" in view.text("main")
        view.all_images_loaded(minimum=2)
        assert view.errors == []
    finally:
        view.close()


def test_viewer_upload_in_the_browser(browser, live_server, tmp_path):
    import numpy as np
    from PIL import Image

    picture = tmp_path / "boot.png"
    array = np.zeros((50, 50, 3), np.uint8)
    array[30:45, 5:45] = 220
    Image.fromarray(array).save(picture)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    view = Page(browser)
    page = view.page
    try:
        page.goto(live_server.url + "/#/saliency")
        page.set_input_files("#upload-input", str(text))
        page.wait_for_selector(".card .error")
        assert "not an image" in page.inner_text(".card .error")
        view.errors = [e for e in view.errors if "415" not in e]  # the browser logs the refused upload itself
        page.set_input_files("#upload-input", str(picture))
        page.wait_for_function("() => location.hash.startsWith('#/saliency/upload')")
        page.wait_for_selector(".grid.maps .tile", timeout=60_000)
        view.all_images_loaded(minimum=9)
        assert view.errors == []
    finally:
        view.close()


def test_static_report_in_the_browser(browser, serve_checkpoint, tmp_path):
    import netvis
    from netvis.app.render.lecture import lecture_report
    from netvis.data import load
    from netvis.train.evaluate import with_preprocess

    ckpt = netvis.load_checkpoint(serve_checkpoint)
    train = with_preprocess(load("fashion-mnist-sample", "train").subset(range(40)), ckpt.preprocess)
    test = with_preprocess(load("fashion-mnist-sample", "test").subset(range(40)), ckpt.preprocess)
    report, _ = lecture_report(ckpt, train, test)
    index = report.write(tmp_path / "report")
    view = Page(browser)
    try:
        view.page.goto(index.resolve().as_uri())
        view.page.wait_for_selector("section")
        assert view.page.locator("section").count() >= 4
        view.all_images_loaded(minimum=3)
        assert view.errors == []
    finally:
        view.close()
