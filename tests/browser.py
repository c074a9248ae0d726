"""Debian's Chromium driven by playwright-python, for the page tests.

playwright's own browser download cannot be reached here, so it launches ``/usr/bin/chromium``
(Debian's ``chromium`` package, which ``bin/test`` installs where it can). The flags keep Chromium
off the network it would otherwise call at start-up.
"""

import os
import shutil

import pytest

CHROMIUM_FLAGS = [
    "--no-sandbox",  # tests may run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The Chromium executable, or a skip that says how to install it."""
    path = os.environ.get("VIDEO_DETECTIVE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip(
            "No Chromium for the browser tests: install Debian's package (sudo apt-get install chromium; bin/test does it "
            "when it runs as root) or set VIDEO_DETECTIVE_CHROMIUM to a Chromium executable"
        )
    return path


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
