"""The extension package for the fleet: pinned dependencies, their wheels, the zip.

    python scripts/extension_package.py lock        # rewrite deploy/extension/requirements.lock
    python scripts/extension_package.py check       # every pin has wheels for every target
    python scripts/extension_package.py build [-o DIR]   # build/<name>-<version>.zip

The guest agent unpacks the zip on VMs whose python3 is anything from 3.10 to
3.13, on x86_64 or aarch64, with no network to a package index. So the zip
carries a wheelhouse: one wheel per pinned distribution per target that needs
its own (CPython 3.10-3.13 x x86_64/aarch64, manylinux no newer than glibc
2.28, RHEL 8), the runtime's own wheel and a pip wheel that bootstraps the
install where ensurepip is missing (bin/handle.sh install).

``lock`` resolves pyproject.toml's dependencies for CPython 3.10 first, then
checks that those same versions resolve for 3.11-3.13 on both machines, so
one set of pins serves every target; a distribution needed on some versions
only gets a ``python_version`` marker. ``check`` resolves the project's wheel
again with the lock as constraints for every target and fails unless the
result is exactly the lock (complete, nothing missing, nothing newer) with a
binary wheel for each pin; it downloads those wheels into .tools/extension/,
keyed by the lock's hash, so a repeated check or build needs no network.

``build`` is reproducible: the runtime's wheel is built from the tracked
files (fixed modes) with SOURCE_DATE_EPOCH = the last commit's time, and the
zip's entries are sorted, dated from the same epoch, with fixed modes; two
builds of one commit are byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "deploy" / "extension"
LOCK = EXTENSION / "requirements.lock"
# The build backend the runtime's wheel is made with: pinned too, or a new
# setuptools release would change the bytes of "the same" build.
BACKEND_LOCK = EXTENSION / "build-backend.lock"
CACHE = REPO / ".tools" / "extension"

PYTHONS = ("3.10", "3.11", "3.12", "3.13")
ARCHES = ("x86_64", "aarch64")
# RHEL 8's glibc: no wheel that needs a newer one may enter the package.
GLIBC_FLOOR = (2, 28)
# The Python the pins are resolved for first: the oldest one, so that a
# release that dropped it is never picked.
BASE_PYTHON = PYTHONS[0]
BOOTSTRAP = "pip"


@dataclass(frozen=True)
class Target:
    python: str
    arch: str

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def name(self) -> str:
        return f"{self.abi}-{self.arch}"

    def platforms(self) -> list[str]:
        """Every manylinux tag a VM with glibc <= GLIBC_FLOOR accepts, newest first."""
        major, newest = GLIBC_FLOOR
        tags = [f"manylinux_{major}_{minor}_{self.arch}" for minor in range(newest, 4, -1)]
        tags.append(f"manylinux2014_{self.arch}")
        if self.arch == "x86_64":
            tags += [f"manylinux2010_{self.arch}", f"manylinux1_{self.arch}"]
        return tags

    def pip_options(self) -> list[str]:
        options = ["--only-binary=:all:", "--implementation", "cp"]
        options += ["--python-version", self.python]
        for abi in (self.abi, "abi3", "none"):
            options += ["--abi", abi]
        for platform in self.platforms():
            options += ["--platform", platform]
        return options


TARGETS = tuple(Target(py, arch) for py in PYTHONS for arch in ARCHES)


def _pip(*args: str) -> list[str]:
    # --isolated: no pip.conf, no PIP_* variables: the real index, the same
    # answer on every machine; the cache keeps repeated runs fast.
    return [
        sys.executable,
        "-m",
        "pip",
        "--isolated",
        "--disable-pip-version-check",
        "--cache-dir",
        str(CACHE / "pip-cache"),
        *args,
    ]


def _run(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}")
    return proc


# --- the project's own wheel -----------------------------------------------------------


def source_date_epoch() -> int:
    out = _run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"]).stdout
    return int(out.strip())


def tracked_tree(dest: Path) -> None:
    """The tracked files as they are in the work tree, with git's two modes only."""
    listing = _run(["git", "-C", str(REPO), "ls-files", "-s", "-z"]).stdout
    for entry in listing.split("\0"):
        if not entry:
            continue
        meta, path = entry.split("\t", 1)
        mode = meta.split()[0]
        if mode not in ("100644", "100755"):
            continue  # symlinks, submodules: none are part of the package
        src, out = REPO / path, dest / path
        if not src.exists():
            continue  # deleted in the work tree
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(src.read_bytes())
        out.chmod(0o755 if mode == "100755" else 0o644)


