"""Every example of the README and ``docs/api.md`` runs as written against a real server on the default config.

A reader copies these blocks as they are, so they run as they are: each ``bash`` line through bash, each ``python``
block through Python, in the page's order, from a folder with the pages' files in it (``clip.mp4`` made by the
page's own command, ``night.mp4``). Only three things change: the server's address (this test's app, not port
8000), the ids the pages elide (``file-3f2c...``, ``job-4c0f...``: the ones the commands before them returned),
and nothing else. Every command must exit 0, and what it prints must hold no error: a JSON body without
``error``, an event stream without an ``error`` event.

The lines that start a server or clone the repository are not run here; they are listed in ``NOT_RUN`` (the
test fails when a page gains or loses one) and run elsewhere: ``bin/serve`` by ``test_bin_serve.py``, with API
keys by ``test_auth.py``, ``bin/test`` by CI itself. A failed or cancelled job through the jobs example:
``test_video_jobs.py``.
"""

import json
import pathlib
import re
import subprocess

import httpx
import media_factory
import pytest
from doc_examples import EXAMPLE_PAGES, ROOT, code_blocks, example_blocks
from polling import wait_for_condition
from ray import serve

from integration.conftest import deploy

pytestmark = pytest.mark.integration

APP = "doc-examples"
PREFIX = "/examples"
ADDRESS = re.compile(r"(?:http://)?(?:127\.0\.0\.1|localhost):8000")
FILE_ID = re.compile(r"file-[0-9a-f]*\.\.\.")
JOB_ID = re.compile(r"job-[0-9a-f]*\.\.\.")
NOT_RUN = {  # the commands (comments left out) of the lines that start a server, run the suite or clone
    "git clone <this repository> video-detective && cd video-detective",
    "bin/serve",
    "bin/test",
    "VIDEO_DETECTIVE_API_KEYS=my-secret-key bin/serve",
}
NIGHT_S = 10


@pytest.fixture(scope="module")
def examples_url(http_port, test_root):
    """The app on its default config, but for its share of this test session's CPUs and its own file store."""
    args = {
        "gpu_group": {"num_cpus": 0.5, "load_retry_period_s": 1},  # the fake GPU: it waits for memory, never serves
        "cpu_group": {"num_cpus": 1},
        "ingress": {"num_cpus": 0.5},
        "files": {"store_url": (test_root / "doc-examples-store").as_uri()},
    }
    url = deploy(args, http_port, name=APP, route_prefix=PREFIX)
    wait_for_condition(lambda: httpx.get(f"{url}/readyz", timeout=10).json()["groups"]["cpu"]["status"] == "up",
                       timeout_s=180, interval_s=0.5)
    yield url
    serve.delete(APP)


@pytest.fixture(scope="module")
def folder(test_root) -> pathlib.Path:
    """The reader's folder: the repository's ``.venv`` and ``tests`` (the clip command uses both), and the videos."""
    where = test_root / "doc-examples"
    where.mkdir(exist_ok=True)
    for name in (".venv", "tests"):
        if not (where / name).exists():
            (where / name).symlink_to(ROOT / name)
    (clip_command,) = [line for block in code_blocks("docs/api.md", "bash") for line in block.splitlines()
                       if "clip.mp4" in line and "media_factory" in line]
    subprocess.run(["bash", "-c", clip_command], cwd=where, check=True, timeout=120)
    assert (where / "clip.mp4").stat().st_size > 0
    media_factory.write(where / "night.mp4", media_factory.video_bytes("mp4", num_frames=NIGHT_S * 12, fps=12))
    return where


class _Ids:
    """The ids the commands so far returned, for the placeholders of the next ones."""

    def __init__(self, url: str, folder: pathlib.Path) -> None:
        self._url, self._folder = url, folder
        self.file: str | None = None
        self.job: str | None = None

    def fill(self, text: str) -> str:
        if FILE_ID.search(text) and self.file is None:  # the page uploads its file further down: upload one now
            with open(self._folder / "clip.mp4", "rb") as clip:
                uploaded = httpx.post(f"{self._url}/v1/files", data={"purpose": "vision"}, files={"file": clip}, timeout=60)
            self.file = uploaded.raise_for_status().json()["id"]
        text = FILE_ID.sub(lambda _: self.file, text)
        if JOB_ID.search(text):
            assert self.job is not None, f"{text!r} names a job, and no command before it started one"
            text = JOB_ID.sub(self.job, text)
        return text

    def learn(self, body: dict) -> None:
        if body.get("object") == "file" and not body.get("deleted"):
            self.file = body["id"]
        elif body.get("object") == "file" and body.get("id") == self.file:
            self.file = None
        elif body.get("object") == "video.job":
            self.job = body["id"]


def _shell_lines(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comment-only lines (printed output) left out."""
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _check_output(command: str, output: str, ids: _Ids) -> None:
    if output.startswith(("{", "[")):
        body = json.loads(output)
        assert not (isinstance(body, dict) and "error" in body), f"{command}\n-> {output[:1000]}"
        if isinstance(body, dict):
            ids.learn(body)
    elif "event:" in output:
        assert "event: error" not in output, f"{command}\n-> {output[:1000]}"
        assert "event: done" in output, f"{command}: the stream did not end\n-> {output[:1000]}"


@pytest.mark.parametrize("page", EXAMPLE_PAGES)
def test_every_example_of_the_page_runs_as_written(page, examples_url, folder, monkeypatch, capsys):
    ids = _Ids(examples_url, folder)
    monkeypatch.chdir(folder)
    ran = 0
    for language, block in example_blocks(page):
        if language == "bash":
            for line in _shell_lines(block):
                if _command_of(line) in NOT_RUN:
                    continue
                command = ids.fill(ADDRESS.sub(examples_url, line))
                done = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"{command}\n-> exit {done.returncode}: {done.stderr[-2000:]}"
                _check_output(command, done.stdout.strip(), ids)
                ran += 1
        else:
            code = ids.fill(ADDRESS.sub(examples_url, block))
            exec(compile(code, page, "exec"), {})  # noqa: S102 - the page's own example
            assert capsys.readouterr().out, f"a Python example of {page} printed nothing"  # the tiny model's text may be blank
            ran += 1
    assert ran >= 5, f"{page}: only {ran} examples found; the block parser lost some"
    if ids.file is not None:  # what the page left in the store
        httpx.delete(f"{examples_url}/v1/files/{ids.file}", timeout=30)


def _command_of(line: str) -> str:
    return line.split("#", 1)[0].strip()


def test_the_lines_not_run_are_exactly_the_ones_that_start_a_server_or_clone():
    commands = {_command_of(line) for page in EXAMPLE_PAGES for block in code_blocks(page, "bash")
                for line in _shell_lines(block)}
    assert NOT_RUN <= commands, f"no longer in the pages: {NOT_RUN - commands}"
    starts = {command for command in commands if re.match(r"(\w+=\S+ )*(bin/serve|bin/test|git clone)", command)}
    assert starts == NOT_RUN
