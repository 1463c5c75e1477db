"""The demo page in a real browser: headless Chromium driven by Selenium, as a person uses it.

One server (`python -m radblur_jax.demo --random-init tiny`) and one browser for the module.
A photo from skimage's data is uploaded and restored in sliding windows (the download equals
the deblur CLI's output for the same photo and options, bit for bit; a screenshot lands in the
test's tmp_path); then a corrupt file (a message, no traceback), then a 16-bit grayscale photo
(the server kept serving and the download keeps the mode and bit depth).

Skipped with the reason when Chromium, chromedriver, Selenium or Gradio are absent
(`pip install -e '.[demo]'`; .ci/run installs Debian's chromium and chromium-driver).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest
from conftest import free_port
from skimage import data

pytestmark = pytest.mark.slow

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                None)
CHROMEDRIVER = shutil.which("chromedriver")
# Smaller than chelsea (451x300): page and CLI both restore it through the sliding-window path
# (2 x 3 windows, each picking its own exit depth), the path large photos take.
TILE = "256"
TIMEOUT = 600  # s: the first restore compiles the model (tens of seconds on a busy 2-core VM)


def _requirements() -> str:
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "chromium/chromedriver not installed (apt-get install chromium chromium-driver)"
    for module in ("selenium", "gradio"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} not installed (pip install -e '.[demo]')"
    return ""


def _cli_env(tmp: str) -> dict:
    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": tmp}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    d = tmp_path_factory.mktemp("photos")
    chelsea = data.chelsea()  # (300, 451, 3)
    cv2.imwrite(str(d / "chelsea.png"), cv2.cvtColor(chelsea, cv2.COLOR_RGB2BGR))
    gray16 = cv2.cvtColor(chelsea, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    cv2.imwrite(str(d / "chelsea_gray16.png"), gray16)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    return d


@pytest.fixture(scope="module")
def cli_output(photos, tmp_path_factory):
    """The deblur CLI's output for chelsea.png, started now, waited for when first used."""
    out = tmp_path_factory.mktemp("cli_out")
    proc = subprocess.Popen(
        [sys.executable, "-m", "radblur_jax.deblur", "--random-init", "tiny", "--input",
         str(photos / "chelsea.png"), "--output", str(out), "--tile", TILE, "--adaptive",
         "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait() -> bytes:
        log, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, log[-3000:]
        return (out / "chelsea.png").read_bytes()
    yield wait
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory, cli_output):
    tmp = tmp_path_factory.mktemp("server")
    port = free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "radblur_jax.demo", "--random-init", "tiny",
                             "--port", str(port), "--tile", TILE],
                            stdout=log, stderr=subprocess.STDOUT, env=_cli_env(str(tmp)))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "demo server did not answer"
        time.sleep(0.5)
    yield url, tmp / "server.log"
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--window-size=1280,1100",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.get(server[0])
    yield driver
    driver.quit()


def _upload(driver, path) -> str:
    """Clears the upload box if it holds a file, uploads `path`, waits for the new status."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, TIMEOUT, ignored_exceptions=(StaleElementReferenceException,))
    for button in driver.find_elements(By.CSS_SELECTOR, "#upload button[aria-label='Clear']"):
        button.click()
    field = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR,
                                                       "#upload input[type=file]")))
    # The message itself, not the status box: while a request runs, Gradio overlays the box
    # with its progress ("processing | 1.2s", "0.0s"), which blinks on and off.
    message = lambda d: d.find_element(By.CSS_SELECTOR, "#status [data-testid=markdown]").text
    before = message(driver)
    field.send_keys(str(path))

    def new_message(d) -> str | bool:
        text = message(d)
        return text not in ("", before) and text
    return wait.until(new_message)


def _download(driver) -> tuple[str, bytes]:
    """The name and bytes of the file the page offers for download."""
    from selenium.webdriver.common.by import By

    link = driver.find_element(By.CSS_SELECTOR, "#download a.download-link")
    with urllib.request.urlopen(link.get_attribute("href"), timeout=60) as r:
        return link.get_attribute("download"), r.read()


def _image_sizes(driver, selector: str) -> list[tuple[int, int]]:
    """`(naturalWidth, naturalHeight)` of the loaded images under `selector`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    find = lambda d: d.find_elements(By.CSS_SELECTOR, f"{selector} img")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    WebDriverWait(driver, 60).until(
        lambda d: find(d) and all(d.execute_script(loaded, img) for img in find(d)))
    return [(img.get_property("naturalWidth"), img.get_property("naturalHeight"))
            for img in find(driver)]


def test_page_restores_rejects_and_keeps_serving(browser, server, photos, cli_output, tmp_path):
    status = _upload(browser, photos / "chelsea.png")
    assert "451 x 300 px restored by" in status and "sub-decoder" in status, status
    assert set(_image_sizes(browser, "#compare")) == {(451, 300)}
    assert _image_sizes(browser, "#depth") == [(451, 300)]
    name, png = _download(browser)
    assert name == "chelsea_restored.png"
    restored = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert restored.shape == (300, 451, 3) and restored.dtype == np.uint8
    shot = tmp_path / "demo_chelsea.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    # the page's download is the CLI's output for the same photo and checkpoint, bit for bit
    cli = cli_output()
    np.testing.assert_array_equal(
        restored, cv2.imdecode(np.frombuffer(cli, np.uint8), cv2.IMREAD_UNCHANGED))
    assert png == cli

    status = _upload(browser, photos / "broken.png")
    assert status.startswith("Cannot restore") and "broken.png" in status, status
    assert "cannot read image header" in status, status
    assert "Traceback" not in browser.page_source
    assert not browser.find_elements("css selector", "#download a.download-link")
    assert browser.save_screenshot(str(tmp_path / "demo_broken.png"))

    status = _upload(browser, photos / "chelsea_gray16.png")  # the server still serves
    assert "451 x 300 px restored by" in status and "16-bit" in status, status
    assert "Grayscale" in status and "compiling" not in status  # same size: no new compile
    name, png = _download(browser)
    gray = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert name == "chelsea_gray16_restored.png"
    assert gray.shape == (300, 451) and gray.dtype == np.uint16
    assert "Traceback" not in server[1].read_text()
