#!/usr/bin/env python3
"""Rehearse the Docker image without a Docker engine: the Dockerfile itself, interpreted
instruction by instruction in a Debian bookworm root filesystem, then the demo run inside with
the network cut off, then ``verify`` on what it wrote.

    sudo python3 scripts/rehearse_image.py [--root DIR] [--keep] [--build-arg NAME=VALUE ...]

Needs root, ``debootstrap`` (``apt-get install debootstrap``) and ``unshare`` (util-linux).
Stdlib only: it runs with the host's Python, before any venv exists. Takes ~25 minutes on 2
cores (most of it the demo). Writes ``benchmarks/results/image_rehearsal.{json,md}``, which
``benchmarks.first_run`` reads for ``image_rehearsal_ok``.

Why interpret the Dockerfile rather than keep a second list of steps: the rehearsal cannot
drift from the image. Every instruction the Dockerfile uses must be one this script performs
(``tests/test_docker.py`` parses the real Dockerfile with it), so a new kind of instruction
fails the tests until the rehearsal learns it.

What differs from ``docker build`` (and so what only a real build shows):

* ``FROM python:3.11-slim-bookworm`` becomes ``debootstrap --variant=minbase bookworm`` plus
  Debian's ``python3.11`` and ``python3.11-venv``: the same Debian release and Python minor
  version, but Debian's Python build instead of the image's own, and none of its other layers.
* Packages come from the registries as this machine reaches them: the host's apt sources and
  pip configuration (index, find-links, local wheel directories bind-mounted read-only), and
  ``TORCH_INDEX`` defaults to the host's pip extra index. Docker's network and registry setup
  are not exercised.
* No layers, no image cache, no ``docker run`` (its ``-v`` mount becomes the root's ``/out``);
  the user, the working directory, the environment and the entrypoint are the Dockerfile's.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SUITE = "bookworm"
BASE_PACKAGES = ("python3.11", "python3.11-venv", "ca-certificates", "passwd")  # what python:3.11-slim brings
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
HOST_PIP_FILES = ("/etc/pip.conf", "/etc/xdg/pip", "/etc/ssl/certs/ca-certificates.crt")  # how pip reaches registries here
PROXY_ARGS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")  # Docker's predefined ARGs
DEMO_ARGS = ("run", "recipes/demo.yaml", "--out", "/out")
KNOWN = ("FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "ENTRYPOINT", "CMD")

log = logging.getLogger("rehearse_image")


class RehearsalError(RuntimeError):
    """A step of the image failed, with what failed in one line."""


@dataclass
class Instruction:
    keyword: str
    argument: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped. Refuses an
    instruction this rehearsal cannot perform, naming it and its line."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, argument = full.partition(" ")
        keyword = keyword.upper()
        if keyword not in KNOWN:
            raise RehearsalError(f"Dockerfile line {start}: the rehearsal does not perform {keyword} "
                                 f"(it knows {', '.join(KNOWN)})")
        instructions.append(Instruction(keyword, argument.strip(), start))
    return instructions


def expand(value: str, variables: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` as Docker expands them in ENV, COPY and WORKDIR (unset: empty)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def parse_assignments(argument: str, variables: dict[str, str]) -> dict[str, str]:
    """``A=1 B="two words" C=$A`` (ENV / ARG), each value expanded with what came before it."""
    out: dict[str, str] = {}
    for token in shlex.split(argument):
        name, sep, value = token.partition("=")
        if not sep:
            raise RehearsalError(f"expected NAME=VALUE, got '{token}'")
        out[name] = expand(value, {**variables, **out})
    return out


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's ``patterns`` exclude ``relative`` (a path or any of its parents)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        anywhere = pattern.startswith("**/")
        pattern = pattern[3:] if anywhere else pattern
        for prefix in prefixes:
            candidates = [prefix.rsplit("/", 1)[-1]] if anywhere else [prefix]
            if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
                return True
    return False


def read_dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@dataclass
class Image:
    """The state a Dockerfile builds: a root filesystem, its environment, user and directory."""

    root: Path
    context: Path
    build_args: dict[str, str]
    env: dict[str, str] = field(default_factory=lambda: dict(BASE_ENV))
    args: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    # -- running commands inside -------------------------------------------------------------
    def command(self, argv: list[str], user: str | None = None, env: dict[str, str] | None = None) -> list[str]:
        """``argv`` run in the root as ``user`` in the working directory with the image's env."""
        user = user or self.user
        variables = {**self.env, **(env or {}), "HOME": self._home(user), "USER": user}
        inner = ["env", "-i", *(f"{k}={v}" for k, v in variables.items()), "/bin/sh", "-c",
                 f"cd {shlex.quote(self.workdir)} && exec {shlex.join(argv)}"]
        # setpriv (util-linux, in every Debian) switches user without PAM, as the engine does
        as_user = [] if user == "root" else ["setpriv", f"--reuid={user}", f"--regid={self._group(user)}",
                                             "--init-groups", "--"]
        return ["chroot", str(self.root), *as_user, *inner]

    def run(self, argv: list[str], what: str, offline: bool = False, capture: bool = False) -> str:
        full = self.command(argv)
        if offline:  # a fresh network namespace: no interface but loopback (brought up, as in docker --network none)
            full = ["unshare", "--net", "--", "/bin/sh", "-c",
                    "ip link set lo up 2>/dev/null || true; exec " + shlex.join(full)]
        log.info("%s: %s", what, shlex.join(argv)[:200])
        start = time.monotonic()
        done = subprocess.run(full, stdin=subprocess.DEVNULL, text=True,
                              stdout=subprocess.PIPE if capture else None, stderr=None)
        self.timings[what] = round(time.monotonic() - start, 1)
        if done.returncode != 0:
            raise RehearsalError(f"{what} failed (exit {done.returncode}): {shlex.join(argv)[:200]}")
        return done.stdout or ""

    def _passwd(self, user: str) -> list[str] | None:
        """The user's fields in the image's /etc/passwd (name, x, uid, gid, gecos, home, shell)."""
        for line in (self.root / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return fields
        return None

    def _home(self, user: str) -> str:
        entry = self._passwd(user)
        return entry[5] if entry else ("/root" if user == "root" else "/")

    def _group(self, user: str) -> str:
        """The user's primary group (its gid, as /etc/passwd states it)."""
        entry = self._passwd(user)
        if entry is None:
            raise RehearsalError(f"USER {user}: no such user in the image")
        return entry[3]

    def _ids(self, owner: str) -> tuple[int, int]:
        user, _, group = owner.partition(":")

        def lookup(table: str, name: str) -> int:
            if name.isdigit():
                return int(name)
            for line in (self.root / "etc" / table).read_text().splitlines():
                fields = line.split(":")
                if fields[0] == name:
                    return int(fields[2])
            raise RehearsalError(f"COPY --chown: no {table} entry '{name}' in the image")

        return lookup("passwd", user), lookup("group", group or user)

    # -- instructions ------------------------------------------------------------------------
    def perform(self, ins: Instruction) -> None:
        getattr(self, f"_do_{ins.keyword.lower()}")(ins)

    def _do_from(self, ins: Instruction) -> None:
        log.info("FROM %s: emulated by debootstrap %s + %s", ins.argument, SUITE, " ".join(BASE_PACKAGES))
        bootstrap(self.root, self.timings)
        prepare_root(self.root)
        # debootstrap's --include does not resolve dependencies (python3.11-venv's): apt does
        start = time.monotonic()
        install = ["/bin/sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                   f"--no-install-recommends {' '.join(BASE_PACKAGES)} >/dev/null"]
        if subprocess.run(self.command(install, user="root"), stdin=subprocess.DEVNULL).returncode != 0:
            raise RehearsalError(f"installing the base's {', '.join(BASE_PACKAGES)} failed")
        self.timings["base packages"] = round(time.monotonic() - start, 1)
        host_pip_setup(self.root)

    def _do_arg(self, ins: Instruction) -> None:
        for name, value in parse_assignments(ins.argument, {**self.env, **self.args}).items():
            self.args[name] = self.build_args.get(name, value)

    def _do_env(self, ins: Instruction) -> None:
        self.env.update(parse_assignments(ins.argument, {**self.env, **self.args}))

    def _do_workdir(self, ins: Instruction) -> None:
        self.workdir = expand(ins.argument, {**self.env, **self.args})
        (self.root / self.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)

    def _do_user(self, ins: Instruction) -> None:
        self.user = expand(ins.argument, {**self.env, **self.args})

    def _do_run(self, ins: Instruction) -> None:
        # Shell form, as Docker runs it: /bin/sh -c with the ARGs in the environment of the step.
        argv = ["/bin/sh", "-c", ins.argument]
        proxies = {k: os.environ[k] for k in PROXY_ARGS if k in os.environ}
        full = self.command(argv, env={**proxies, **self.args})
        log.info("RUN (line %d) as %s: %s", ins.line, self.user, ins.argument[:160])
        start = time.monotonic()
        done = subprocess.run(full, stdin=subprocess.DEVNULL)
        self.timings[f"RUN line {ins.line}"] = round(time.monotonic() - start, 1)
        if done.returncode != 0:
            raise RehearsalError(f"Dockerfile line {ins.line}: RUN failed (exit {done.returncode}): "
                                 f"{ins.argument[:160]}")

    def _do_copy(self, ins: Instruction) -> None:
        words = shlex.split(expand(ins.argument, {**self.env, **self.args}))
        owner = next((w.split("=", 1)[1] for w in words if w.startswith("--chown=")), None)
        paths = [w for w in words if not w.startswith("--")]
        *sources, dest = paths
        target = self.root / (dest if dest.startswith("/") else f"{self.workdir}/{dest}").lstrip("/")
        patterns = read_dockerignore(self.context)
        for source in sources:
            copy_into(self.context, source, target, patterns, len(sources) > 1 or dest.endswith("/"))
        if owner:
            uid, gid = self._ids(owner)
            for path in [target, *target.rglob("*")]:
                os.lchown(path, uid, gid)

    def _do_entrypoint(self, ins: Instruction) -> None:
        self.entrypoint = json.loads(ins.argument)

    def _do_cmd(self, ins: Instruction) -> None:
        """The default arguments; the rehearsal passes its own (the demo run)."""


def copy_into(context: Path, source: str, target: Path, patterns: list[str], into_directory: bool) -> None:
    """One COPY source (file or directory, relative to the context) to ``target``, skipping
    what .dockerignore excludes. A directory's contents land in ``target``, as Docker does."""
    src = context / source.rstrip("/")
    if not src.exists():
        raise RehearsalError(f"COPY: '{source}' is not in the build context")
    if src.is_file():
        dest = target / src.name if into_directory else target
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        return
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(context).as_posix()
        if ignored(relative, patterns) or path.is_dir():
            continue
        dest = target / path.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    target.mkdir(parents=True, exist_ok=True)


# -- the base system ---------------------------------------------------------------------------
def host_mirror() -> str:
    """The Debian mirror the host's apt uses (deb822 or one-line sources)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            match = re.match(r"URIs:\s*(\S+)", line) or re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", line)
            if match and "security" not in match.group(1):
                return match.group(1)
    raise RehearsalError("no Debian mirror found in /etc/apt/sources*: debootstrap needs one")


def bootstrap(root: Path, timings: dict[str, float]) -> None:
    if shutil.which("debootstrap") is None:
        raise RehearsalError("debootstrap is missing: apt-get install debootstrap")
    start = time.monotonic()
    command = ["debootstrap", "--variant=minbase", SUITE, str(root), host_mirror()]
    log.info("debootstrap into %s (a few minutes)", root)
    if subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode != 0:
        raise RehearsalError(f"debootstrap failed; see {root}/debootstrap/debootstrap.log")
    timings["debootstrap"] = round(time.monotonic() - start, 1)


def prepare_root(root: Path) -> None:
    """What a container gets from its engine: /proc, /dev, /sys, name resolution, and here the
    host's apt setup (how this machine reaches the registries). Mounts live in this process's
    private mount namespace and vanish with it."""
    for name, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--rbind", "/dev"]), ("sys", ["--rbind", "/sys"])):
        (root / name).mkdir(exist_ok=True)
        subprocess.run(["mount", *args, str(root / name)], check=True)
    for name in ("resolv.conf", "hosts"):
        if Path("/etc", name).is_file():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    _copy_host_files(root, ("/etc/apt/sources.list", "/etc/apt/sources.list.d", "/etc/apt/apt.conf.d"))


def _copy_host_files(root: Path, paths: tuple[str, ...]) -> None:
    for path in paths:
        src, dest = Path(path), root / path.lstrip("/")
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        elif src.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)


def host_pip_setup(root: Path) -> None:
    """pip's configuration, CA bundle and local package directories (bind-mounted read-only), as
    this machine has them; after the base packages, whose ca-certificates would overwrite the bundle."""
    _copy_host_files(root, HOST_PIP_FILES)
    for directory in pip_local_directories():
        dest = root / directory.lstrip("/")
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", "-o", "ro", directory, str(dest)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dest)], check=True)


def _host_pip(key: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pip", "config", "get", key], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def pip_local_directories() -> list[str]:
    """Directories the host's pip reads packages from (find-links, file:// indexes)."""
    found = []
    for key in ("global.find-links", "global.extra-index-url", "global.index-url"):
        for entry in _host_pip(key).split():
            path = entry.removeprefix("file://")
            if path.startswith("/") and Path(path).is_dir():
                found.append(path.removesuffix("/simple") if path.endswith("/simple") else path)
    return sorted(set(found))


def default_build_args() -> dict[str, str]:
    """TORCH_INDEX: the Dockerfile's default is the CPU wheel index of torch's own site; here
    the host's pip extra index (where this machine finds the CPU wheel) stands in for it."""
    extra = _host_pip("global.extra-index-url").split()
    return {"TORCH_INDEX": " ".join(extra)} if extra else {}  # pip reads a space-separated list


# -- the rehearsal -----------------------------------------------------------------------------
def offline_check(image: Image) -> bool:
    """Inside the cut-off namespace no outside address is reachable (the host's apt mirror)."""
    host = re.sub(r"^\w+://", "", host_mirror()).split("/")[0]
    probe = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 80), timeout=5)\nexcept OSError:\n"
             " sys.exit(0)\nsys.exit(1)")
    try:
        image.run(["python3.11", "-c", probe, host], "offline check", offline=True)
    except RehearsalError:
        return False
    return True


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rehearse(image: Image) -> dict[str, object]:
    """Build the image from its Dockerfile, then the demo and verify inside, offline."""
    root, context = image.root, image.context
    instructions = parse_dockerfile((context / "Dockerfile").read_text())
    start = time.monotonic()
    for ins in instructions:
        image.perform(ins)
    build_s = time.monotonic() - start
    if not image.entrypoint:
        raise RehearsalError("the Dockerfile has no ENTRYPOINT")
    out = root / "out"
    out.mkdir(exist_ok=True)
    uid, gid = image._ids(image.user)
    os.chown(out, uid, gid)
    offline = offline_check(image)
    if not offline:
        raise RehearsalError("the network is still reachable inside the rehearsal's namespace")
    image.run([*image.entrypoint, *DEMO_ARGS], "demo (network cut off)", offline=True)
    manifest = out / "artifact" / "manifest.json"
    if not manifest.is_file():
        raise RehearsalError("the demo wrote no /out/artifact/manifest.json")
    digest = sha256(manifest)
    image.run([*image.entrypoint, "verify", "/out/artifact", "--manifest-sha256", digest],
              "verify (network cut off)", offline=True)
    return {"ok": True, "build_s": round(build_s, 1), "timings_s": image.timings, "offline_verified": offline,
            "manifest_sha256": digest, "user": image.user, "entrypoint": image.entrypoint,
            "instructions": len(instructions)}


