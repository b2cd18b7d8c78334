"""The dashboard page in a real headless Chromium (selenium + Debian's chromium-driver):
it loads, sends a message, shows the reply, and shows the weight version rising while the
learner is attached. Skipped where no browser is installed; CI installs one (.ci/run)."""

import shutil
import tempfile

import httpx
import pytest

from tests.chat.conftest import serve_runtime, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium + chromedriver on this machine")]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="synclearn-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_chats_and_shows_the_learner_learning(runtime, browser):
    from selenium.webdriver.common.by import By

    with serve_runtime(runtime) as srv:
        browser.get(srv.url + "/")
        assert "synclearn" in browser.title
        text = lambda id_: browser.find_element(By.ID, id_).text  # noqa: E731
        wait_until(lambda: text("weight-version") == "0", 30, what="the status shown")
        browser.find_element(By.ID, "prompt").send_keys("Remember: Ada's pet is a parrot.")
        browser.find_element(By.ID, "send").click()
        reply = wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, ".msg.reply"), 60, what="the reply")
        sid = text("session-id")
        rows = runtime.log.by_session(sid)
        assert [r["prompt"] for r in rows] == ["Remember: Ada's pet is a parrot."]
        # The reply's own text node, not WebElement.text: the tiny model's reply can hold tabs and
        # control characters that the browser's "visible text" rewrites.
        shown = browser.execute_script("return arguments[0].firstChild.textContent", reply[0])
        assert shown.strip() == rows[0]["response"].strip()
        r = httpx.post(srv.url + "/v1/learner/attach", json={"batch_size": 2, "new_repeats": 1, "idle_replay": True,
                                                             "poll_s": 0.05, "max_defer_s": 0.1})
        assert r.status_code == 200, r.text
        try:
            first = wait_until(lambda: int(text("weight-version") or 0) if text("weight-version").isdigit() and
                               int(text("weight-version")) >= 1 else None, 60, what="a learner step on the page")
            wait_until(lambda: text("weight-version").isdigit() and int(text("weight-version")) > first, 60,
                       what="the weight version rising")
            assert text("attached") == "true"
        finally:
            httpx.post(srv.url + "/v1/learner/detach", timeout=60)
        browser.find_element(By.ID, "forget-conversation").click()
        wait_until(lambda: runtime.log.by_session(sid) == [], 120, what="the conversation forgotten")
        wait_until(lambda: "session by session" in text("forgets"), 30, what="the forget listed")
