"""binder/ (repo2docker configuration) stays consistent with the package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def requirement_lines() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def normalize(requirement: str) -> str:
    requirement = requirement.replace(" ", "")
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower() + requirement[len(name) :]


def test_runtime_is_python_311():
    text = (BINDER / "runtime.txt").read_text()
    assert re.fullmatch(r"python-3\.\d+\n?", text), "repo2docker wants e.g. 'python-3.11' (with the dash)"
    assert text.strip() == "python-3.11"


def test_apt_installs_graphviz():
    packages = [line.strip() for line in (BINDER / "apt.txt").read_text().splitlines() if line.strip()]
    assert "graphviz" in packages


def test_requirements_install_the_package_last():
    assert requirement_lines()[-1] == "."


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_requirements_mirror_pyproject_dependencies():
    # Binder builds what `make setup` installs for a user: the package, the notebook and examples extras
    extras = PROJECT["optional-dependencies"]
    wanted = PROJECT["dependencies"] + extras["notebook"] + extras["examples"]
    pinned = {normalize(line) for line in requirement_lines() if not line.startswith(("-", "."))}
    missing = [dep for dep in wanted if normalize(dep) not in pinned]
    assert not missing, f"binder/requirements.txt lacks {missing} (copy pyproject's pins)"


def makefile_apt_packages() -> set[str]:
    calls = re.findall(r"^\t\$\(call apt_need,[^,]*,([^,]+),", (ROOT / "Makefile").read_text(), re.MULTILINE)
    return {package for call in calls for package in call.split()}


def test_apt_txt_has_what_make_installs_from_apt():
    packages = {line.strip() for line in (BINDER / "apt.txt").read_text().splitlines() if line.strip()}
    assert packages == makefile_apt_packages() - {"chromium"}  # Chromium is for the browser tests only


@pytest.mark.slow
def test_repo2docker_builds_the_make_environment():
    """repo2docker's own Dockerfile for this repository (``--no-build``: no Docker engine needed)."""
    repo2docker = Path(sys.executable).with_name("repo2docker")
    done = subprocess.run(
        [str(repo2docker), "--no-build", "--no-run", "--debug", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    dockerfile = done.stdout + done.stderr
    assert "python=3.11" in dockerfile
    apt = re.search(r"apt-get install --yes --no-install-recommends ([^&]+)&&", dockerfile)
    assert apt, "repo2docker installs nothing from apt.txt"
    assert set(apt.group(1).split()) == makefile_apt_packages() - {"chromium"}
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in dockerfile
    assert "./binder/postBuild" in dockerfile


BINDER_LINK = re.compile(
    r"https://mybinder\.org/v2/gh/([\w.-]+/[\w.-]+)/main\?urlpath=lab/tree/(notebooks/[\w.-]+\.ipynb)"
)


def test_readme_links_every_notebook_on_binder():
    readme = (ROOT / "README.md").read_text()
    repository = PROJECT["urls"]["Repository"].removeprefix("https://github.com/")
    links = BINDER_LINK.findall(readme)
    assert "mybinder.org/badge_logo.svg" in readme
    assert {repo for repo, _ in links} == {repository}
    linked = {path for _, path in links}
    notebooks = {f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert linked == notebooks, f"README's Binder links and notebooks/ differ: {sorted(linked ^ notebooks)}"


def test_torch_comes_from_the_cpu_index():
    lines = requirement_lines()
    index = next(i for i, line in enumerate(lines) if line.startswith("--extra-index-url"))
    assert lines[index].split()[-1] == "https://download.pytorch.org/whl/cpu"
    torch = next(i for i, line in enumerate(lines) if normalize(line).startswith("torch"))
    assert index < torch


def test_only_binder_config_no_conflicting_files():
    # repo2docker refuses both binder/ and .binder/; environment.yml would shadow requirements.txt
    assert not (ROOT / ".binder").exists()
    assert not (BINDER / "environment.yml").exists()
    assert not (BINDER / "Dockerfile").exists()


def test_postbuild_is_an_executable_script():
    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable (chmod +x)"
    assert post.read_text().startswith("#!")


@pytest.mark.slow
def test_postbuild_autoloads_the_extension(tmp_path):
    from IPython.core.shellapp import InteractiveShellApp
    from traitlets.config.loader import PyFileConfigLoader

    env = {**os.environ, "IPYTHONDIR": str(tmp_path), "PYTHON": sys.executable}
    for _ in range(2):  # idempotent: running it again adds nothing
        subprocess.run([str(BINDER / "postBuild")], check=True, env=env, cwd=ROOT, timeout=120)
    config_file = tmp_path / "profile_default" / "ipython_kernel_config.py"
    assert config_file.read_text().count("cloudflow_nb") == 1
    config = PyFileConfigLoader(config_file.name, str(config_file.parent)).load_config()
    app = InteractiveShellApp(config=config)
    assert app.extensions == ["cloudflow_nb"]
