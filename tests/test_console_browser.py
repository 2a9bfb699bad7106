"""The console in a real browser: Debian's headless Chromium driven by selenium (through Debian's chromedriver:
nothing is downloaded), against a real agent with a real broker. Each page is saved as a screenshot under
tests/screenshots/ (the README shows one)."""

from __future__ import annotations

import shutil
import tempfile
import uuid

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from calibration.db import open_database
from calibration.store import ProfileStore

from .conftest import ROOT
from .rig import build_stream, make_rig, wait_until, write_stream
from .test_agent_web_app import Client, console_url

SHOTS = ROOT / "tests" / "screenshots"


@pytest.fixture
def browser():
    chromium, driver_exe = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_exe, "Chromium is missing: `make test` installs Debian's chromium and chromium-driver"
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_exe), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def agent(tmp_path, tiny_model_dir, calibrated_db, broker, collector_factory):
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    store = ProfileStore(open_database(rig.db))
    store.save(store.active("fabric").replace(calibration_id=uuid.uuid4().hex, line="pcb"))
    video = write_stream(tmp_path / "line.avi", build_stream([("normal", 10), ("defect", 5), ("normal", 12)]))
    col = collector_factory(broker.port)
    rig.start(rig.config(video, camera={"loop": True, "realtime": True}, web={"enabled": True, "port": 0}))
    try:
        yield console_url(rig), col
    finally:
        rig.stop()


def _wait(driver, condition, timeout: float = 60):
    return WebDriverWait(driver, timeout).until(condition)


def _shot(driver, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_an_operator_watches_the_line_switches_it_and_marks_an_alert(browser, agent):
    url, col = agent
    browser.get(url + "/#/cameras")
    card = _wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, 'section.camera[data-name="cam1"]')))
    assert "cam1" in card.text and "fabric" in card.text
    _wait(browser, lambda d: d.execute_script("return document.querySelector('img[data-live]').naturalWidth") > 0)
    _wait(browser, lambda d: d.execute_script("return document.querySelector('svg[data-scores] path') !== null"))
    _shot(browser, "cameras")

    # A line switch from the page: the camera judges pcb, and MQTT's line/state says so.
    Select(card.find_element(By.CSS_SELECTOR, "select.line-choice")).select_by_visible_text("pcb")
    card.find_element(By.CSS_SELECTOR, "button.switch").click()
    col.wait_for(lambda ms: any(m.topic.endswith("cam1/line/state") and b'"line": "pcb"' in m.payload for m in ms))
    _wait(browser, lambda d: "pcb" in d.find_element(By.CSS_SELECTOR, '[data-f="line"]').text)

    # The defect episode of the recording appears as an alert with its heatmap.
    client = Client(url)
    wait_until(lambda: client.get("/api/alerts")[1], 120, "an alert")
    browser.get(url + "/#/alerts")
    row = _wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, "tr[data-id]")))
    _wait(browser, lambda d: d.execute_script("return document.querySelector('tr[data-id] img').naturalWidth") > 0)
    _shot(browser, "alerts")
    # A live refresh (a new or updated alert) keeps the rows a person is looking at: same element, same image.
    refresh = "return renderAlerts(new URLSearchParams()).then(() => arguments[0].isConnected)"
    assert browser.execute_script(refresh, row)
    row.click()
    _wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, "#event-scores path")))
    _wait(browser, lambda d: d.execute_script("return document.querySelector('.detail img').naturalWidth") > 0)
    browser.find_element(By.CSS_SELECTOR, 'button[data-label="false_alarm"]').click()
    _wait(browser, lambda d: "false alarm" in d.find_element(By.ID, "verdict").text)
    _shot(browser, "alert")

    browser.get(url + "/#/lines")
    _wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, 'svg[data-hist="fabric"] rect')))
    _shot(browser, "lines")
    browser.get(url + "/#/health")
    _wait(browser, lambda d: "connected" in d.find_element(By.ID, "health").text)
    _shot(browser, "health")


def test_a_login_is_asked_for_and_a_viewer_sees_no_controls(browser, tmp_path, tiny_model_dir, calibrated_db, broker):
    (tmp_path / "op").write_text("act-now\n")
    (tmp_path / "view").write_text("just-look\n")
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    video = write_stream(tmp_path / "line.avi", build_stream([("normal", 10)]))
    web = {"enabled": True, "port": 0, "operator_password_file": str(tmp_path / "op")}
    rig.start(rig.config(video, camera={"loop": True}, web=web | {"viewer_password_file": str(tmp_path / "view")}))
    try:
        browser.get(console_url(rig) + "/")
        form = _wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, ".login form")))
        _shot(browser, "login")
        Select(form.find_element(By.NAME, "role")).select_by_visible_text("viewer")
        form.find_element(By.NAME, "password").send_keys("just-look")
        form.find_element(By.TAG_NAME, "button").click()
        card = _wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, "section.camera")))
        assert card.find_elements(By.CSS_SELECTOR, "button.switch") == []  # a viewer looks, and cannot act
        assert browser.find_element(By.ID, "who").text == "viewer"
    finally:
        rig.stop()
