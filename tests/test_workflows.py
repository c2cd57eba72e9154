"""The GitHub workflows (.github/workflows): actionlint finds nothing (shellcheck included), and
the release build hands the Dockerfile the build arguments and the secret it declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
DOCKERFILE = ROOT / "Dockerfile"
EXACT_VERSION = re.compile(r"@v(\d+)\.\d+\.\d+$")


def _tool(name: str) -> str:
    """The pinned binary from requirements-dev.txt next to this Python, else one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: pip install -r requirements-dev.txt"
    return found


def _actionlint(cwd: Path, files: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("actionlint"), "-no-color", "-shellcheck", _tool("shellcheck"),
         *[str(f) for f in files]],
        cwd=cwd, capture_output=True, text=True, timeout=120)


def _load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text("utf-8"))
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _steps(workflow: dict, action: str) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])
            if step.get("uses", "").split("@")[0] == action]


def test_workflows_exist():
    assert {p.name for p in WORKFLOWS.glob("*.yml")} >= {"ci.yml", "release.yml"}


def test_actionlint_and_shellcheck_find_nothing():
    done = _actionlint(ROOT, sorted(WORKFLOWS.glob("*.y*ml")))
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_action_inputs_are_ones_the_actions_define(tmp_path):
    """actionlint checks `with:` keys against popular actions by major version (@v6), not by
    an exact pin (@v6.18.0): lint a copy whose pins are cut back to the major version."""
    copy = tmp_path / ".github" / "workflows"
    copy.mkdir(parents=True)
    for path in WORKFLOWS.glob("*.y*ml"):
        text = path.read_text("utf-8")
        (copy / path.name).write_text(
            re.sub(r"(uses: [\w.-]+/[\w.-]+)@v(\d+)\.\d+\.\d+", r"\1@v\2", text), "utf-8")
    done = _actionlint(tmp_path, sorted(copy.glob("*.y*ml")))
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_every_action_is_pinned_to_an_exact_version():
    for path in WORKFLOWS.glob("*.y*ml"):
        for ref in re.findall(r"uses:\s*([^\s#]+)", path.read_text("utf-8")):
            if ref.startswith("./"):
                continue  # this repository's own reusable workflow
            assert EXACT_VERSION.search(ref) or re.search(r"@[0-9a-f]{40}$", ref), (
                f"{path.name}: {ref} is not pinned to an exact version")


def test_ci_runs_the_project_ci_script_on_pull_requests_and_main():
    ci = _load("ci.yml")
    assert "pull_request" in ci["on"] and ci["on"]["push"]["branches"] == ["main"]
    runs = [step.get("run", "") for job in ci["jobs"].values() for step in job["steps"]]
    assert "bash .ci/run" in runs


def test_release_builds_on_version_tags_and_published_releases():
    release = _load("release.yml")
    assert release["on"]["push"]["tags"] == ["v*"]
    assert release["on"]["release"]["types"] == ["published"]
    # The image is built only after the tests passed.
    assert release["jobs"]["test"]["uses"] == "./.github/workflows/ci.yml"
    assert release["jobs"]["image"]["needs"] == "test"
    assert _steps(release, "docker/setup-buildx-action")


def _dockerfile_args() -> set[str]:
    return {m.group(1) for m in re.finditer(r"^ARG\s+(\w+)", DOCKERFILE.read_text("utf-8"), re.M)}


def test_release_passes_every_build_argument_and_the_token_secret_the_dockerfile_reads():
    release = _load("release.yml")
    (build,) = _steps(release, "docker/build-push-action")
    given = build["with"]
    args = {line.split("=", 1)[0] for line in given["build-args"].splitlines() if line}
    assert args == _dockerfile_args() == {"ASR_MODEL_ID", "ASR_REVISION", "ALIGNER_REVISION",
                                          "WITH_DIARIZATION"}
    secret_ids = {line.split("=", 1)[0] for line in given["secrets"].splitlines() if line}
    mounted = set(re.findall(r"--mount=type=secret,id=(\w+)", DOCKERFILE.read_text("utf-8")))
    assert secret_ids == mounted == {"hf_token"}
    assert "${{ secrets.HF_TOKEN }}" in given["secrets"]
    assert given["push"] is True and given["platforms"] == "linux/amd64"
    assert given["cache-from"].startswith("type=") and given["cache-to"].startswith("type=")


def test_release_tags_the_version_and_latest_in_a_registry_from_repository_variables():
    release = _load("release.yml")
    assert "vars.REGISTRY" in release["env"]["REGISTRY"]
    assert "'docker.io'" in release["env"]["REGISTRY"]
    assert "vars.IMAGE_NAME" in release["env"]["IMAGE_NAME"]
    for name in ("ASR_MODEL_ID", "ASR_REVISION", "ALIGNER_REVISION", "WITH_DIARIZATION"):
        assert f"vars.{name}" in release["env"][name]
    assert "'0'" in release["env"]["WITH_DIARIZATION"]  # the default image has no diarization
    (meta,) = _steps(release, "docker/metadata-action")
    tags = meta["with"]["tags"]
    assert "type=match,pattern=v(.*),group=1" in tags and "type=raw,value=latest" in tags
    (login,) = _steps(release, "docker/login-action")
    assert "secrets.REGISTRY_TOKEN" in login["with"]["password"]

