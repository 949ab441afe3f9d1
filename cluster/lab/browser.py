"""A user's web browser in the lab's client ("the internet"): Debian's headless chromium, driven
by selenium through Debian's chromedriver, run with the venv's python in the client namespace:
`python -m cluster.lab client -- venv/bin/python -m cluster.lab.browser COMMAND ...`
(``Lab.browser``; this machine's python3 has no selenium).

The browser sees what a user sees: the mail host's name maps to the shared IP
(``--host-resolver-rules``, the lab's internet has no DNS for it) and TLS is verified against
``--ca`` alone, imported into a throwaway NSS database in a temporary HOME (chromium's trust
store on Linux); no certificate error is ever ignored. Chromium runs as root here, which its
sandbox refuses: ``--no-sandbox``, acceptable for a test browser that visits only the lab.

Each command prints one JSON object, as clientlib's do: ``{"ok": true, ...}``, or ``{"ok":
false, "error": ..., "step": ..., "url": ..., "page": ...}`` with the failed step, the page's
address and its text. A password comes on stdin, never on a command line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Every wait on the page: on the busy 2-core lab machine a whole step (a page, a form, its save
# and the list that shows it) took 1.0-1.9 s, so no single wait comes near 2 s; 15 s is a margin
# of more than 7 times, and a wait that runs out names what it waited for.
WAIT_S = 15.0
# Desktop width: Roundcube's elastic skin shows the list and the form side by side.
WINDOW = "1280,900"


class StepFailed(Exception):
    """A step of a command did not reach the state it waited for."""


def nss_home(ca: str, root: Path) -> Path:
    """A HOME whose NSS database (chromium's trust store) trusts ``ca`` as its only added CA."""
    db = root / ".pki" / "nssdb"
    db.mkdir(parents=True)
    certutil = ["certutil", "-d", f"sql:{db}"]
    subprocess.run([*certutil, "-N", "--empty-password"], check=True, capture_output=True)
    subprocess.run([*certutil, "-A", "-t", "C,,", "-n", "mailcluster-lab-ca", "-i", ca],
                   check=True, capture_output=True)  # fmt: skip
    return root


@contextmanager
def chromium(ca: str, host: str, ip: str) -> Iterator[WebDriver]:
    """A fresh headless chromium (its own profile and trust store) that finds ``host`` at
    ``ip`` and trusts ``ca``."""
    with tempfile.TemporaryDirectory(prefix="mclab-browser-") as tmp:
        home = nss_home(ca, Path(tmp) / "home")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in (
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp}/profile", f"--window-size={WINDOW}",
            f"--host-resolver-rules=MAP {host} {ip}",
            # Nothing but the lab: no background requests (updates, sync) into a void.
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--disable-sync", "--disable-default-apps", "--password-store=basic",
        ):  # fmt: skip
            opts.add_argument(arg)
        # Both paths given: selenium's driver manager never runs (it would look online).
        service = Service(executable_path=CHROMEDRIVER, env={"HOME": str(home),
                                                              "PATH": "/usr/bin:/bin"})  # fmt: skip
        driver = webdriver.Chrome(options=opts, service=service)
        try:
            driver.set_page_load_timeout(WAIT_S)
            yield driver
        finally:
            driver.quit()