def _markdown(result: dict[str, object]) -> str:
    rows = [f"| {step} | {seconds:.0f} |" for step, seconds in result.get("timings_s", {}).items()]
    verdict = "passed" if result["ok"] else f"failed: {result.get('error')}"
    return "\n".join([
        "# Docker image rehearsal (no Docker engine): the Dockerfile interpreted in a bookworm root", "",
        f"Measured {result['measured']}, commit `{str(result['commit'])[:10]}`, by `{result['command']}`: **{verdict}**.", "",
        "Every Dockerfile instruction performed in order (FROM emulated by debootstrap + Debian's python3.11), "
        "then `sparse-deploy run recipes/demo.yaml --out /out` as the image's user with the network cut off "
        "(a fresh network namespace; a connection to the apt mirror checked to fail first), then "
        "`sparse-deploy verify /out/artifact --manifest-sha256 ...` the same way. What only a real `docker build` "
        "would show: `scripts/rehearse_image.py`'s docstring.", "",
        "| step | seconds |", "|---|---|", *rows, ""])


def remove_tree(path: Path, mounts_file: Path = Path("/proc/self/mounts")) -> bool:
    """``rm -r`` that never crosses into a mount point (a leftover bind of /dev would otherwise
    take the host's device nodes with it): it refuses while anything is mounted below ``path``."""
    mounts = [line.split()[1] for line in mounts_file.read_text().splitlines()]
    inside = [m for m in mounts if m == str(path) or m.startswith(f"{path}/")]
    if inside:
        log.error("not removing %s: still mounted below it: %s", path, ", ".join(inside))
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, help="where to build the root filesystem (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the root filesystem afterwards")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where image_rehearsal.{json,md} go")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)  # set by the outer process
    return parser