def build_project_wheel(out_dir: Path, epoch: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snapshot-runtime-src-") as tmp:
        src = Path(tmp) / "src"
        tracked_tree(src)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        if BACKEND_LOCK.exists():
            env["PIP_CONSTRAINT"] = str(BACKEND_LOCK)
        _run(
            [sys.executable, "-m", "build", "--wheel", "--outdir", str(out_dir), str(src)], env=env
        )
    (wheel,) = out_dir.glob("snapshot_runtime-*.whl")
    return wheel


def project_version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise SystemExit("no version in pyproject.toml")


# --- the lock ----------------------------------------------------------------------------


def resolve(target: Target, requirement: str, constraints: Path | None) -> dict[str, str]:
    """What pip installs for ``requirement`` on ``target``: {name: version}, ours excluded."""
    with tempfile.TemporaryDirectory(prefix="resolve-") as tmp:
        report = Path(tmp) / "report.json"
        argv = _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report")
        argv += [str(report), "--target", str(Path(tmp) / "t"), *target.pip_options()]
        if constraints is not None:
            argv += ["--constraint", str(constraints)]
        proc = subprocess.run([*argv, requirement], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ResolveError(f"{target.name}: {proc.stderr.strip()[-2000:]}")
        doc = json.loads(report.read_text())
    pins: dict[str, str] = {}
    for item in doc["install"]:
        name = canonicalize_name(item["metadata"]["name"])
        if name != "snapshot-runtime":
            pins[name] = item["metadata"]["version"]
    return pins


class ResolveError(Exception):
    pass


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str | None = None

    def line(self) -> str:
        return f"{self.name}=={self.version}" + (f"; {self.marker}" if self.marker else "")


def read_lock(path: Path = LOCK) -> list[Pin]:
    pins = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        pins.append(Pin(canonicalize_name(req.name), spec.version, str(req.marker or "") or None))
    return pins


def _marker_for(pythons: Iterable[str]) -> str | None:
    have = sorted(pythons, key=lambda v: tuple(int(x) for x in v.split(".")))
    if have == list(PYTHONS):
        return None
    if have == list(PYTHONS[: len(have)]):
        return f'python_version < "{PYTHONS[len(have)]}"'
    if have == list(PYTHONS[-len(have) :]):
        return f'python_version >= "{have[0]}"'
    return " or ".join(f'python_version == "{v}"' for v in have)


def build_requires() -> list[str]:
    """[build-system] requires from pyproject.toml (one line; no TOML parser on 3.10)."""
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("requires = ["):
            return list(json.loads(line.split("=", 1)[1]))
    raise SystemExit("no [build-system] requires in pyproject.toml")


def make_backend_lock() -> None:
    target = Target(BASE_PYTHON, ARCHES[0])
    pins: dict[str, str] = {}
    for requirement in build_requires():
        pins.update(resolve(target, requirement, None))
    lines = ["# Generated by `make extension-lock`: the build backend of the runtime's wheel."]
    lines += [f"{n}=={v}" for n, v in sorted(pins.items())]
    BACKEND_LOCK.write_text("\n".join(lines) + "\n")
    print(f"wrote {BACKEND_LOCK.relative_to(REPO)}: {', '.join(lines[1:])}")


def make_lock(out_dir: Path) -> None:
    make_backend_lock()
    wheel = build_project_wheel(out_dir / "own", source_date_epoch())
    base = resolve(Target(BASE_PYTHON, ARCHES[0]), str(wheel), None)
    bootstrap = resolve(Target(BASE_PYTHON, ARCHES[0]), BOOTSTRAP, None)
    constraints = out_dir / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in base.items()))
    seen: dict[str, set[str]] = {}
    for target in TARGETS:
        try:
            pins = resolve(target, str(wheel), constraints)
        except ResolveError as exc:
            sys.exit(f"the {BASE_PYTHON} pins do not resolve for {exc}")
        for name, version in pins.items():
            if base.get(name) != version:
                sys.exit(f"{target.name} needs {name}=={version}, not in the {BASE_PYTHON} pins")
            seen.setdefault(name, set()).add(target.python)
    header = [
        "# Generated by `make extension-lock` (scripts/extension_package.py lock): the runtime's",
        "# dependencies (pyproject.toml) and theirs, one version each for CPython 3.10-3.13 on",
        "# x86_64 and aarch64 (manylinux, glibc <= 2.28). `make extension-check` proves every",
        "# line has its wheels; the extension zip installs exactly these, offline.",
    ]
    body = [Pin(n, base[n], _marker_for(seen[n])).line() for n in sorted(seen)]
    (version,) = bootstrap.values()
    body.append(f"# {BOOTSTRAP}: not a dependency; bootstraps the offline install on the VM")
    body.append(f"{BOOTSTRAP}=={version}")
    LOCK.write_text("\n".join([*header, *body]) + "\n")
    print(f"wrote {LOCK.relative_to(REPO)}: {len(body) - 1} pins")


