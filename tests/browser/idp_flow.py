#!/usr/bin/python3
"""Signs in at the test OpenID Provider (tests/oidc/provider.mjs) in Debian's headless Chromium,
as an employee would.

Called by tests/cli/idp.rs:
    idp_flow.py device VERIFICATION_URI WORKDIR ARTIFACTS
        opens the device verification page, types the user code (WORKDIR/user_code.txt), signs
        in and confirms the device, until the provider's success page;
    idp_flow.py device-abort VERIFICATION_URI WORKDIR ARTIFACTS
        the same up to the confirmation page, where it presses Abort (the person turns the
        device sign-in down), until the provider's error;
    idp_flow.py code AUTHORIZATION_URL WORKDIR ARTIFACTS
        opens an authorization request, signs in (and approves, when the provider asks), until
        the browser reaches the redirect URI (WORKDIR/redirect_uri.txt).
WORKDIR also holds username.txt and password.txt (files, never argv). Every page is driven by
the element ids that tests/oidc/README.md documents. Screenshots go to ARTIFACTS; the last
stdout line is a JSON summary that the Rust test checks: the pages seen in order, the final URL,
and any error the provider showed.
"""
import json
import pathlib
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

mode, url = sys.argv[1], sys.argv[2]
work, artifacts = pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
username = (work / "username.txt").read_text().strip()
password = (work / "password.txt").read_text().strip()
device = mode in ("device", "device-abort")
user_code = (work / "user_code.txt").read_text().strip() if device else None
redirect = (work / "redirect_uri.txt").read_text().strip() if mode == "code" else None
if mode not in ("device", "device-abort", "code"):
    sys.exit(f"unknown mode {mode}")

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1200,1100", f"--user-data-dir={work / 'profile'}"):
    opts.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.set_page_load_timeout(30)
result = {"pages": [], "final_url": None, "error": None, "done": False}


def present(element_id):
    return driver.find_elements(By.ID, element_id)


def shot(name):
    driver.save_screenshot(str(artifacts / f"idp-{mode}-{len(result['pages'])}-{name}.png"))


state = {"last": None}


def act(here):
    """One look at the current page; True when the flow is over."""
    if mode == "code" and here.startswith(redirect):
        result["final_url"] = here
        result["done"] = True
        return True
    if present("error"):
        result["error"] = driver.find_element(By.ID, "error").text
        shot("error")
        return True
    if present("device-success"):
        result["pages"].append("device-success")
        shot("device-success")
        result["done"] = True
        return True
    # Each page is recognised by its element ids; act once per page (a page shown again after
    # the action, e.g. a refused password, carries #error and ends the flow above).
    page = next((p for p in ("user-code", "username", "device-confirm", "approve")
                 if present(p)), None)
    if page is None or state["last"] == (page, here):
        return False  # the next page is still loading
    result["pages"].append(page)
    shot(page)
    state["last"] = (page, here)
    if page == "user-code":
        driver.find_element(By.ID, "user-code").send_keys(user_code)
        driver.find_element(By.ID, "device-continue").click()
    elif page == "username":
        driver.find_element(By.ID, "username").send_keys(username)
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.ID, "sign-in").click()
    elif page == "device-confirm":
        result["confirm_code"] = driver.find_element(By.ID, "confirm-code").text
        button = "device-abort" if mode == "device-abort" else "device-confirm"
        driver.find_element(By.ID, button).click()
    elif page == "approve":
        driver.find_element(By.ID, "approve").click()
    return False


try:
    driver.get(url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if act(driver.current_url):
                break
        except StaleElementReferenceException:
            pass  # the page changed under us: look again
        time.sleep(0.05)  # poll the page, bounded by the deadline
    else:
        result["error"] = f"timed out at {driver.current_url}"
    if result["final_url"] is None:
        result["final_url"] = driver.current_url
finally:
    driver.quit()
print(json.dumps(result))
