#!/usr/bin/python3
"""Drives the issuer's self-service page in Debian's headless Chromium, as an employee would:
sign in with the company account at the test OpenID Provider, paste a request, review, sign,
read the pass; optionally revoke one of "My passes" (with its confirmation).

Called by tests/cli/self_service.rs:
    self_service.py URL WORKDIR ARTIFACTS
WORKDIR holds username.txt and password.txt (files, never argv), and optionally request.txt
(requests to paste and sign, one per line, each from the start page), lifetime.txt (the lifetime to choose, seconds) and revoke.txt (a pass id
to revoke from "My passes") and revoke_device.txt (a device key to revoke from the admin list). Screenshots go to ARTIFACTS; the last stdout line is a JSON
summary that the Rust test checks: who the page says is signed in, the group and rule shown,
any error page's text, the subject the review showed, the pass, and what revoking showed.
"""
import json
import pathlib
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

url, work, artifacts = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])


def optional(name):
    path = work / name
    return path.read_text().strip() if path.exists() else None


username, password = optional("username.txt"), optional("password.txt")
request, lifetime, revoke = optional("request.txt"), optional("lifetime.txt"), optional("revoke.txt")
revoke_device = optional("revoke_device.txt")
tag = optional("tag.txt") or "self"

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1200,1100", f"--user-data-dir={work / 'profile'}"):
    opts.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.set_page_load_timeout(30)
wait = WebDriverWait(driver, 30)
result = {"error": None, "pages": []}
shots = [0]


def shot(name):
    shots[0] += 1
    driver.save_screenshot(str(artifacts / f"{tag}-{shots[0]}-{name}.png"))


def present(element_id):
    return driver.find_elements(By.ID, element_id)


def text(element_id):
    found = present(element_id)
    return found[0].text if found else None


def until_any(ids, seconds=30):
    """Waits for a page carrying one of `ids`; returns the first found."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            for i in ids:
                if present(i):
                    return i
        except StaleElementReferenceException:
            pass
        time.sleep(0.05)  # poll the page, bounded by the deadline
    raise TimeoutError(f"none of {ids} at {driver.current_url}")


try:
    driver.get(url + "/")
    driver.find_element(By.ID, "oidc-sign-in").click()
    # At the provider: its login page (or its error page).
    found = until_any(["username", "error"])
    result["pages"].append("idp-" + found)
    shot("idp")
    if found == "username":
        driver.find_element(By.ID, "username").send_keys(username)
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.ID, "sign-in").click()
        # Back at the service: its page once the session cookie is set (the "Signed in" page
        # refreshes to "/"), or the service's refusal.
        found = until_any(["request", "error"])
    result["pages"].append("service-" + found)
    shot("service")
    result["final_url"] = driver.current_url
    if found == "error":
        result["error"] = text("error")
        result["title"] = driver.find_element(By.TAG_NAME, "h1").text
    else:
        result["signed_in_as"] = driver.find_element(By.CSS_SELECTOR, ".who b").text
        result["identity"] = text("identity")
        result["group"] = text("group")
        result["rule"] = text("rule")
        result["admin_page"] = bool(present("recent"))
    results = []
    for n, one in enumerate((request or "").split()):
        if found != "request":
            break
        if n > 0:
            driver.get(url + "/")
            until_any(["request"])
        one_result = {"error": None}
        results.append(one_result)
        driver.execute_script("document.getElementById('request').value = arguments[0];", one)
        driver.find_element(By.ID, "review").click()
        seen = until_any(["facts", "error"])
        shot(f"review-{n}")
        if seen == "error":
            one_result["error"] = text("error")
            one_result["title"] = driver.find_element(By.TAG_NAME, "h1").text
            continue
        one_result["subject_shown"] = text("f-sub")
        one_result["lifetimes"] = [o.get_attribute("value") for o in
                                   driver.find_elements(By.CSS_SELECTOR, "#lifetime option")]
        if lifetime:
            Select(driver.find_element(By.ID, "lifetime")).select_by_value(lifetime)
        driver.find_element(By.ID, "sign").click()
        seen = until_any(["pass", "error"])
        shot(f"signed-{n}")
        if seen == "error":
            one_result["error"] = text("error")
            one_result["title"] = driver.find_element(By.TAG_NAME, "h1").text
        else:
            one_result["pass"] = driver.find_element(By.ID, "pass").get_attribute("value")
    result["results"] = results
    if revoke:
        driver.get(url + "/")
        until_any(["my-passes", "recent"])
        result["my_passes"] = [r.text for r in
                               driver.find_elements(By.CSS_SELECTOR, "#my-passes tbody tr")]
        driver.find_element(By.CSS_SELECTOR, f"button[data-jti='{revoke}']").click()
        until_any(["confirm-revoke", "error"])
        shot("confirm")
        result["confirm_page"] = driver.find_element(By.TAG_NAME, "main").text
        driver.find_element(By.ID, "confirm-revoke").click()
        until_any(["notice", "error"])
        shot("revoked")
        result["revoke_notice"] = text("notice")
        result["revoke_error"] = text("error")
    if revoke_device:
        driver.get(url + "/")
        until_any(["recent"])
        driver.find_element(By.CSS_SELECTOR, f"button[data-jkt='{revoke_device}']").click()
        until_any(["confirm-revoke", "error"])
        shot("confirm-device")
        result["device_confirm_page"] = driver.find_element(By.TAG_NAME, "main").text
        driver.find_element(By.ID, "confirm-revoke").click()
        until_any(["notice", "error"])
        shot("device-revoked")
        result["device_notice"] = text("notice")
        result["device_error"] = text("error")
except Exception as e:  # noqa: BLE001 - reported to the Rust test, which fails with it
    result["exception"] = f"{type(e).__name__}: {e}"
    try:
        shot("exception")
        result["final_url"] = driver.current_url
    except Exception:  # noqa: BLE001
        pass
finally:
    driver.quit()
print(json.dumps(result))