# --- the wheels --------------------------------------------------------------------------


def lock_key() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]


def runtime_pins() -> list[Pin]:
    return [p for p in read_lock() if p.name != BOOTSTRAP]


def bootstrap_pin() -> Pin:
    (pin,) = [p for p in read_lock() if p.name == BOOTSTRAP]
    return pin


def _wheel_pin(path: Path) -> tuple[str, str]:
    name, version, _, _ = parse_wheel_filename(path.name)
    return canonicalize_name(name), str(version)


def fetch_target(target: Target, wheel: Path, pins: list[Pin]) -> list[Path]:
    """The target's wheels, checked against the lock; downloaded once per lock."""
    where = CACHE / "wheels" / lock_key() / target.name
    done = where / ".complete"
    if not done.exists():
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        constraints = where / "constraints.txt"
        constraints.write_text("".join(f"{p.name}=={p.version}\n" for p in pins))
        try:
            resolved = resolve(target, str(wheel), constraints)
        except ResolveError as exc:
            sys.exit(f"the lock does not resolve for {exc}")
        wanted = {p.name: p.version for p in pins if _applies(p, target)}
        if resolved != wanted:
            extra = sorted(set(resolved.items()) ^ set(wanted.items()))
            sys.exit(f"{target.name}: the lock is stale (make extension-lock): {extra}")
        argv = _pip("download", "--no-deps", "--dest", str(where), *target.pip_options())
        _run([*argv, *(f"{n}=={v}" for n, v in sorted(wanted.items()))])
        constraints.unlink()
        done.write_text(json.dumps(wanted, sort_keys=True))
    wheels = sorted(where.glob("*.whl"))
    got = dict(_wheel_pin(w) for w in wheels)
    if got != json.loads(done.read_text()):
        sys.exit(f"{where}: the cached wheels do not match the lock; remove the directory")
    return wheels


def _applies(pin: Pin, target: Target) -> bool:
    if pin.marker is None:
        return True
    req = Requirement(f"{pin.name}; {pin.marker}")
    assert req.marker is not None
    return req.marker.evaluate({"python_version": target.python})


def fetch_bootstrap() -> Path:
    pin = bootstrap_pin()
    where = CACHE / "wheels" / lock_key() / "bootstrap"
    found = sorted(where.glob("*.whl"))
    if not found:
        target = Target(BASE_PYTHON, ARCHES[0])
        argv = _pip("download", "--no-deps", "--dest", str(where), *target.pip_options())
        _run([*argv, f"{pin.name}=={pin.version}"])
        found = sorted(where.glob("*.whl"))
    (wheel,) = found
    return wheel


def check_lock_matches_pyproject(wheel: Path) -> None:
    """Every dependency pyproject.toml declares is pinned, at a version it allows."""
    pins = {p.name: p.version for p in runtime_pins()}
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        lines = zf.read(meta).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist: "):
            continue
        req = Requirement(line.removeprefix("Requires-Dist: "))
        if req.marker is not None and "extra" in str(req.marker):
            continue
        name = canonicalize_name(req.name)
        if name not in pins or not req.specifier.contains(pins[name], prereleases=True):
            sys.exit(f"{req} is not pinned in {LOCK.name} (make extension-lock)")


def wheelhouse(work: Path, epoch: int) -> tuple[Path, list[Path]]:
    """(the runtime's wheel, every other wheel the package carries), fetched and checked."""
    own = build_project_wheel(work / "own", epoch)
    check_lock_matches_pyproject(own)
    pins = runtime_pins()
    by_name: dict[str, Path] = {}
    for target in TARGETS:
        for path in fetch_target(target, own, pins):
            known = by_name.get(path.name)
            if known is not None and known.read_bytes() != path.read_bytes():
                sys.exit(f"{path.name}: two different files under one name")
            by_name.setdefault(path.name, path)
    by_name.setdefault(fetch_bootstrap().name, fetch_bootstrap())
    return own, [by_name[n] for n in sorted(by_name)]


