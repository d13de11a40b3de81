"""What users install is what was tested: the wheel and sdist `python -m build` makes, and the
Install commands of docs/install.md, run as written on this Debian, then `systemd-analyze verify`
on the units they installed.

The Install commands write to /etc, /opt, /usr/local and /var as root. They run in a private
mount namespace (unshare) where those directories, and HOME for pip's cache, are overlays whose
changes land in a tmpfs, and where everything else is read-only (/tmp is a tmpfs): the host is left as it was,
and a command that writes anywhere else fails the test.
"""

import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
from test_systemd import unit_settings

import certrenew

ROOT = Path(__file__).resolve().parents[2]
INSTALL_PAGE = (ROOT / "docs" / "install.md").read_text()
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # root's, as Debian ships it
OVERLAID = ("/etc", "/opt", "/usr/local", "/var")

# Set up the namespace: a tmpfs on /tmp (systemd-analyze makes its working directory there) holds
# the overlays' changes and the unpacked sdist, read from $1 before that tmpfs covers it.
SANDBOX = """\
set -euo pipefail
exec 3<"$1"
mount -t tmpfs certrenew-install /tmp
for dir in {overlaid} "$HOME"; do
    mkdir -p "/tmp/upper$dir" "/tmp/work$dir"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=/tmp/upper$dir,workdir=/tmp/work$dir" "$dir"
done
mkdir /tmp/src
tar -xzf - -C /tmp/src --strip-components=1 <&3
mount -o remount,bind,ro /
cd /tmp/src
set -x
""".format(overlaid=" ".join(OVERLAID))


def install_commands() -> list[str]:
    """The commands of the docs' Install page: its first sh block, one a line."""
    block = re.search(r"^```sh\n(.*?)^```", INSTALL_PAGE, re.M | re.S)
    assert block, "docs/install.md has no sh block"
    return block.group(1).splitlines()


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and, built from it, the wheel, as a release would build them."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    return out


def test_the_wheel_runs_from_a_clean_virtualenv(dist, tmp_path):
    (wheel,) = dist.glob("certrenew-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "-q", wheel], check=True, timeout=300)
    version = subprocess.run([bin_dir / "certrenew", "--version"], capture_output=True, text=True, timeout=60)
    assert (version.returncode, version.stdout) == (0, f"certrenew {certrenew.__version__}\n"), version.stderr
    usage = subprocess.run([bin_dir / "certrenew", "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: certrenew"), usage.stderr


def test_the_wheel_holds_every_module(dist):
    """Every module of the source tree, a new subpackage's too (pyproject lists packages by name)."""
    (wheel,) = dist.glob("certrenew-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        modules = {name for name in archive.namelist() if name.endswith(".py")}
    assert modules == {str(path.relative_to(ROOT)) for path in (ROOT / "certrenew").rglob("*.py")}


def test_the_sdist_holds_the_source_the_units_and_the_docs(dist):
    (sdist,) = dist.glob("certrenew-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    shipped = ["README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml", "Dockerfile",
               *(str(path.relative_to(ROOT)) for folder in ("certrenew", "systemd", "haproxy", "examples", "docs")
                 for path in (ROOT / folder).rglob("*") if path.is_file() and "__pycache__" not in path.parts)]
    assert set(shipped) - names == set()


@pytest.mark.skipif(os.geteuid() != 0, reason="the Install commands run as root, in a mount namespace only root may make")
def test_the_documented_install_works_and_its_units_verify(dist):
    """The Install block as written, but for apt (the packages must be installed already)
    and systemctl (systemd is not PID 1 here): `systemd-analyze verify` stands in for it,
    which fails if ExecStart's program is missing; then certrenew runs as its user (and writes
    HAProxy's placeholder into the ssl dir), and
    each path a unit must find (ReadWritePaths= without "-", a file: Documentation=) exists."""
    (sdist,) = dist.glob("certrenew-*.tar.gz")
    script, packages, units = [SANDBOX], [], []
    for line in install_commands():
        command = line.partition("#")[0].split()
        if command[:3] == ["apt-get", "install", "-y"]:
            packages += command[3:]
        elif command[:1] == ["systemctl"]:
            assert command == ["systemctl", "daemon-reload"], line  # any other step is a new one to test
        else:
            script.append(line)
            if command[:1] == ["install"] and command[-1] == "/etc/systemd/system/":
                units = ["/etc/systemd/system/" + Path(unit).name for unit in command[3:-1]]
    assert packages == ["python3-venv"]
    assert sorted(Path(unit).name for unit in units) == sorted(path.name for path in (ROOT / "systemd").iterdir())
    subprocess.run(["dpkg-query", "--show", *packages], check=True, capture_output=True, timeout=60)
    needed = {value.lstrip("-") for unit in (ROOT / "systemd").glob("*.service")
              for key, value in unit_settings(unit, "Service") if key == "ReadWritePaths" and not value.startswith("-")}
    needed |= {uri.removeprefix("file:") for unit in (ROOT / "systemd").glob("*.service")
               for key, value in unit_settings(unit, "Unit") if key == "Documentation" for uri in value.split()}
    assert needed and all(path.startswith("/") for path in needed)  # only file: URIs: nothing else can be checked here
    script += [
        f"verdict=$(systemd-analyze verify --man=no {' '.join(units)} 2>&1)",
        '[ -z "$verdict" ] || { echo "systemd-analyze verify: $verdict" >&2; exit 1; }',
        "runuser -u certrenew -- certrenew --version",
        "runuser -u certrenew -- certrenew bootstrap-ssl-dir",  # set-up's next step: the ssl dir is the user's
        f"ls -d {' '.join(sorted(needed))}",
    ]
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", "\n".join(script),
                             "install", str(sdist)],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PATH": DEBIAN_PATH})
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"certrenew {certrenew.__version__}" in result.stdout.splitlines(), result.stdout
