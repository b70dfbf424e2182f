"""featviz studio in a real browser: Debian's headless Chromium, driven by
Selenium, against a real featviz-server on loopback ports. Every wait polls
the page's state (WebDriverWait); none sleeps a fixed time. Screenshots go
to $FEATVIZ_BROWSER_OUT (default build/tests/browser).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import (NoAlertPresentException,
                                        StaleElementReferenceException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from studio_server import ENDLESS_STEPS, HOSTILE, REPO, Server, post

OUT = Path(os.environ.get("FEATVIZ_BROWSER_OUT", REPO / "build/tests/browser"))
TOKEN = "bob-studio-0123456789-token"
WAIT = 120  # The longest any page state is waited for, in seconds.


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("studio"))
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("studio_tokens")
    (base / "tokens").write_text(f"{TOKEN} bob user\n")
    s = Server(base, "--tokens_file", str(base / "tokens"))
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(arg)
    (OUT / "downloads").mkdir(parents=True, exist_ok=True)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(OUT / "downloads"),
        "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {
        "behavior": "allow", "downloadPath": str(OUT / "downloads")})
    yield driver
    driver.quit()


def until(driver, condition, what: str):
    """Polls `condition(driver)` until it is truthy; stale elements retry."""
    return WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, f"waiting for {what}")


def click(driver, selector: str, what: str) -> None:
    """Clicks the element at `selector` once it is there; a page that
    redraws it meanwhile (the jobs page refreshes) is waited out."""
    def clicked(d):
        found = css(d, selector)
        if not found or not found[0].is_enabled():
            return False
        found[0].click()
        return True
    until(driver, clicked, what)


def visit(driver, url: str) -> None:
    """Loads `url` afresh (not as a hash change of the page shown), so that
    no state of the previous page can be mistaken for the new one's."""
    driver.get("about:blank")
    driver.get(url)


def shoot(driver, name: str) -> None:
    driver.save_screenshot(str(OUT / f"{name}.png"))


def css(driver, selector: str):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def number(driver, selector: str, name: str) -> int:
    """data-NAME of the element at `selector` as a number; 0 while absent."""
    found = css(driver, selector)
    return int(found[0].get_attribute(f"data-{name}") or 0) if found else 0


def state(driver, selector: str, value: str):
    return lambda d: any(e.get_attribute("data-state") == value for e in css(d, selector))