class Session:
    """A browser session that records its steps: each waits for an explicit state."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver, self.base = driver, base
        self.step = "start"
        self.steps: dict[str, float] = {}
        self._t = time.monotonic()

    def begin(self, name: str) -> None:
        now = time.monotonic()
        if self.step != "start":
            self.steps[self.step] = round(now - self._t, 2)
        self.step, self._t = name, now

    def end(self) -> dict[str, float]:
        self.begin("end")
        return self.steps

    def get(self, path: str) -> None:
        """Load a page; chromium's own error page (a certificate it refused, a network error:
        ``net::ERR_...`` in its ``#error-code``) is a failed step, not a page to search."""
        self.driver.get(self.base + path)
        for code in self.driver.find_elements(By.ID, "error-code"):
            if code.text.lower().startswith("net::"):
                raise StepFailed(f"the browser refused {self.base + path}: {code.text}")

    def until(self, what: str, cond: Callable[[WebDriver], Any]) -> Any:
        try:
            return WebDriverWait(self.driver, WAIT_S).until(cond)
        except WebDriverException as e:
            raise StepFailed(f"{what}: not within {WAIT_S:.0f} s ({type(e).__name__})") from e

    def element(self, css: str, clickable: bool = False) -> WebElement:
        cond = EC.element_to_be_clickable if clickable else EC.visibility_of_element_located
        found: WebElement = self.until(css, cond((By.CSS_SELECTOR, css)))
        return found

    def fill(self, css: str, text: str) -> None:
        field = self.element(css)
        field.clear()
        field.send_keys(text)

    def choose(self, css: str, value: str) -> None:
        Select(self.element(css)).select_by_value(value)

    def click(self, css: str) -> None:
        self.element(css, clickable=True).click()

    def text(self, what: str, css: str, text: str) -> None:
        """Until the element ``css`` shows ``text``."""
        self.until(what, EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    def page(self) -> str:
        try:
            return str(self.driver.find_element(By.TAG_NAME, "body").text)[:2000]
        except WebDriverException:
            return ""


# -- Roundcube ---------------------------------------------------------------------------------

RC_SAVED = "#messagestack .confirmation"  # Roundcube's "Successfully saved" and the like


def rc_command(name: str) -> str:
    """A Roundcube toolbar button, once its command is enabled (a disabled one has the class
    "disabled" until the page's script enables it)."""
    return f"a[onclick*=\"'{name}'\"]:not(.disabled)"


def roundcube_login(s: Session, user: str, password: str) -> None:
    s.begin("roundcube login")
    s.get("/")
    s.fill("#rcmloginuser", user)
    s.fill("#rcmloginpwd", password)
    s.click("#rcmloginsubmit")
    folders, refused = (By.ID, "mailboxlist"), (By.CSS_SELECTOR, "#messagestack .warning")
    s.until("the mail view after the login",
            EC.any_of(EC.visibility_of_element_located(folders),
                      EC.visibility_of_element_located(refused)))  # fmt: skip
    if not s.driver.find_elements(*folders):
        raise StepFailed(f"the login was refused: {s.driver.find_element(*refused).text}")


def roundcube_folder(s: Session, folder: str) -> None:
    """Settings, Folders, Create: a top-level folder."""
    s.begin("roundcube folder")
    s.get("/?_task=settings&_action=folders")
    s.click(rc_command("create-folder"))
    s.until("the folder form", EC.frame_to_be_available_and_switch_to_it("preferences-frame"))
    s.fill("input[name=_name]", folder)
    s.click(".formbuttons button.submit")
    s.driver.switch_to.default_content()
    s.text(f"{folder} in the folder list", "#subscription-table", folder)


def roundcube_filter(s: Session, name: str, contains: str, folder: str) -> None:
    """Settings, Filters, Create: Subject contains ``contains``: move to ``folder``."""
    s.begin("roundcube filter")
    s.get("/?_task=settings&_action=plugin.managesieve")
    s.click(rc_command("plugin.managesieve-add"))
    s.until("the filter form", EC.frame_to_be_available_and_switch_to_it("filter-box"))
    s.fill("input[name=_name]", name)
    s.choose("#header0", "subject")
    s.choose("#rule_op0", "contains")
    s.fill("#rule_target0_list input", contains)
    s.choose("#action_type0", "fileinto")
    s.choose("#action_mailbox0", folder)
    s.click(".formbuttons button.submit")
    s.driver.switch_to.default_content()
    s.text(f"{name} in the filter list", "#filterslist", name)


def roundcube_vacation(s: Session, subject: str, body: str) -> list[str]:
    """Settings, Out of Office: a reply, switched on. Returns the addresses it answers for."""
    s.begin("roundcube vacation")
    s.get("/?_task=settings&_action=plugin.managesieve-vacation")
    s.fill("#vacation_subject", subject)
    s.fill("#vacation_reason", body)
    s.choose("#vacation_status", "on")
    addresses = [
        str(e.get_attribute("value"))
        for e in s.driver.find_elements(By.CSS_SELECTOR, "#vacation_addresses_list input")
    ]
    s.click(".formbuttons button.submit")
    s.element(RC_SAVED)
    return addresses


def roundcube_quota(s: Session) -> str:
    """The mail view's quota display (Roundcube asks Dovecot over IMAP, RFC 2087 QUOTA): the
    title a user sees on hover, "<label>: <used> / <limit> (<percent>%)", on the display's
    object (``rcmquotadisplay``, rcmail_action::quota_display; the skin's ``#quotadisplay``
    wraps it). Present only for a mailbox with a limit; set by the page's script once loaded."""
    s.begin("roundcube quota")

    def title(driver: WebDriver) -> str | None:
        for e in driver.find_elements(By.ID, "rcmquotadisplay"):
            if text := e.get_attribute("title"):
                return str(text)
        return None

    return str(s.until("the quota display", title))


def roundcube_sieve(s: Session, a: argparse.Namespace, password: str) -> dict[str, Any]:
    roundcube_login(s, a.user, password)
    quota = roundcube_quota(s)
    roundcube_folder(s, a.folder)
    roundcube_filter(s, a.filter_name, a.contains, a.folder)
    addresses = roundcube_vacation(s, a.vacation_subject, a.vacation_body)
    return {"vacation_addresses": addresses, "quota": quota}


# -- Postfix Admin -----------------------------------------------------------------------------


def postfixadmin_login(s: Session, a: argparse.Namespace, password: str) -> dict[str, Any]:
    """Log in as an admin (a refused login fails with Postfix Admin's message), then the
    Domain List. Returns the text of both pages."""
    s.begin("postfixadmin login")
    s.get("/postfixadmin/login.php")
    s.fill("#fUsername", a.user)
    s.fill("#fPassword", password)
    login_url = s.driver.current_url
    s.click("button[name=submit]")
    refused = (By.CSS_SELECTOR, ".alert-danger")  # Postfix Admin's flash error
    s.until(
        "a page after the login",
        EC.any_of(EC.url_changes(login_url), EC.visibility_of_element_located(refused)),
    )
    if s.driver.current_url == login_url:
        raise StepFailed(f"the login was refused: {s.driver.find_element(*refused).text}")
    after_login = s.page()
    s.begin("postfixadmin domains")  # the menu's Domain List (a drop-down: its address)
    s.get("/postfixadmin/list.php?table=domain")
    s.text(f"{a.expect} in the domain list", "table", a.expect)
    return {"after_login": after_login, "domains": s.page(), "url": s.driver.current_url}


def open_page(s: Session, a: argparse.Namespace, password: str) -> dict[str, Any]:
    """Load one page (a check of TLS by hand: a wrong ``--ca`` must fail)."""
    s.begin("open")
    s.get(a.path)
    return {"title": s.driver.title}


COMMANDS: dict[str, Callable[[Session, argparse.Namespace, str], dict[str, Any]]] = {
    "roundcube-sieve": roundcube_sieve,
    "postfixadmin-login": postfixadmin_login,
    "open": open_page,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cluster.lab.browser", description=__doc__)
    p.add_argument("--ca", required=True, help="the only CA the browser trusts (PEM)")
    p.add_argument("--host", required=True, help="the name in the URL (mail.example.com)")
    p.add_argument("--ip", required=True, help="the address the name maps to (the shared IP)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("roundcube-sieve", help="log in, a folder, a filter into it, a vacation")
    s.add_argument("--user", required=True)
    s.add_argument("--folder", required=True)
    s.add_argument("--filter-name", required=True)
    s.add_argument("--contains", required=True, help="what the subject contains")
    s.add_argument("--vacation-subject", required=True)
    s.add_argument("--vacation-body", required=True)
    s = sub.add_parser("postfixadmin-login", help="log in as an admin, the domain list")
    s.add_argument("--user", required=True)
    s.add_argument("--expect", required=True, help="text the domain list shows")
    s = sub.add_parser("open", help="load one page")
    s.add_argument("--path", default="/")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    password = "" if a.command == "open" else sys.stdin.readline().rstrip("\n")
    t0 = time.monotonic()
    result: dict[str, Any]
    with chromium(a.ca, a.host, a.ip) as driver:
        s = Session(driver, f"https://{a.host}")
        try:
            result = {"ok": True, **COMMANDS[a.command](s, a, password)}
        except (StepFailed, WebDriverException) as e:
            error = e.msg if isinstance(e, WebDriverException) and e.msg else str(e)
            result = {"ok": False, "error": error.strip().splitlines()[0], "step": s.step,
                      "url": driver.current_url, "page": s.page()}  # fmt: skip
        result["steps"] = s.end()
    result["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
