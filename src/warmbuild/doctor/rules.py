"""Findings: where a Dockerfile spends build time it need not spend (pure).

Each finding names its rule, line, severity, why it costs time and the fix as text to paste. A
finding is `fixable` exactly when `warmbuild doctor --fix` rewrites it (rewrite.py decides both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .analysis import APT_MOUNTS, UV_MOUNT, UV_VERSION, CopyInfo, RunInfo, walk
from .context import IgnoreReport
from .parse import Dockerfile
from .rewrite import apt_fixable, pip_fixable, plan_reorders, uv_command_text

SEVERITIES = ("info", "warn")

RULES = {
    "pip-no-cache-mount": "pip install without a cache mount",
    "pip-cache-mount-defeated": "pip cache mount defeated by --no-cache-dir",
    "pip-use-uv": "pip install where uv would be faster",
    "uv-no-cache-mount": "uv install without a cache mount",
    "copy-all-before-install": "COPY of the whole context before dependency installs",
    "dependency-files-after-code": "code copied before the dependency files",
    "dockerignore-missing": "no .dockerignore, heavy files in the context",
    "dockerignore-weak": ".dockerignore lets heavy files into the context",
    "apt-no-cache-mount": "apt-get without cache mounts",
    "apt-cache-mount-emptied": "apt cache mounts emptied by the same RUN",
    "model-download-at-build": "model weights downloaded at build time",
}


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int | None  # None: about the build context, not a line
    severity: str  # "info" | "warn"
    title: str
    why: str
    fix: str
    fixable: bool


def find_issues(
    doc: Dockerfile,
    *,
    requirement_texts: Mapping[str, str] | None = None,
    ignore: IgnoreReport | None = None,
) -> tuple[Finding, ...]:
    items = walk(doc)
    reorders = {plan.code_copy.instruction for plan in plan_reorders(items, requirement_texts or {})}
    findings: list[Finding] = []
    for item in items:
        if isinstance(item, RunInfo):
            findings += _pip_findings(item, doc.text)
            findings += _uv_findings(item)
            findings += _apt_findings(item)
            findings += _download_findings(item)
        elif isinstance(item, CopyInfo) and item.url_downloads:
            findings.append(_download(item.instruction.start_line, item.url_downloads, "ADD"))
    findings += _ordering_findings(items, reorders)
    if ignore is not None:
        findings += _ignore_findings(ignore)
    return tuple(sorted(findings, key=lambda f: (f.line if f.line is not None else 0, f.rule)))


def _finding(rule: str, line: int | None, severity: str, why: str, fix: str, fixable: bool) -> Finding:
    return Finding(rule=rule, line=line, severity=severity, title=RULES[rule], why=why, fix=fix, fixable=fixable)


def _pip_findings(run: RunInfo, text: str) -> list[Finding]:
    findings = []
    line = run.instruction.start_line
    mounted = run.has_cache_mount("/root/.cache/pip", "/root/.cache")
    for pip in run.pip:
        if pip.only_uv or pip.no_index:
            continue  # installing uv itself, or only local wheels: nothing to download
        fixable = pip_fixable(pip)
        uv = f"RUN {UV_MOUNT} {uv_command_text(pip, text)}" if pip.blocker is None else ""
        fix = (
            f"{uv} — with uv installed once per stage, from the package index, by "
            f"`RUN {_launcher(pip, text)} install --no-cache-dir --target /opt/uv uv=={UV_VERSION}`"
            if fixable
            else f"add {'--mount=type=cache,target=/root/.cache/pip' if not mounted else 'nothing but drop --no-cache-dir'} "
            f"to this RUN, or switch to `uv pip install` with {UV_MOUNT} (not rewritten automatically: {pip.blocker})"
        )
        if not mounted:
            why = (
                "every rebuild of this layer (any change to the files copied before it) downloads and unpacks every "
                "package again; a cache mount keeps the downloads across builds without putting them in the image"
            )
            if pip.no_cache_dir:
                why += " (--no-cache-dir only keeps them out of the layer, which a cache mount does as well)"
            findings.append(_finding("pip-no-cache-mount", line, "warn", why, fix, fixable))
        elif pip.no_cache_dir:
            why = "--no-cache-dir makes pip ignore the mounted cache, so every rebuild downloads every package again"
            findings.append(_finding("pip-cache-mount-defeated", line, "warn", why, fix, fixable))
        else:
            why = "uv resolves, downloads and installs in parallel; on ML requirement sets a rebuild of this layer is several times faster"
            findings.append(_finding("pip-use-uv", line, "info", why, fix, fixable))
    return findings


def _launcher(pip, text: str) -> str:
    return text[pip.launcher[0].start : pip.launcher[-1].end]


def _uv_findings(run: RunInfo) -> list[Finding]:
    if not run.uv or run.has_cache_mount("/root/.cache/uv", "/root/.cache"):
        return []
    blocker = next((u.blocker for u in run.uv if u.blocker), None) or (
        None if run.words is not None else "the RUN is not in shell form"
    )
    why = "without a cache mount uv downloads every package again whenever this layer rebuilds"
    fix = f"RUN {UV_MOUNT} … (and no --no-cache)" + (f" (not rewritten automatically: {blocker})" if blocker else "")
    return [_finding("uv-no-cache-mount", run.instruction.start_line, "warn", why, fix, blocker is None)]


def _apt_findings(run: RunInfo) -> list[Finding]:
    if not run.apt:
        return []
    line = run.instruction.start_line
    missing = [
        flag
        for flag, target in zip(APT_MOUNTS, ("/var/cache/apt", "/var/lib/apt"))
        if not run.has_cache_mount(target, target + "/archives", target + "/lists")
    ]
    fixable = apt_fixable(run)
    manual = "" if fixable else " (not rewritten automatically: the RUN is not a shell-form RUN run as root)"
    cleanup = " and drop the `rm -rf /var/lib/apt/lists/*` / `apt-get clean` (the cache then lives in the mount, never in the image)"
    if missing:
        why = "apt-get update downloads the package lists and apt-get install every .deb again whenever this layer rebuilds"
        if run.apt_cleanups:
            why += "; the classic `rm -rf /var/lib/apt/lists/*` keeps the lists out of the image but guarantees that re-download"
        fix = (
            f"RUN {' '.join(missing)} apt-get update && apt-get install …"
            + (cleanup if run.apt_cleanups else "")
            + "; on Debian/Ubuntu bases also `rm -f /etc/apt/apt.conf.d/docker-clean` in that RUN so downloaded .debs stay cached"
            + manual
        )
        return [_finding("apt-no-cache-mount", line, "warn", why, fix, fixable)]
    if run.apt_cleanups:
        why = "the clean-up in this RUN deletes the mounted apt cache, so the next build downloads everything again"
        fix = (
            "drop `rm -rf /var/lib/apt/lists/*` / `apt-get clean` from this RUN: with the cache mounts they never reach the image"
            + manual
        )
        return [_finding("apt-cache-mount-emptied", line, "warn", why, fix, fixable)]
    return []


def _download_findings(run: RunInfo) -> list[Finding]:
    if not run.downloads:
        return []
    return [_download(run.instruction.start_line, run.downloads, "RUN")]


def _download(line: int, what: tuple[str, ...], cmd: str) -> Finding:
    why = (
        f"{cmd} fetches model weights ({', '.join(what)[:120]}) — often gigabytes — again whenever this layer or one "
        "before it changes, and every push and pull of the image carries them"
    )
    fix = (
        "fetch the weights when the container starts, into a volume (e.g. HF_HOME=/models on a persistent volume); "
        "if they must be in the image, download them in a stage of their own that comes before any COPY of code, "
        "with RUN --mount=type=cache,target=/root/.cache/huggingface, and COPY --from that stage"
    )
    return _finding("model-download-at-build", line, "warn", why, fix, False)


def _ordering_findings(items, fixable_copies) -> list[Finding]:
    findings: list[Finding] = []
    seen: dict[int, list[CopyInfo]] = {}
    flagged: set[int] = set()
    installed_first: set[int] = set()  # stages that install dependencies before copying code
    for item in items:
        if isinstance(item, CopyInfo):
            seen.setdefault(item.stage.index, []).append(item)
            continue
        if not isinstance(item, RunInfo) or not item.installs_dependencies:
            continue
        stage = item.stage.index
        if not any(c.whole_context or c.code for c in seen.get(stage, [])) and item.installs_from_dependency_files:
            installed_first.add(stage)
        if stage in installed_first:
            continue  # the dependencies are in; an install after the code is the project's own
        for copy in seen.get(item.stage.index, []):
            line = copy.instruction.start_line
            if line in flagged or not (copy.whole_context or copy.code):
                continue
            flagged.add(line)
            fixable = copy.instruction in fixable_copies
            install = f"the install on line {item.instruction.start_line}"
            if copy.whole_context:
                why = f"every code change invalidates this COPY and so {install}: all dependencies are reinstalled on each commit"
                fix = (
                    "copy only the dependency files first (e.g. COPY requirements.txt ./ — or pyproject.toml + poetry.lock/uv.lock, "
                    f"environment.yml), run {install} there, then COPY . ."
                )
                rule = "copy-all-before-install"
            else:
                why = f"a change in the files this COPY brings in invalidates {install}, so dependencies are reinstalled for code changes"
                fix = f"move this COPY below {install}; copy the dependency files (requirements*.txt, pyproject.toml, lock files) before the code"
                rule = "dependency-files-after-code"
            if not fixable:
                fix += " (not rewritten automatically: only a pip install from self-contained requirement files directly after the COPY is moved)"
            findings.append(_finding(rule, line, "warn", why, fix, fixable))
    return findings


def _ignore_findings(ignore: IgnoreReport) -> list[Finding]:
    if not ignore.savings:
        return []
    total = human_bytes(ignore.total_bytes)
    lines = ", ".join(f"{s.pattern} ({human_bytes(s.bytes)})" for s in ignore.savings)
    why = (
        f"{total} ({ignore.total_bytes} bytes) that the image does not need is sent to the builder as build context, "
        "and a change to any of it invalidates COPY . and everything after it"
    )
    if ignore.exists:
        return [_finding("dockerignore-weak", None, "warn", why, f"add to {ignore.path}: {lines}", False)]
    return [_finding("dockerignore-missing", None, "warn", why, f"create {ignore.path} with: {lines}", False)]


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def exit_status(findings: tuple[Finding, ...]) -> int:
    """0: nothing of severity warn; 1: at least one warn finding (like a linter)."""
    return 1 if any(f.severity == "warn" for f in findings) else 0
