"""Two browser pages in one chat room, driven by Playwright's sync API: run as
``python -m tests.actors.chat_pages CHROMIUM URL SCREENSHOT`` by ``test_chat.py`` (a process of its
own, away from the test's trio loop). Prints what each page showed, as JSON."""

from __future__ import annotations

import json
import sys

from playwright.sync_api import sync_playwright

from tests.browser import ARGS

TIMEOUT_MS = 20_000


def main(chromium: str, url: str, screenshot: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            ann, bob = browser.new_page(), browser.new_page()
            for page in (ann, bob):
                page.set_default_timeout(TIMEOUT_MS)
            ann.goto(f"{url}?name=ann")
            ann.wait_for_function("document.getElementById('members').textContent === 'ann'")
            bob.goto(f"{url}?name=bob")
            for page in (ann, bob):  # each sees both members once bob's join is broadcast
                page.wait_for_function("document.getElementById('members').textContent === 'ann, bob'")
            ann.fill("#text", "hello bob <b>not bold</b>")
            ann.click("#send")
            bob.wait_for_selector("#log p.message")
            bob.fill("#text", "hi ann")
            bob.press("#text", "Enter")
            for page in (ann, bob):
                page.wait_for_function("document.querySelectorAll('#log p.message').length === 2")
            shown = {
                name: {
                    "messages": page.eval_on_selector_all("#log p.message", "ps => ps.map(p => p.textContent)"),
                    "bold": page.eval_on_selector_all("#log b", "bs => bs.length"),
                    "title": page.inner_text("#room"),
                }
                for name, page in (("ann", ann), ("bob", bob))
            }
            ann.screenshot(path=screenshot)
            bob.close()
            ann.wait_for_function("document.getElementById('members').textContent === 'ann'")
            shown["ann"]["after_bob_left"] = ann.eval_on_selector_all("#log p.meta", "ps => ps.map(p => p.textContent)")
            print(json.dumps(shown))
        finally:
            browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
