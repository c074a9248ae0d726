"""The examples a reader copies: the fenced ``bash`` and ``python`` blocks of the README and ``docs/api.md``."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE_PAGES = ("README.md", "docs/api.md")


def example_blocks(page: str) -> list[tuple[str, str]]:
    """The page's fenced ``bash`` and ``python`` blocks in the page's order: (language, the block without its fences)."""
    return re.findall(r"^```(bash|python)\n(.*?)^```", (ROOT / page).read_text(), re.S | re.M)


def code_blocks(page: str, language: str) -> list[str]:
    return [block for block_language, block in example_blocks(page) if block_language == language]
