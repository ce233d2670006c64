#!/usr/bin/python3
"""Drives the issuer's web page in Debian's headless Chromium, as an admin would.

Called by tests/cli/service.rs (web_page_in_headless_chromium_signs_copies_and_revokes):
    web_flow.py URL WORKDIR ARTIFACTS
WORKDIR holds request.txt and token.txt (the admin token: a file, never argv). Sign in, paste
the request, review it, choose a lifetime, sign, copy, download, then revoke from the
recent-issuances list. Screenshots go to ARTIFACTS; the last stdout line is a JSON summary
that the Rust test checks.
"""
import json
import pathlib
import sys
import urllib.parse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

url, work, artifacts = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
request = (work / "request.txt").read_text().strip()
token = (work / "token.txt").read_text().strip()

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1200,1100", f"--user-data-dir={work / 'profile'}"):
    opts.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
wait = WebDriverWait(driver, 30)
result = {}
try:
    driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    driver.get(url + "/")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    wait.until(lambda d: d.find_elements(By.ID, "request"))

    # Paste the request (as a person would with Ctrl-V: set at once, not typed key by key).
    driver.execute_script("document.getElementById('request').value = arguments[0];", request)
    driver.find_element(By.ID, "review").click()
    wait.until(lambda d: d.find_elements(By.ID, "facts"))
    result["subject_shown"] = driver.find_element(By.ID, "f-sub").text
    result["kind_shown"] = driver.find_element(By.ID, "f-kind").text
    Select(driver.find_element(By.ID, "lifetime")).select_by_value("86400")
    driver.save_screenshot(str(artifacts / "web-1-review.png"))

    driver.find_element(By.ID, "sign").click()
    wait.until(lambda d: d.find_elements(By.ID, "pass"))
    result["pass"] = driver.find_element(By.ID, "pass").get_attribute("value")
    href = driver.find_element(By.ID, "download").get_attribute("href")
    prefix = "data:text/plain;charset=utf-8,"
    result["download"] = urllib.parse.unquote(href[len(prefix):]) if href.startswith(prefix) else href
    result["qr_svg"] = len(driver.find_elements(By.CSS_SELECTOR, "#qr svg")) == 1
    driver.find_element(By.ID, "copy").click()
    wait.until(lambda d: d.find_element(By.ID, "copy").text == "Copied")
    result["copy_button"] = driver.find_element(By.ID, "copy").text
    result["clipboard"] = driver.execute_async_script(
        "const done = arguments[0];"
        "navigator.clipboard.readText().then(done, e => done('error: ' + e));")
    driver.save_screenshot(str(artifacts / "web-2-pass.png"))

    driver.get(url + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[data-jti]"))
    driver.find_element(By.CSS_SELECTOR, "button[data-jti]").click()
    wait.until(lambda d: d.find_elements(By.ID, "notice"))
    result["revoked_notice"] = "Revoked pass" in driver.find_element(By.ID, "notice").text
    result["revoked_tag"] = len(driver.find_elements(By.CSS_SELECTOR, "#recent .tag.revoked")) == 1
    driver.save_screenshot(str(artifacts / "web-3-revoked.png"))
finally:
    driver.quit()
print(json.dumps(result))