def check() -> None:
    with tempfile.TemporaryDirectory(prefix="extension-check-") as tmp:
        _, wheels = wheelhouse(Path(tmp), source_date_epoch())
    print(
        f"{LOCK.relative_to(REPO)}: {len(runtime_pins())} pins have wheels for "
        f"{len(TARGETS)} targets ({', '.join(t.name for t in TARGETS)}), "
        f"glibc <= {GLIBC_FLOOR[0]}.{GLIBC_FLOOR[1]}; {len(wheels)} wheel files"
    )


# --- the zip -----------------------------------------------------------------------------


def _hashes(paths: Iterable[Path]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in paths:
        name, _ = _wheel_pin(path)
        out.setdefault(name, []).append(hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def install_requirements(own: Path, wheels: list[Path]) -> str:
    """wheelhouse/requirements.txt: every pin with the hash of each of its files, so the
    VM's pip installs nothing but what this zip carries (--require-hashes)."""
    hashes = _hashes([own, *wheels])
    pins = [*runtime_pins(), Pin("snapshot-runtime", project_version())]
    lines = ["# Installed by bin/handle.sh install: pip --no-index --require-hashes."]
    for pin in sorted(pins, key=lambda p: p.name):
        hash_opts = " ".join(f"--hash=sha256:{h}" for h in sorted(hashes[pin.name]))
        lines.append(f"{pin.line()} {hash_opts}")
    return "\n".join(lines) + "\n"


def manifest() -> bytes:
    doc = json.loads((EXTENSION / "HandlerManifest.json").read_text())
    version = doc[0]["version"]
    if version != project_version():
        sys.exit(f"HandlerManifest.json version {version!r} is not {project_version()!r}")
    return (EXTENSION / "HandlerManifest.json").read_bytes()


def _entry(name: str, epoch: int, mode: int) -> zipfile.ZipInfo:
    # Zip dates are local time in 1980..2107 with 2 s resolution: take the
    # epoch as UTC, clamped, so every build host writes the same bytes.
    stamp = time.gmtime(max(epoch, 315532800))[:6]
    info = zipfile.ZipInfo(name, date_time=stamp)
    info.create_system = 3  # unix: the mode below is what unzip restores
    info.external_attr = (stat.S_IFREG | mode) << 16
    return info


def build(out_dir: Path) -> Path:
    epoch = source_date_epoch()
    name = json.loads((EXTENSION / "HandlerManifest.json").read_text())[0]["name"]
    with tempfile.TemporaryDirectory(prefix="extension-build-") as tmp:
        own, wheels = wheelhouse(Path(tmp), epoch)
        files: dict[str, tuple[bytes, int]] = {
            "HandlerManifest.json": (manifest(), 0o644),
            "README.md": ((EXTENSION / "README.md").read_bytes(), 0o644),
            "bin/handle.sh": ((EXTENSION / "bin" / "handle.sh").read_bytes(), 0o755),
            "wheelhouse/requirements.txt": (install_requirements(own, wheels).encode(), 0o644),
        }
        for path in [own, *wheels]:
            files[f"wheelhouse/{path.name}"] = (path.read_bytes(), 0o644)
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"{name}-{project_version()}.zip"
        partial = out.with_suffix(".zip.partial")
        with zipfile.ZipFile(partial, "w") as zf:
            for entry in sorted(files):
                data, mode = files[entry]
                # Wheels are zips already: stored, not deflated again.
                how = zipfile.ZIP_STORED if entry.endswith(".whl") else zipfile.ZIP_DEFLATED
                zf.writestr(_entry(entry, epoch, mode), data, compress_type=how, compresslevel=9)
        partial.replace(out)
    print(f"{out} ({out.stat().st_size} bytes, {len(files)} files, SOURCE_DATE_EPOCH={epoch})")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lock", help="rewrite deploy/extension/requirements.lock")
    sub.add_parser("check", help="every pin has wheels for every target (needs the index once)")
    b = sub.add_parser("build", help="the extension zip")
    b.add_argument("-o", "--out-dir", type=Path, default=REPO / "build")
    args = parser.parse_args(argv)
    if args.command == "lock":
        with tempfile.TemporaryDirectory(prefix="extension-lock-") as tmp:
            make_lock(Path(tmp))
    elif args.command == "check":
        check()
    else:
        build(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