def errors(driver) -> list[str]:
    """The page's console errors (a blocked script, an exception) since the
    last call; an API call's refusal (a network error) is the page's business."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and e.get("source") != "network"]


def test_the_model_list_loads(server, browser):
    visit(browser, server.url + "#/models")
    until(browser, lambda d: len(css(d, "#models .model-row")) == 3, "the model rows")
    names = [e.text for e in css(browser, "#models .model-name")]
    assert names == ["hostile_names", "mnist_classifier", "odd_names"]
    row = css(browser, '#models .model-row[data-model="mnist_classifier"]')[0]
    assert "1 × 28 × 28" in row.text and "10 classes" in row.text
    shoot(browser, "models")
    assert errors(browser) == []


def test_an_objective_with_a_typo_shows_the_error_at_its_column(server, browser):
    typo = "channel(conv2, 3) + lgoit(1)"
    visit(browser, server.url + "#/editor?model=mnist_classifier&objective=" +
                urllib.parse.quote(typo))
    until(browser, state(browser, "#check", "error"), "the server's verdict")
    check = css(browser, "#check")[0]
    assert check.get_attribute("data-column") == str(typo.index("lgoit") + 1)
    assert "unknown function 'lgoit'" in check.text
    caret = css(browser, "#error-caret")[0].text.split("\n")
    assert caret[0] == typo and caret[1].index("^") == typo.index("lgoit")
    shoot(browser, "editor-typo")
    # Mended in the page, the check turns OK with the canonical text.
    box = css(browser, "#objective")[0]
    box.clear()
    box.send_keys("channel(conv2, 3) + logit(1)")
    until(browser, state(browser, "#check", "ok"), "the objective to pass")
    assert "channel(conv2, 3) + logit(1)" in css(browser, "#check")[0].text


def test_the_editor_completes_layer_names(server, browser):
    visit(browser, server.url + "#/editor?model=mnist_classifier&objective=")
    until(browser, lambda d: css(d, "#objective"), "the editor")
    box = css(browser, "#objective")[0]
    box.clear()
    box.send_keys("channel(co")
    until(browser, lambda d: len(css(d, "#completions .completion")) >= 2, "completions")
    options = [e.text.split(" ")[0] for e in css(browser, "#completions .completion")]
    assert "conv1" in options and "conv2" in options
    css(browser, "#completions .completion")[1].click()
    assert box.get_attribute("value") == "channel(" + options[1]


def test_a_render_shows_previews_and_a_loss_curve_then_the_grid(server, browser):
    visit(browser, server.url + "#/render?model=mnist_classifier&objective=" +
                urllib.parse.quote("channel(conv2, 3) - 0.05 * tv()") +
                "&steps=96&every=8&batch=2&seed=11")
    until(browser, lambda d: number(d, "#frames", "count") >= 2,
          "two preview frames")
    until(browser, lambda d: number(d, "#loss", "points") >= 2,
          "two points of the loss curves")
    shoot(browser, "render-progress")
    until(browser, state(browser, "#render-status", "done"), "the render's end")
    assert int(css(browser, "#frames")[0].get_attribute("data-count")) == 12
    assert len(css(browser, "#grid img.result-image")) == 2
    assert len(css(browser, "#grid .probs li")) == 6
    assert [e.text for e in css(browser, "#legend li")] == [
        "channel(conv2, 3) (weight 1)", "tv() (weight -0.05)"]
    # The curves are drawn: the canvas has coloured pixels.
    inked = browser.execute_script(
        "const c = document.getElementById('loss');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) {"
        "  if (d[i + 3] > 0 && (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2])) n++; }"
        "return n;")
    assert inked > 100
    downloads = [e.get_attribute("download") for e in css(browser, "#result a[download]")]
    assert {"featviz-0.png", "featviz-1.png", "featviz-images.npy",
            "featviz-result.json"} <= set(downloads)
    shoot(browser, "render-done")
    # The permalink: opened again, the same picture comes from the cache.
    first = css(browser, "#grid img.result-image")[0].get_attribute("src")
    browser.refresh()
    until(browser, state(browser, "#render-status", "done"), "the cached render")
    assert css(browser, "#grid img.result-image")[0].get_attribute("src") == first
    assert "from the result cache" in css(browser, "#result")[0].text
    assert errors(browser) == []


def test_a_unit_page_shows_top_examples(server, browser):
    visit(browser, server.url + "#/unit/mnist_classifier/conv2/3?steps=48")
    until(browser, state(browser, "#examples", "done"), "the top examples")
    assert len(css(browser, "#examples figure.example")) == 8
    assert len(css(browser, "#examples img.overlay")) == 8
    until(browser, state(browser, "#render-status", "done"), "the unit's pictures")
    assert len(css(browser, "#pictures #grid img")) == 4
    until(browser, state(browser, "#attribution", "done"), "the attribution")
    assert len(css(browser, "#attribution tr")) == 11
    # How far to believe the pictures: the label, a path-similarity badge
    # under each picture, and the accentuated top example.
    until(browser, state(browser, "#label", "done"), "the unit's label")
    assert "of its top" in css(browser, "#label-text")[0].text
    assert "class selectivity" in css(browser, "#label")[0].text
    until(browser, lambda d: len(css(d, "#pictures .trust-badge")) == 4, "the badges")
    badges = [e.text for e in css(browser, "#pictures .trust-badge")]
    assert all(re.fullmatch(r"[01]\.\d\d (reliable|flagged)", b) for b in badges), badges
    assert "conv2" in css(browser, "#pictures .trust-badge")[0].get_attribute("title")
    assert css(browser, "#pictures .trust-note")
    until(browser, state(browser, "#accentuation", "done"), "the accentuated example")
    assert browser.execute_script(
        "const i = document.getElementById('accentuated'); return i.complete && i.naturalWidth") > 0
    assert re.search(r"-?\d+\.\d+ on the seed → -?\d+\.\d+ on the picture.* · pixel distance \d\.\d+",
                     css(browser, "#accentuation-outcome")[0].text)
    assert len(css(browser, "#accentuation img")) == 2  # the seed and the picture
    browser.set_window_size(1440, 1900)
    shoot(browser, "unit")
    browser.set_window_size(1440, 1000)
    # One click to the circuit of the class the unit feeds most.
    css(browser, "#attribution a")[0].click()
    until(browser, lambda d: len(css(d, "#detectors figure")) == 6, "the class circuit")
    until(browser, lambda d: all(e.get_attribute("data-state") == "done"
                                 for e in css(d, ".job-picture")), "the circuit's pictures")
    assert len(css(browser, ".job-picture img")) == 7  # the class and six units
    shoot(browser, "circuit")


def test_a_unit_page_without_a_fitting_dataset_shows_its_pictures_alone(server, browser):
    # odd_names takes 16 x 16 images: the MNIST set fits none of its units.
    visit(browser, server.url + "#/unit/odd_names/features.block-1/0?steps=8")
    until(browser, state(browser, "#view", "ready"), "the unit page")
    assert state(browser, "#render-status", "done")(browser)
    assert len(css(browser, "#pictures #grid img")) == 4
    assert css(browser, "#pictures .trust-badge") == []
    assert "No path-similarity check" in css(browser, "#pictures .trust-note")[0].text
    assert css(browser, "#label")[0].get_attribute("data-state") == "none"
    shoot(browser, "unit-no-dataset")
    assert errors(browser) == []


def test_a_layer_sheet_renders_every_unit_and_the_second_visit_is_cached(server, browser):
    sheet = server.url + "#/model/mnist_classifier/layer/conv1?steps=16"
    visit(browser, sheet)
    until(browser, lambda d: len(css(d, "#sheet .unit")) == 16, "the sheet")
    until(browser, lambda d: all(e.get_attribute("data-state") in ("done", "cached")
                                 for e in css(d, "#sheet .unit")), "every unit")
    assert len(css(browser, "#sheet .unit img")) == 16
    shoot(browser, "layer-sheet")
    visit(browser, sheet)
    until(browser, lambda d: len(css(d, "#sheet .unit img")) == 16, "the sheet again")
    assert {e.get_attribute("data-state") for e in css(browser, "#sheet .unit")} == {"cached"}


def test_layer_paths_that_need_quotes_work_in_the_tree_sheet_and_editor(server, browser):
    visit(browser, server.url + "#/model/odd_names")
    until(browser, state(browser, "#view", "ready"), "the model page")
    nested = css(browser, '#layers li[data-layer="features"] > ul > li[data-layer="features.block-1"]')
    assert nested and "[1, 8, 16, 16] · 8 units" in nested[0].text
    assert css(browser, '#layers li[data-layer="rarely"] .untappable')
    visit(browser, server.url + "#/model/odd_names/layer/features.block-1?steps=8")
    until(browser, lambda d: len(css(d, "#sheet .unit img")) == 8, "the sheet of a dashed layer")
    visit(browser, server.url + "#/editor?model=odd_names&objective=")
    until(browser, lambda d: css(d, "#objective"), "the editor")
    box = css(browser, "#objective")[0]
    box.clear()
    box.send_keys("channel(features.block-")
    until(browser, lambda d: css(d, "#completions .completion"), "a completion")
    css(browser, "#completions .completion")[0].click()
    box.send_keys(", 2)")
    until(browser, state(browser, "#check", "ok"), "the quoted path to pass")
    assert box.get_attribute("value") == "channel('features.block-1', 2)"


def test_presets_fill_the_objective_and_the_editor_links_the_render(server, browser):
    visit(browser, server.url + "#/editor?model=mnist_classifier&objective=")
    until(browser, lambda d: css(d, '.preset[data-preset="joint"]'), "the presets")
    css(browser, '.preset[data-preset="diversity"]')[0].click()
    box = css(browser, "#objective")[0]
    assert box.get_attribute("value") == "channel(conv1, 0) + 0.5 * diversity(conv1)"
    assert css(browser, "#opt-batch")[0].get_attribute("value") == "4"
    until(browser, state(browser, "#check", "ok"), "the preset to pass")
    link = css(browser, "#render")[0].get_attribute("href")
    assert "#/render?model=mnist_classifier&objective=" in link and "batch=4" in link


def test_the_npy_download_holds_the_images(server, browser):
    import numpy as np
    visit(browser, server.url + "#/render?model=mnist_classifier&objective=logit(4)"
          "&steps=8&batch=3&seed=2")
    until(browser, state(browser, "#render-status", "done"), "the render")
    target = OUT / "downloads" / "featviz-images.npy"
    target.unlink(missing_ok=True)
    css(browser, 'a[download="featviz-images.npy"]')[0].click()
    until(browser, lambda d: target.is_file() and target.stat().st_size == 128 + 3 * 28 * 28 * 4,
          "the downloaded file")
    images = np.load(target)
    assert images.shape == (3, 1, 28, 28) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize("width,height", [(1280, 760), (2560, 1300)])
def test_pages_fit_a_laptop_and_a_wide_monitor(server, browser, width, height):
    browser.set_window_size(width, height)
    try:
        for name, route in (("render", "#/render?model=mnist_classifier&objective="
                             "channel(conv2%2C%203)%20-%200.05%20*%20tv()&steps=96&every=8"
                             "&batch=2&seed=11"),
                            ("unit", "#/unit/mnist_classifier/conv2/3?steps=48"),
                            ("editor", "#/editor?model=mnist_classifier"),
                            ("jobs", "#/jobs")):
            visit(browser, server.url + route)
            until(browser, state(browser, "#view", "ready"), route)
            if name in ("render", "unit"):
                until(browser, state(browser, "#render-status", "done"), "the render")
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, (route, overflow)
            shoot(browser, f"{name}-{width}")
    finally:
        browser.set_window_size(1440, 1000)


def test_a_job_is_cancelled_from_the_render_page(server, browser):
    visit(browser, server.url + "#/render?model=mnist_classifier&objective=" +
          urllib.parse.quote("channel(conv2, 5) - 0.05 * tv()") +
          "&steps=10000&batch=4&every=25&seed=3")
    until(browser, lambda d: css(d, "#render-job[data-job]"), "the job's id")
    # 10000 steps: still running after a few frames (the README's picture).
    until(browser, lambda d: number(d, "#frames", "count") >= 4, "four preview frames")
    shoot(browser, "render-in-progress")
    job = css(browser, "#render-job")[0].get_attribute("data-job")
    click(browser, "#cancel", "the cancel button")
    until(browser, state(browser, "#render-status", "cancelled"), "the page to say so")
    status, reply = post(server.url, "Visualizer/WatchJob", {"id": job})
    status, record = post(server.url, "Visualizer/GetJob", {"id": job})
    assert record["state"] == "JOB_STATE_CANCELLED"


def test_a_job_is_cancelled_from_the_jobs_page(server, browser):
    status, job = post(server.url, "Visualizer/SubmitJob", {"request": {
        "model": "mnist_classifier", "objectiveText": "channel(conv1, 4)",
        "image": {"batch": "8"}, "optimizer": {"steps": str(ENDLESS_STEPS)}}})
    assert status == 200
    visit(browser, server.url + "#/jobs")
    row = f'#job-table tr[data-job="{job["id"]}"]'
    until(browser, lambda d: css(d, row + " .cancel-job"), "the job's cancel button")
    shoot(browser, "jobs")
    click(browser, row + " .cancel-job", "the job's cancel button")
    until(browser, state(browser, row, "cancelled"), "the row to say cancelled")
    status, record = post(server.url, "Visualizer/GetJob", {"id": job["id"]})
    assert record["state"] == "JOB_STATE_CANCELLED"
    assert "submitted" in css(browser, "#stats")[0].text


def test_a_job_page_shows_its_state_and_result(server, browser):
    status, job = post(server.url, "Visualizer/SubmitJob", {"request": {
        "model": "mnist_classifier", "objectiveText": "logit(6)", "seed": "4",
        "image": {"batch": "2"}, "optimizer": {"steps": "32"}}})
    assert status == 200
    visit(browser, server.url + "#/job/" + job["id"])
    until(browser, state(browser, "#job-state", "succeeded"), "the job's end")
    until(browser, lambda d: len(css(d, "#grid img.result-image")) == 2, "its images")
    assert "32 / 32 steps" in css(browser, "#job-state")[0].text
    assert not css(browser, "#cancel")[0].is_enabled()


def test_a_server_with_tokens_refuses_the_page_without_one(token_server, browser):
    visit(browser, token_server.url + "#/models")
    until(browser, state(browser, "#view", "error"), "the refusal")
    view = css(browser, "#view")[0]
    assert view.get_attribute("data-http-status") == "401"
    assert "UNAUTHENTICATED" in view.text
    shoot(browser, "tokens-refused")
    css(browser, "#token")[0].send_keys(TOKEN)
    css(browser, "#token-save")[0].click()
    until(browser, lambda d: len(css(d, "#models .model-row")) == 3, "the models with a token")
    # The token is in sessionStorage, never in the address.
    assert TOKEN not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('featviz.token')") == TOKEN
    browser.execute_script("sessionStorage.clear()")


def test_a_hostile_class_name_is_shown_as_text(server, browser):
    for route in ("#/models", "#/model/hostile_names"):
        visit(browser, server.url + route)
        until(browser, state(browser, "#view", "ready"), route)
        names = [e.text for e in css(browser, ".class-name")]
        assert HOSTILE in names, route
        assert css(browser, 'img[src="x"]') == [], route
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text
    assert HOSTILE in css(browser, ".description")[0].text
    shoot(browser, "hostile-class")
    # In a render's class probabilities too.
    visit(browser, server.url + "#/render?model=hostile_names&objective=logit(0)&steps=64&seed=1")
    until(browser, state(browser, "#render-status", "done"), "the render")
    assert HOSTILE in [e.text for e in css(browser, "#grid .class-name")]
    assert css(browser, 'img[src="x"]') == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    # On a unit page, with its label (named by the dataset's classes) and
    # its attribution table (by the model's).
    visit(browser, server.url + "#/unit/hostile_names/conv2/3?steps=8")
    until(browser, state(browser, "#view", "ready"), "the unit page")
    assert "of its top" in css(browser, "#label-text")[0].text
    assert HOSTILE in [e.text for e in css(browser, "#attribution .class-name")]
    assert css(browser, 'img[src="x"]') == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text


def test_a_model_is_uploaded_from_the_page(server, browser):
    # Last: it adds a model to the module's server.
    visit(browser, server.url + "#/models")
    until(browser, lambda d: css(d, "#upload-file"), "the upload form")
    css(browser, "#upload-file")[0].send_keys(str(server.models / "mnist_classifier.pt"))
    css(browser, "#upload-card")[0].send_keys(str(server.models / "mnist_classifier.card.json"))
    css(browser, "#upload-name")[0].send_keys("page_upload")
    css(browser, ".upload button[type=submit]")[0].click()
    until(browser, lambda d: "now serving page_upload" in css(d, "#upload-result")[0].text,
          "the upload's answer")
    shoot(browser, "upload")
    status, model = post(server.url, "Visualizer/GetModel", {"name": "page_upload"})
    assert status == 200 and model["path"] == "page_upload/1/model.pt"


def test_the_studio_never_parses_markup_from_strings():
    """Names go in as text nodes: no API of the page's sources parses HTML
    or runs strings as code, and nothing is fetched from another origin."""
    sources = list((REPO / "studio").rglob("*.js")) + [REPO / "studio/index.html"]
    assert len(sources) >= 10
    for path in sources:
        text = path.read_text()
        for needle in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                       "eval(", "new Function", "http://", "https://"):
            assert needle not in text, f"{path.name} uses {needle}"
