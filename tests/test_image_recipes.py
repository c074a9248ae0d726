"""The image recipes (deploy/Dockerfile, deploy/Dockerfile.vllm), tested like code without a Docker daemon.

Each Dockerfile's RUN steps that set up an environment are run here, in a clean copy of the repository (the files git
knows, as ``COPY . `` takes them past .dockerignore), with the image's paths moved into the test's folder and its
build arguments set. pip resolves every pin against the real index but installs nothing (``PIP_DRY_RUN``): what the
scripts do, their paths, their build choice and every version they pin are checked; the full installs are the ones
``bin/test`` itself runs through the same scripts. The environments' folders are made first with a real build backend
(:func:`_seed_venv`), which a dry run cannot install."""

import os
import pathlib
import re
import shutil
import subprocess

import pytest
import setuptools

from deployments.serve_env import CLUSTER_ENV

pytestmark = pytest.mark.component

REPO = pathlib.Path(__file__).resolve().parents[1]
APP = REPO / "deploy" / "Dockerfile"
VLLM = REPO / "deploy" / "Dockerfile.vllm"


def _instructions(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def _setup_steps(dockerfile: pathlib.Path) -> list[str]:
    return [arguments for instruction, arguments in _instructions(dockerfile) if instruction == "RUN" and "bin/ensure-" in arguments]


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory) -> pathlib.Path:
    """The repository as an image build sees it: the files git tracks or would (not .venv, not bench/results)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    target = tmp_path_factory.mktemp("image") / "opt" / "video-detective"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def _seed_venv(venv: pathlib.Path) -> None:
    """The environment's folder with its python and a real build backend: under ``PIP_DRY_RUN`` pip would dry-run
    the backend's own install into the build environment too, and could not build the project's metadata. The
    scripts find this environment and install into it, as they would into their own."""
    if not (venv / "bin" / "python").is_file():
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"setuptools=={setuptools.__version__}"],
                       check=True, timeout=300)


def _run_step(step: str, clean_copy: pathlib.Path, build_args: dict[str, str]) -> subprocess.CompletedProcess:
    opt = clean_copy.parent
    _seed_venv(clean_copy / ".venv")
    _seed_venv(opt / "vllm")
    command = step.replace("/opt/video-detective", str(clean_copy)).replace("/opt/vllm", str(opt / "vllm"))
    env = {**os.environ, **build_args, "PIP_DRY_RUN": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIDEO_DETECTIVE_VLLM_BUILD", None)
    return subprocess.run(["bash", "-c", command], cwd=clean_copy, env=env, capture_output=True, text=True, timeout=900)


def test_the_recipes_build_from_the_repository_with_its_own_scripts():
    app, vllm = _instructions(APP), _instructions(VLLM)

    assert ("COPY", "--chown=ray:users . /opt/video-detective") in app
    assert any(instruction == "FROM" and "${RAY_IMAGE}" in arguments for instruction, arguments in app)
    assert ("ARG", "RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu") in app  # the Ray the manifest's rayVersion names
    assert any(instruction == "ENV" and arguments.startswith("PATH=/opt/video-detective/.venv/bin:") for instruction, arguments in app)
    assert [step.split()[-1] for step in _setup_steps(APP)] == ["bin/ensure-venv"]
    env = dict(pair.split("=", 1) for instruction, arguments in app if instruction == "ENV" for pair in arguments.split())
    assert {name: env.get(name) for name in CLUSTER_ENV} == CLUSTER_ENV  # Serve's controller and proxies read them
    assert _setup_steps(VLLM) == ['VIDEO_DETECTIVE_VLLM_VENV=/opt/vllm PYTHON=python3.11 bin/ensure-vllm-venv --build "${VLLM_BUILD}"']
    assert ("ARG", "VLLM_BUILD") in vllm  # no default: the build says which
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".venv-vllm", "bench/results"} <= set(ignored)


def test_the_app_images_setup_step_resolves_every_pin_in_a_clean_folder(clean_copy):
    (step,) = _setup_steps(APP)
    done = _run_step(step, clean_copy, {})

    assert done.returncode == 0, done.stderr[-3000:]
    stamps = [path.name for path in (clean_copy / ".venv").glob(".installed-*")]
    assert len(stamps) == 1
    again = _run_step(step, clean_copy, {})  # a second run finds the stamp and installs nothing
    assert again.returncode == 0 and "Installing" not in again.stderr


@pytest.mark.parametrize("build", ["cuda", "cpu"])
def test_the_vllm_images_setup_step_takes_the_build_from_the_build_argument_never_from_this_host(clean_copy, build):
    (step,) = _setup_steps(VLLM)
    done = _run_step(step, clean_copy, {"VLLM_BUILD": build})

    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Installing vLLM ({build})" in done.stderr
    venv = clean_copy.parent / "vllm"
    assert [path.name.split("-")[1] for path in venv.glob(".installed-*")] == [build]
    assert done.stdout.strip() == f"{venv}/bin/python"
    assert list(venv.glob("lib/python3.11/site-packages/video_detective_torchvision_ops.pth"))


def test_a_vllm_image_without_its_build_argument_is_refused(clean_copy):
    (step,) = _setup_steps(VLLM)
    done = _run_step(step, clean_copy, {"VLLM_BUILD": ""})

    assert done.returncode == 2
    assert "the vLLM build must be cuda or cpu, got ''" in done.stderr
