"""`scripts/setup` as a new user on Debian 12 runs it: a `.venv` in the checkout made with
Debian's own python3 (which refuses `pip install`, PEP 668), Debian's python3.X-venv added
when it is missing, nothing installed on a second run, a reinstall when pyproject.toml
changes, and a venv of another Python or a broken one made again.

Each test works on one copy of the checkout (module scope), in the order written; the
first makes the venv. Making it takes a minute or so (pip, from pip's cache when warm)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.install.checkout import DEBIAN_PYTHON, copy_tracked, debian_python_ok, new_user_env

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(not debian_python_ok(), reason="needs Debian's /usr/bin/python3 >= 3.11"),
]


def debian_version() -> str:
    """Debian python3's major.minor: its venv package is python{this}-venv."""
    out = subprocess.run([str(DEBIAN_PYTHON), "-c", "import sys; print(*sys.version_info[:2], sep='.')"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


@dataclass
class Run:
    returncode: int
    stderr: str


def run_setup(checkout: Path, home: Path, *args: str, wrap: list[str] | None = None, **env: str) -> Run:
    """`scripts/setup` in ``checkout`` with a new user's environment (Debian's python3 first)."""
    done = subprocess.run(
        [*(wrap or []), "scripts/setup", *args],
        cwd=checkout,
        env=new_user_env(home, **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return Run(done.returncode, done.stdout + done.stderr)


def venv_config(checkout: Path) -> dict[str, str]:
    lines = (checkout / ".venv" / "pyvenv.cfg").read_text().splitlines()
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in lines)}


def venv_python_version(python: Path) -> str:
    out = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def other_python() -> Path | None:
    """An interpreter >= 3.11 that is not Debian's (the one running the tests, if it is not)."""
    base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    return None if base == DEBIAN_PYTHON.resolve() else base


def can_overlay() -> bool:
    """Root, with mount namespaces and overlayfs: Debian packages can be removed and added
    in a private view of /usr, /var and /etc that the machine never sees."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("apt-get") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


# In its own mount namespace: /usr, /var and /etc become overlays (writes go to $1), the
# python3.X-venv packages are removed, then the rest of the arguments run.
WITHOUT_VENV_PACKAGE = r"""
set -e
scratch=$1; shift
for dir in /usr /var /etc; do
    mkdir -p "$scratch$dir/upper" "$scratch$dir/work"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$scratch$dir/upper,workdir=$scratch$dir/work" "$dir"
done
pkgs=$(dpkg-query -W -f='${Package} ${Status}\n' python3-venv "python$VERSION-venv" 2>/dev/null \
    | awk '/install ok installed/ {print $1}')
[ -z "$pkgs" ] || PATH="$PATH:/usr/sbin:/sbin" dpkg --remove $pkgs >/dev/null
if /usr/bin/python3 -c "import ensurepip" 2>/dev/null; then echo "ensurepip still there" >&2; exit 97; fi
exec "$@"
"""


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_tracked(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def first_run(checkout: Path, home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The first `scripts/setup`, over a `.venv` someone made with another Python (when this
    machine has one) and, as root, without Debian's python3.X-venv package."""
    other = other_python()
    if other is not None:
        subprocess.run([str(other), "-m", "venv", str(checkout / ".venv")], check=True, timeout=300)
    wrap = None
    if can_overlay():
        scratch = tmp_path_factory.mktemp("overlay")
        namespace = ["unshare", "-m", "--propagation", "private", "env", f"VERSION={debian_version()}"]
        wrap = [*namespace, "bash", "-c", WITHOUT_VENV_PACKAGE, "overlay", str(scratch)]
    yield run_setup(checkout, home, wrap=wrap)


def test_first_run_makes_the_venv_with_debian_python(checkout: Path, first_run: Run) -> None:
    assert first_run.returncode == 0, first_run.stderr
    if can_overlay():
        # The package was gone (the wrapper checked) and setup put it back, for this version.
        assert f"setup: installing Debian packages: python{debian_version()}-venv" in first_run.stderr
    if other_python() is not None:
        assert "setup: .venv is broken or of another Python: making it again" in first_run.stderr
    assert "setup: installing the skyrelay Python package into .venv" in first_run.stderr
    config = venv_config(checkout)
    assert config["home"] == str(DEBIAN_PYTHON.parent)
    python = checkout / ".venv" / "bin" / "python"
    assert venv_python_version(python) == venv_python_version(DEBIAN_PYTHON)
    # skyrelay and its dependencies are in the venv, and nothing of the system Python was touched.
    out = subprocess.run(
        [str(python), "-I", "-c", "import importlib.metadata as m, aiortc, gateway; "
         "print(m.version('skyrelay'), gateway.__file__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.split()[1] == str(checkout / "gateway" / "__init__.py")  # editable
    system = subprocess.run([str(DEBIAN_PYTHON), "-I", "-c", "import gateway"], capture_output=True)
    assert system.returncode != 0


def test_second_run_installs_nothing(checkout: Path, home: Path, first_run: Run) -> None:
    python = checkout / ".venv" / "bin" / "python"
    before = python.lstat().st_mtime_ns
    again = run_setup(checkout, home)
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    assert python.lstat().st_mtime_ns == before


def test_a_changed_pyproject_reinstalls_into_the_same_venv(
    checkout: Path, home: Path, first_run: Run
) -> None:
    python = checkout / ".venv" / "bin" / "python"
    before = python.lstat().st_mtime_ns
    stamp = checkout / ".venv" / "skyrelay-setup-0.stamp"
    edited = time.time()  # pyproject.toml edited after the last install
    os.utime(stamp, (edited - 60, edited - 60))
    os.utime(checkout / "pyproject.toml", (edited, edited))
    again = run_setup(checkout, home)
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines() == ["setup: installing the skyrelay Python package into .venv"]
    assert python.lstat().st_mtime_ns == before
    assert run_setup(checkout, home).stderr == ""


def test_the_first_python3_on_path_that_is_new_enough(
    checkout: Path, home: Path, first_run: Run, tmp_path: Path
) -> None:
    # An old python3 (it fails the version check as Python 3.9 would) comes first on PATH:
    # setup passes over it to Debian's, whose venv is already there.
    old = tmp_path / "old"
    old.mkdir()
    (old / "python3").write_text("#!/bin/sh\nexit 1\n")
    (old / "python3").chmod(0o755)
    again = run_setup(checkout, home, PATH=f"{old}:/usr/local/bin:/usr/bin:/bin")
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""
    # The venv's own python first on PATH (an activated .venv) is taken as what it is made from.
    venv_bin = checkout / ".venv" / "bin"
    again = run_setup(checkout, home, PATH=f"{venv_bin}:/usr/local/bin:/usr/bin:/bin")
    assert (again.returncode, again.stderr) == (0, "")
    # SKYRELAY_PYTHON overrides PATH, and must be new enough.
    again = run_setup(checkout, home, SKYRELAY_PYTHON=str(DEBIAN_PYTHON))
    assert (again.returncode, again.stderr) == (0, "")
    refused = run_setup(checkout, home, SKYRELAY_PYTHON=str(old / "python3"))
    assert refused.returncode == 1
    assert "is not a Python >= 3.11" in refused.stderr
    # No new enough python3 on PATH at all (only the tools setup needs besides).
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("bash", "dirname", "realpath", "grep", "dpkg-query", "id", "ffmpeg"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    none = run_setup(checkout, home, PATH=f"{old}:{tools}")
    assert none.returncode == 1
    assert "setup: Python >= 3.11 is required: no python3 on PATH is" in none.stderr


def test_a_broken_venv_is_made_again(checkout: Path, home: Path, first_run: Run) -> None:
    shutil.rmtree(next((checkout / ".venv" / "lib").glob("python3*/site-packages/pip")))
    again = run_setup(checkout, home)
    assert again.returncode == 0, again.stderr
    assert "setup: .venv is broken or of another Python: making it again" in again.stderr
    assert "setup: installing the skyrelay Python package into .venv" in again.stderr
    check = [str(checkout / ".venv" / "bin" / "python"), "-I", "-c", "import pip, gateway"]
    assert subprocess.run(check, capture_output=True).returncode == 0


def test_the_test_extras_come_with_the_runtime(checkout: Path, home: Path, first_run: Run) -> None:
    with_tests = run_setup(checkout, home, "--test")
    assert with_tests.returncode == 0, with_tests.stderr
    assert "setup: installing the skyrelay Python package[test] into .venv" in with_tests.stderr
    bin_dir = checkout / ".venv" / "bin"
    check = [str(bin_dir / "python"), "-I", "-c", "import pytest, hypothesis, numpy, playwright"]
    assert subprocess.run(check, capture_output=True).returncode == 0
    assert (bin_dir / "ruff").exists()
    # Then neither a plain run nor another --test run has anything to install.
    assert run_setup(checkout, home) == Run(0, "")
    assert run_setup(checkout, home, "--test") == Run(0, "")
