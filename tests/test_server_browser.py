"""The leaderboard in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by
selenium registers a team, logs out and in, uploads a zip through the form and finds its row on the
leaderboard, with no JavaScript error in the console."""

from __future__ import annotations

import os
import shutil

import pytest

from server_helpers import require_server_extra, running, submission_zip

pytestmark = pytest.mark.slow


def _driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        reason = "selenium is not installed (pip install -e '.[server-test]')"
    else:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        chromedriver = shutil.which("chromedriver")
        if chromium and chromedriver:
            opts = webdriver.ChromeOptions()
            opts.binary_location = chromium
            for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                        "--window-size=1280,900"):
                opts.add_argument(arg)
            opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
            return webdriver.Chrome(service=Service(chromedriver), options=opts)
        reason = "chromium and chromedriver not found (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason + "; CI=true requires them")
    pytest.skip(reason)


def test_register_login_upload_and_see_the_row(tmp_path):
    require_server_extra()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    zip_path = tmp_path / "predictions.zip"
    zip_path.write_bytes(submission_zip(seed=11))
    with running(tmp_path, "--bootstrap", "50") as srv:
        driver = _driver()
        try:
            def fill(form_id: str, **values: str) -> None:
                form = driver.find_element(By.ID, form_id)
                for name, value in values.items():
                    form.find_element(By.NAME, name).send_keys(value)
                form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

            def wait_for(fragment: str) -> None:
                WebDriverWait(driver, 60).until(ec.url_contains(fragment))

            driver.get(srv.url + "/register")
            fill("register", team="Browser Team", email="browser@example.org", password="a long password")
            wait_for("/me")
            driver.find_element(By.CSS_SELECTOR, "header form button").click()  # log out (a CSRF form)
            WebDriverWait(driver, 60).until(ec.url_to_be(srv.url + "/"))
            assert "log in" in driver.find_element(By.TAG_NAME, "header").text
            driver.get(srv.url + "/login")
            fill("login", email="browser@example.org", password="a long password")
            wait_for("/me")
            assert "Browser Team" in driver.page_source
            form = driver.find_element(By.ID, "upload")
            form.find_element(By.NAME, "model_name").send_keys("<script>alert(1)</script> net")
            form.find_element(By.NAME, "file").send_keys(str(zip_path))
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait_for("/submissions/")
            assert len(driver.find_elements(By.CSS_SELECTOR, "#datasets > tbody > tr")) == 3
            driver.get(srv.url + "/?size=28&metric=auc")
            rows = driver.find_elements(By.CSS_SELECTOR, "#leaderboard > tbody > tr")
            assert any("<script>alert(1)</script> net" in r.text and "Browser Team" in r.text for r in rows)
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
        finally:
            driver.quit()
