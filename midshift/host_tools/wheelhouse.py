"""A wheelhouse for a gateway's platform: midshift's own wheel and a wheel of every
dependency, for an install on the gateway with ``pip install --no-index`` (no network).

Built once per platform on a host that reaches the package index, then handed to every
``bundle --wheels DIR`` of gateways on that platform::

    DIR/midshift-VERSION-py3-none-any.whl    built from this source checkout
    DIR/<dependency>-*.whl                   pip download --only-binary=:all: for the target
    DIR/wheelhouse.json                      arch, Python, the requirements, each file's SHA-256

Only wheels: a gateway has no compiler, and a source distribution that needs one fails
there, far from whoever could fix it. A requirement with no wheel for the platform fails
here, naming it. Raspberry Pi OS 32-bit (armv7l) gets most wheels from the package index
but not all (``cffi``, needed by ``cryptography``): ``--extra-index-url`` adds an index
with armv7l builds (piwheels). docs/install.md lists what resolves where.

The target's environment markers are not the host's: ``pip download --platform`` still
evaluates markers against the running interpreter, so the ``pi`` extra (``lgpio``,
marked for arm machines) is added without its marker for arm targets.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import midshift.firmware

SOURCE = Path(midshift.firmware.__file__).resolve().parents[2]  # the checkout, with pyproject.toml
# glibc of the oldest supported OS: Debian 12 / Raspberry Pi OS Bookworm ships 2.36.
GLIBC_MINOR = 36
ARCHES = ("aarch64", "armv7l", "x86_64")
PYTHONS = ("3.11", "3.12", "3.13")


class WheelhouseError(ValueError):
    """The wheelhouse cannot be built; the message names the requirement and platform."""


def platform_tags(arch: str, glibc_minor: int = GLIBC_MINOR) -> list[str]:
    """Every manylinux tag a glibc-2.<minor> system of ``arch`` runs: pip expands these
    for the machine it runs on, not for ``--platform``. armv7l adds ``linux_armv7l``, the
    tag piwheels (and some projects on the index) build for Raspberry Pi OS."""
    if arch not in ARCHES:
        raise WheelhouseError(f"--arch {arch}: expected one of {', '.join(ARCHES)}")
    tags = [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 16, -1)]
    tags.append(f"manylinux2014_{arch}")
    if arch == "armv7l":
        tags.append("linux_armv7l")
    return tags


def requirements(arch: str, source: Path = SOURCE) -> list[str]:
    """The agent's requirements from pyproject.toml, plus the ``pi`` extra for arm."""
    try:
        project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        raise WheelhouseError(f"{source}: not a midshift source checkout (no readable "
                              "pyproject.toml): the wheelhouse builds midshift's own wheel "
                              "from one") from None
    reqs = list(project["dependencies"])
    if arch in ("aarch64", "armv7l"):
        reqs += [r.split(";")[0].strip() for r in project["optional-dependencies"]["pi"]]
    return reqs


def _pip(args: list[str], what: str, hint: str = "") -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode == 0:
        return
    out = proc.stdout + proc.stderr
    # A dependency without a wheel shows up as an unresolvable parent ("cryptography 48
    # depends on cffi>=2"): name the dependency, which is what an operator can act on.
    missing = sorted({re.sub(r"[<>=!~;\[ ].*", "", ln.split(" depends on ", 1)[1]) + " (for "
                      + ln.split()[0] + ")" for ln in out.splitlines() if " depends on " in ln})
    errors = [ln.removeprefix("ERROR: ") for ln in out.splitlines() if ln.startswith("ERROR:")]
    detail = (f"no wheel of {', '.join(missing)}" if missing
              else "; ".join(errors[:2] or out.strip().splitlines()[-3:]))
    raise WheelhouseError(f"{what}: {detail}{hint}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_wheelhouse(out: Path, arch: str, python: str = "3.11",
                     extra_index_urls: tuple[str, ...] = (),
                     source: Path = SOURCE) -> dict[str, Any]:
    """Fill ``out`` (created if missing) and write ``wheelhouse.json``; returns it."""
    if python not in PYTHONS:
        raise WheelhouseError(f"--python {python}: expected one of {', '.join(PYTHONS)}")
    tags = platform_tags(arch)
    reqs = requirements(arch, source)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):  # a wheelhouse is for one platform: start clean
        old.unlink()
    _pip(["wheel", "--no-deps", "-q", "-w", str(out), str(source)],
         f"building midshift's wheel from {source}")
    abi = "cp" + python.replace(".", "")
    platform_args = [a for t in tags for a in ("--platform", t)]
    index_args = [a for u in extra_index_urls for a in ("--extra-index-url", u)]
    _pip(["download", "--only-binary=:all:", "--python-version", python,
          "--implementation", "cp", "--abi", abi, *platform_args, *index_args,
          "-d", str(out), *reqs],
         f"not every requirement has a wheel for {arch} (Python {python})",
         "" if extra_index_urls or arch != "armv7l" else
         " (armv7l: add an index with armv7l builds, --extra-index-url; docs/install.md)")
    wheels = sorted(out.glob("*.whl"))
    doc = {"format": 1, "arch": arch, "python": python, "platform_tags": tags,
           "requirements": reqs, "extra_index_urls": list(extra_index_urls),
           "midshift": midshift.firmware.__version__,
           "wheels": {w.name: sha256(w) for w in wheels}}
    (out / "wheelhouse.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def load_wheelhouse(path: Path) -> dict[str, Any]:
    """A wheelhouse made by :func:`build_wheelhouse`, checked: every listed wheel present
    with its hash, midshift's own among them."""
    try:
        doc = json.loads((path / "wheelhouse.json").read_text())
    except (OSError, ValueError):
        raise WheelhouseError(f"--wheels {path}: not a wheelhouse (no readable "
                              "wheelhouse.json; make one with `python -m midshift.host_tools "
                              "wheelhouse --arch ARCH -o DIR`)") from None
    for name, digest in doc["wheels"].items():
        if not (path / name).is_file() or sha256(path / name) != digest:
            raise WheelhouseError(f"--wheels {path}: {name} is missing or changed since "
                                  "the wheelhouse was built; build it again")
    if not any(n.startswith("midshift-") for n in doc["wheels"]):
        raise WheelhouseError(f"--wheels {path}: has no midshift wheel")
    return doc
