"""The README's and docs/' commands and snippets work as printed (the ones that can run here)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

import models
from server.cli import build_parser
from server.testing import LiveServer, free_port
from tests.helpers import REPO

README = (REPO / "README.md").read_text()
DOCS = [README, *(path.read_text() for path in sorted((REPO / "docs").glob("*.md")))]
WIDTHWISE = str(Path(sys.executable).parent / "widthwise")  # the console script `make` installs


def blocks(language: str, texts: list[str] = DOCS) -> list[str]:
    return [block for text in texts for block in re.findall(rf"```{language}\n(.*?)```", text, re.S)]


def shell_lines(texts: list[str] = DOCS) -> list[str]:
    """Every command of the sh blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in blocks("sh", texts):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def widthwise_commands() -> list[list[str]]:
    return [shlex.split(line) for line in shell_lines() if line.startswith("widthwise ")]


def readme_command(*words: str) -> list[str]:
    """The README's (first) widthwise command starting with ``words``."""
    for argv in widthwise_commands():
        if argv[1:1 + len(words)] == list(words):
            return argv
    raise AssertionError(f"README has no `widthwise {' '.join(words)}` command")


def test_every_widthwise_command_parses():
    commands = widthwise_commands()
    assert len(commands) >= 10
    parser = build_parser()
    for argv in commands:
        if argv[1:] in (["--help"], ["serve", "--help"]):
            continue
        parser.parse_args(argv[1:])  # exits (fails the test) on an unknown flag or a bad value


def test_input_files_named_in_the_readme_exist_or_are_made_by_it():
    made = set()
    for argv in widthwise_commands():
        for flag in ("--out", "--save-profile"):
            if flag in argv:
                made.add(argv[argv.index(flag) + 1])
        if argv[1] == "convert":
            made.add(argv[3])
    for line in shell_lines():
        argv = shlex.split(line)
        inputs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--checkpoint", "--profile", "--labels")]
        inputs += [argv[2]] if argv[:2] == ["widthwise", "convert"] else []
        inputs += [a.split("@", 1)[1] for a in argv if "@" in a and not a.startswith("http")]
        for path in inputs:
            if path.startswith("$") or "YOUR" in path.upper():
                continue  # a placeholder the README marks as the reader's own file
            assert (REPO / path).exists() or path in made, f"README: {line!r} names {path}, which does not exist"


@pytest.mark.slow
def test_models_snippet_runs_as_printed(tmp_path):
    snippet = next(b for b in blocks("python") if "models.create" in b)
    out = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "net.safetensors").is_file()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder like the repository root (models/, examples/) where the README's outputs may land."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("models", "examples"):
        (folder / name).symlink_to(REPO / name)
    return folder


def run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([WIDTHWISE, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{shlex.join(argv)}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_evaluate_and_calibrate_run_as_printed(workdir):
    run(readme_command("evaluate"), workdir)
    calibrate = readme_command("calibrate", "--checkpoint", "models/default/digits_s_mobilenet_v2.safetensors")
    run(calibrate, workdir)
    assert (workdir / calibrate[calibrate.index("--out") + 1]).is_file()


@pytest.mark.slow
def test_universal_train_and_calibrate_run_as_printed(workdir):
    train = readme_command("train", "--arch", "s_convnet6", "--universal")
    run(train, workdir)
    calibrate = readme_command("calibrate", "--checkpoint", train[train.index("--out") + 1])
    run(calibrate, workdir)
    calibrated = models.load_checkpoint(workdir / calibrate[calibrate.index("--out") + 1])
    net = calibrated.net
    assert len(net.calibrated) == 27 and net.calibrated[0] == 0.35 and net.calibrated[-1] == 1.0
    assert min(calibrated.card.accuracy.values()) > 0.8


@pytest.mark.slow
def test_profile_then_simulate_run_as_printed(workdir):
    profile = readme_command("profile", "--arch", "s_mobilenet_v2", "--input-size", "224", "--save-profile")
    run(profile, workdir)
    simulate = readme_command(
        "simulate", "--profile", profile[profile.index("--save-profile") + 1], "--policy", "slack", "--trace", "bursty"
    )
    out = run(simulate, workdir)
    assert '"attainment"' in out.stdout


@pytest.mark.slow
def test_bench_runs_from_the_repository_root_and_elsewhere(tmp_path):
    name = readme_command("bench")[2]
    for cwd in (REPO, tmp_path):
        out = run(["widthwise", "bench", name, "--help"], cwd)
        assert f"usage: bench.{name}" in out.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.live
def test_native_api_curls_and_triton_snippet_work_against_make_serve():
    grpc_port = free_port()
    # what `make serve` starts (the embedded model, default settings), plus gRPC for the gRPC snippet
    server = LiveServer("--grpc-port", str(grpc_port))
    try:
        server.wait_ready()
        curls = [line for line in shell_lines() if line.startswith("curl")]
        first = next(line for line in shell_lines([README]) if line.startswith("curl"))
        assert len(curls) >= 3 and curls[0] == first
        for line in curls:
            argv = [a.replace("localhost:8000", f"127.0.0.1:{server.port}") for a in shlex.split(line)]
            out = subprocess.run([*argv, "--fail-with-body"], cwd=REPO, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, f"{line}\n{out.stdout}{out.stderr}"
        first = subprocess.run([*shlex.split(curls[0].replace("localhost:8000", f"127.0.0.1:{server.port}"))],
                               cwd=REPO, capture_output=True, text=True, timeout=30)
        assert '"label":"7"' in first.stdout.replace(" ", "").split("}")[0] + "}"
        snippets = [b for b in blocks("python") if "tritonclient" in b]
        assert len(snippets) == 2  # HTTP and gRPC
        for snippet in snippets:
            snippet = snippet.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
            snippet = snippet.replace("127.0.0.1:8001", f"127.0.0.1:{grpc_port}")
            out = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
        assert httpx2.get(server.url + "/readyz").status_code == 200
    finally:
        server.stop()


def test_the_readme_is_short_and_its_first_request_comes_early():
    lines = README.splitlines()
    assert len(lines) <= 250
    first_curl = next(i for i, line in enumerate(lines) if line.startswith("curl "))
    assert first_curl < 60
    for name in ("api", "policies", "models", "operations", "design"):  # the reference it points to exists
        assert f"(docs/{name}.md)" in README and (REPO / "docs" / f"{name}.md").is_file()