def main(argv: list[str] | None = None) -> int:
    """The outer process makes the work directory and, once the inner one (in a private mount
    namespace, whose mounts vanish with it) has finished, removes it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if os.geteuid() != 0:
        print("rehearse_image: needs root (debootstrap, chroot, mount, unshare)", file=sys.stderr)
        return 2
    if args.work is not None:
        return rehearse_inside(args)
    work = Path(tempfile.mkdtemp(prefix="sparse-deploy-rehearsal-", dir="/var/tmp"))
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", sys.executable,
                               str(Path(__file__).resolve()), *argv, "--work", str(work)]).returncode
    finally:
        if args.keep:
            log.info("kept %s", work)
        else:
            remove_tree(work)


def rehearse_inside(args: argparse.Namespace) -> int:
    build_args = {**default_build_args(), **dict(a.split("=", 1) for a in args.build_arg)}
    root = args.root or args.work / "root"
    context = args.work / "context"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(context)], check=True)  # the committed tree, like CI
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=context, capture_output=True, text=True).stdout.strip()
    start = time.monotonic()
    image = Image(root=root, context=context, build_args=build_args)
    try:
        result = rehearse(image)
    except RehearsalError as exc:
        log.error("%s", exc)
        result = {"ok": False, "error": str(exc), "timings_s": image.timings}
    result.update({"total_s": round(time.monotonic() - start, 1), "measured": time.strftime("%Y-%m-%d %H:%M"),
                   "commit": commit, "command": "sudo python3 scripts/rehearse_image.py",
                   "build_args": build_args, "base": f"debootstrap {SUITE} + {' '.join(BASE_PACKAGES)}"})
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "image_rehearsal.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / "image_rehearsal.md").write_text(_markdown(result))
    log.info("rehearsal %s in %.0f s: %s", "passed" if result["ok"] else "FAILED", result["total_s"],
             args.results / "image_rehearsal.json")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
