"""Podman for the image test: the flags these machines need, a stand-in base image, the build.

Debian's podman runs here rootful with the vfs storage driver, runc and cgroupfs, and every
container uses the host's network (loopback only: no bridge networks). Docker Hub cannot be
reached, so ``python:3.11-slim`` is stood in for by Debian 12's own Python 3.11 made with
debootstrap and imported under that very name; it is made once and kept (``podman image exists``).
The project image is tagged with a hash of what goes into it (the Dockerfile, .dockerignore and
the files it lets through), so it is built again only when one of those changes.

Run as a script (``python -m tests.podman``) it makes both images and says how long each took.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "docker.io/library/python:3.11-slim"
IMAGE_REPO = "localhost/atom-actors-test"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
GLOBAL = ["--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
# What the Dockerfile copies (with .dockerignore, the build context) — less README.md, which the
# wheel carries as its description only: everyone edits it, and it changes nothing that runs.
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "atom_actors", "config/spheres.toml",
           "clients/js/src")


def missing_tools() -> list[str]:
    return [tool for tool in ("podman", "runc", "debootstrap")
            if not shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")]


def podman(*args: str, check: bool = True, timeout: float = 120,
           capture: bool = True) -> subprocess.CompletedProcess[str]:
    """``podman <the machine's global flags> args``."""
    done = subprocess.run(["podman", *GLOBAL, *args], capture_output=capture, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout or ''}{done.stderr or ''}")
    return done


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def make_base_image() -> None:
    """Debian 12 minbase with python3, pip and venv, imported as python:3.11-slim."""
    with tempfile.TemporaryDirectory(prefix="atom-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase",
                        "--include=python3,python3-pip,python3-venv,ca-certificates",
                        "bookworm", str(rootfs)], check=True, capture_output=True, timeout=900)
        (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        (rootfs / "usr/bin/python").unlink(missing_ok=True)
        (rootfs / "usr/bin/python").symlink_to("python3")
        # What python:3.11-slim leaves out too; fewer files also make each container quicker to
        # create (vfs copies the whole image for every container).
        for path in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/info", "usr/share/locale"):
            shutil.rmtree(rootfs / path, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", *GLOBAL, "import", "-", BASE_IMAGE], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=600)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise RuntimeError(f"podman import failed: {imported.stderr}")


def ensure_base_image() -> float:
    """Make the stand-in base unless an image of that name is here; seconds it took (0: kept)."""
    if image_exists(BASE_IMAGE):
        return 0.0
    started = time.monotonic()
    make_base_image()
    return time.monotonic() - started


def context_hash() -> str:
    """A hash of the build context as the Dockerfile sees it."""
    digest = hashlib.sha256()
    for name in CONTEXT:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_image() -> tuple[str, float]:
    """The project image for the current sources, built if needed; (name, seconds it took)."""
    name = f"{IMAGE_REPO}:{context_hash()}"
    if image_exists(name):
        return name, 0.0
    started = time.monotonic()
    # --layers=false: no intermediate image per instruction (each a whole copy under vfs);
    # --force-rm: no working container left behind by a failed build.
    podman("build", "--pull=never", "--layers=false", "--force-rm", "--network", "host",
           "--format", "docker", *ULIMITS, "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-t", name,
           "-f", str(ROOT / "Dockerfile"), str(ROOT), timeout=900)
    took = time.monotonic() - started
    # Earlier builds of other sources are of no more use: keep the disk from filling up.
    for line in podman("images", "--format", "{{.Repository}}:{{.Tag}}",
                       "--filter", f"reference={IMAGE_REPO}").stdout.split():
        if line != name:
            podman("rmi", "--force", line, check=False)
    podman("image", "prune", "--force", check=False)   # the build stage's layers
    return name, took


def image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


if __name__ == "__main__":
    print(f"base image: {ensure_base_image():.0f} s", file=sys.stderr)
    built, seconds = ensure_image()
    print(f"{built}: {seconds:.0f} s, {image_size(built) / 1e6:.0f} MB", file=sys.stderr)
