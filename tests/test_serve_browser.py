"""The run's web page in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven by Selenium.

SERVE_SCREENSHOT=PATH also keeps the screenshot at PATH.
"""

import os
import shutil
import time

import pytest
from PIL import Image

from tests.test_serve import served, slow_rows  # noqa: F401 (fixture)
from tests.tiny_run import make_tiny_run, one_thread  # noqa: F401 (autouse)

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.slow,  # a browser starts: seconds
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                 "(apt-get install chromium chromium-driver; .ci/run installs them)")]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path given, Selenium downloads nothing
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(condition, seconds=60, every=0.02):
    """Poll condition() until it is truthy; returns its value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def panel_state(driver, panel: str) -> dict:
    return driver.execute_script(
        "const p = document.getElementById(arguments[0]), img = p.querySelector('img.result');"
        "return {state: p.dataset.state, rows: p.querySelector('progress').dataset.rows,"
        " text: p.querySelector('.progress-text').textContent, error: p.querySelector('.error').textContent,"
        " width: img.hidden ? 0 : img.naturalWidth, png: p.querySelector('a.png').href.slice(0, 22)};", panel)


def draw_and_watch(driver, panel: str) -> list:
    """Click the panel's draw button and record its state until the draw is done."""
    driver.find_element("css selector", f"#{panel} button.draw").click()
    seen = [panel_state(driver, panel)]
    while seen[-1]["state"] != "done":
        assert not seen[-1]["error"], seen[-1]["error"]
        assert len(seen) < 3000, seen[-1]
        time.sleep(0.02)
        seen.append(panel_state(driver, panel))
    return seen


def set_field(driver, selector: str, value: str) -> None:
    field = driver.find_element("css selector", selector)
    field.clear()
    field.send_keys(value)


def test_the_page_draws_row_by_row_completes_an_image_and_says_what_is_wrong(browser, tmp_path, slow_rows):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1", class_conditional=True)
    with served(run) as server:
        browser.get(server.url)
        wait_for(lambda: str(run) in browser.find_element("id", "run-name").text)
        set_field(browser, "#samples [name=n]", "12")
        seen = draw_and_watch(browser, "samples")
        rows = [int(s["rows"]) for s in seen if s["rows"]]
        assert len(set(rows)) >= 3 and rows == sorted(rows) and rows[-1] == 8  # the progress advanced, row by row
        assert any(s["width"] and s["state"] == "drawing" for s in seen)  # the grid showed before the draw ended
        assert seen[-1]["width"] > 0 and seen[-1]["png"] == "data:image/png;base64," and "done" in seen[-1]["text"]

        browser.find_element("css selector", "nav [data-tab=completion]").click()
        set_field(browser, "#completion [name=n_completions]", "4")
        assert draw_and_watch(browser, "completion")[-1]["width"] == (2 + 4) * 34 + 2

        browser.find_element("css selector", "nav [data-tab=samples]").click()
        set_field(browser, "#samples [name=n]", "0")
        browser.find_element("css selector", "#samples button.draw").click()
        assert "--n must be at least 1" in wait_for(lambda: panel_state(browser, "samples")["error"])

        browser.find_element("css selector", "nav [data-tab=run]").click()
        wait_for(lambda: browser.execute_script("return document.querySelector('img.recon').naturalWidth > 0"))
        browser.find_element("css selector", "nav [data-tab=samples]").click()
        set_field(browser, "#samples [name=n]", "16")
        draw_and_watch(browser, "samples")
        shot = tmp_path / "page.png"
        assert browser.save_screenshot(str(shot))
    picture = Image.open(shot).convert("RGB")
    assert picture.width >= 1000 and len(picture.getcolors(1 << 24)) > 100  # not blank: text, controls and samples
    if os.environ.get("SERVE_SCREENSHOT"):
        picture.save(os.environ["SERVE_SCREENSHOT"])
