"""What the instructions of a Dockerfile do, as far as build time goes (pure).

One walk over the instructions keeps the stage state a RUN sees (USER, SHELL, WORKDIR, pip
settings from ENV/ARG, whether uv is already installed), and classifies RUN commands: pip and uv
installs (with the exact uv equivalent of a pip command, or the reason there is none), apt-get,
other dependency installs, model downloads. rules.py and rewrite.py both read this, so a finding
is marked fixable exactly when the rewrite will fix it.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from dataclasses import dataclass, replace

from .parse import Dockerfile, Instruction
from .shell import Command, Word, run_words, scan_words, split_commands

UV_VERSION = "0.13.9"
UV_HOME = "/opt/uv"
UV_BIN = f"{UV_HOME}/bin/uv"
UV_CACHE = "/root/.cache/uv"
UV_MOUNT = f"--mount=type=cache,target={UV_CACHE}"
APT_MOUNTS = (
    "--mount=type=cache,target=/var/cache/apt,sharing=locked",
    "--mount=type=cache,target=/var/lib/apt,sharing=locked",
)

_PIP = re.compile(r"^pip(3(\.\d+)?)?$")
_PYTHON = re.compile(r"^python(3(\.\d+)?)?$")
_PASS_FLAGS = {
    "--no-deps",
    "-U",
    "--upgrade",
    "--pre",
    "--no-index",
    "--require-hashes",
    "--no-build-isolation",
    "-q",
    "-qq",
    "-qqq",
    "--quiet",
    "-v",
    "--verbose",
    "--break-system-packages",
}
_PASS_VALUES = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-e",
    "--editable",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "--no-binary",
    "--only-binary",
    "-t",
    "--target",
    "--prefix",
}
# pip options that change nothing about what gets installed; uv has no use for them.
_DROP_FLAGS = {
    "--no-cache-dir",
    "--disable-pip-version-check",
    "--no-warn-script-location",
    "--no-warn-conflicts",
    "--compile",
    "--no-compile",
    "--no-input",
    "--isolated",
}
_DROP_VALUES = {"--root-user-action", "--progress-bar", "--default-timeout", "--timeout", "--retries"}
_OTHER_VALUES = {
    "--trusted-host",
    "--upgrade-strategy",
    "--platform",
    "--python-version",
    "--implementation",
    "--abi",
    "--src",
    "--root",
    "--cache-dir",
    "--log",
    "--proxy",
    "--cert",
    "--client-cert",
    "--exists-action",
    "--config-settings",
    "-C",
    "--global-option",
    "--report",
    "--python",
}
# PIP_* settings that do not change what is resolved or where it goes.
_HARMLESS_PIP_SETTINGS = {
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_ROOT_USER_ACTION",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_TIMEOUT",
    "PIP_RETRIES",
    "PIP_PROGRESS_BAR",
    "PIP_NO_COMPILE",
    "PIP_NO_WARN_SCRIPT_LOCATION",
    "PIP_NO_INPUT",
    "PIP_CACHE_DIR",
}
_REDIRECT = re.compile(r"^(\d*(?:>>?|<|&>)&?)(.*)$")
_NON_ROOT_BASES = (
    "mambaorg/micromamba",
    "jupyter/base-notebook",
    "jupyter/minimal-notebook",
    "jupyter/scipy-notebook",
    "jupyter/pytorch-notebook",
    "jupyter/tensorflow-notebook",
    "jupyter/datascience-notebook",
)
_POSIX_SHELLS = {"sh", "bash", "dash", "ash", "zsh", "ksh"}
_WEIGHT_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".gguf")
_DEPENDENCY_FILES = (
    "requirements*.txt",
    "*requirements*.txt",
    "constraints*.txt",
    "pyproject.toml",
    "poetry.lock",
    "uv.lock",
    "Pipfile",
    "Pipfile.lock",
    "pdm.lock",
    "environment*.yml",
    "environment*.yaml",
    "conda-lock.yml",
    "setup.py",
    "setup.cfg",
    "README*",
    "LICENSE*",
)


@dataclass(frozen=True)
class Mount:
    type: str
    target: str


@dataclass(frozen=True)
class StageState:
    """What a RUN in this stage runs under."""

    index: int
    name: str | None
    parent: str | None = None  # the earlier stage this one is built FROM, if any
    user: str = ""
    shell: str = "sh"
    workdir: str = "/"
    pip_settings: tuple[str, ...] = ()  # PIP_* names from ENV/ARG that change resolution
    pip_conf: bool = False  # a pip.conf / pip.ini was copied in
    has_uv: bool = False  # /opt/uv holds uv (installed by an earlier instruction or base stage)


@dataclass(frozen=True)
class PipInstall:
    """A `pip install` command and its uv equivalent."""

    command: Command
    launcher: tuple[Word, ...]  # `pip`, `pip3`, `python -m pip`, `/opt/venv/bin/pip`
    head: tuple[Word, ...]  # launcher words through `install`
    pre_options: tuple[tuple[Word, ...], ...]  # option groups between the launcher and `install`
    interpreter: str  # --python value for uv: the interpreter this pip installs into
    drop: tuple[tuple[Word, ...], ...]  # option groups uv does not need (deleted by the rewrite)
    requirement_files: tuple[str, ...]
    constraint_files: tuple[str, ...]
    packages: tuple[str, ...]  # positional requirement specs (and local paths)
    editables: tuple[str, ...]
    find_links: tuple[str, ...]
    no_cache_dir: bool
    no_compile: bool
    no_index: bool
    no_deps: bool
    custom_index: bool  # -i / --extra-index-url / -f: keep pip's "best match across indexes"
    writes_elsewhere: bool  # --target / --prefix
    only_uv: bool  # installs uv itself: how uv gets in, not a candidate for uv
    blocker: str | None  # why the rewrite leaves this command alone

    @property
    def installs_dependencies(self) -> bool:
        if self.requirement_files or self.constraint_files:
            return True
        remote = [p for p in self.packages + self.editables if not is_local_path(p)]
        return bool(remote) or bool(self.packages + self.editables) and not self.no_deps


@dataclass(frozen=True)
class UvInstall:
    command: Command
    blocker: str | None

    @property
    def from_files(self) -> bool:
        """uv sync, uv pip sync, uv pip install -r/-c: installs what dependency files list."""
        args = [w.text for w in self.command.words[1:]]
        if args[:1] == ["sync"] or args[:2] == ["pip", "sync"]:
            return True
        return any(
            a in ("-r", "--requirements", "--requirement", "-c", "--constraints", "--constraint")
            or a.startswith(("-r", "--requirement", "-c", "--constraint"))
            for a in args[2:]
        )


@dataclass(frozen=True)
class RunInfo:
    instruction: Instruction
    stage: StageState
    words: tuple[Word, ...] | None  # None: JSON form, heredoc or unscannable
    commands: tuple[Command, ...]
    mounts: tuple[Mount, ...]
    pip: tuple[PipInstall, ...]
    uv: tuple[UvInstall, ...]
    apt: tuple[Command, ...]
    apt_cleanups: tuple[Command, ...]  # rm -rf /var/lib/apt/lists/*, apt-get clean, …
    other_installs: tuple[str, ...]  # poetry install, conda env create, … (names, for messages)
    downloads: tuple[str, ...]  # model downloads, as the text that gives them away
    shell_text: str  # the command as the shell runs it (joined), or heredoc bodies

    def has_cache_mount(self, *targets: str) -> bool:
        return any(m.type == "cache" and m.target.rstrip("/") in targets for m in self.mounts)

    @property
    def installs_dependencies(self) -> bool:
        return (
            any(p.installs_dependencies and not p.only_uv for p in self.pip)
            or bool(self.uv)
            or bool(self.other_installs)
        )

    @property
    def installs_from_dependency_files(self) -> bool:
        """Installs what requirement/lock/environment files list: the step that belongs before the code."""
        return (
            any(p.requirement_files or p.constraint_files for p in self.pip)
            or any(u.from_files for u in self.uv)
            or bool(self.other_installs)
        )


@dataclass(frozen=True)
class CopyInfo:
    instruction: Instruction
    stage: StageState
    sources: tuple[str, ...]
    dest: str
    from_context: bool  # no --from, not a URL
    whole_context: bool  # copies `.`
    dependency_only: bool  # only dependency files (requirements, lock files, …)
    url_downloads: tuple[str, ...]  # ADD of model-weight URLs

    @property
    def code(self) -> bool:
        return self.from_context and not self.whole_context and not self.dependency_only

    def dest_path(self) -> str:
        return resolve_path(self.stage.workdir, self.dest)


def resolve_path(workdir: str, path: str) -> str:
    joined = posixpath.join(workdir or "/", path)
    return posixpath.normpath(joined) + ("/" if path.endswith("/") or path in (".", "./") else "")


def is_local_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith((".whl", ".tar.gz", ".zip")) or spec.startswith("file:")


def is_dependency_file(source: str) -> bool:
    name = source.rstrip("/")
    if name.startswith("requirements/") or name == "requirements":
        return True
    return any(fnmatch.fnmatch(posixpath.basename(name), pattern) for pattern in _DEPENDENCY_FILES)


def parse_mount(flag: str) -> Mount | None:
    if not flag.startswith("--mount="):
        return None
    fields = dict(part.partition("=")[::2] for part in flag[len("--mount=") :].split(","))
    target = fields.get("target") or fields.get("dst") or fields.get("destination") or ""
    return Mount(type=fields.get("type", "bind"), target=target)


def walk(doc: Dockerfile) -> tuple[RunInfo | CopyInfo | Instruction, ...]:
    """Every instruction, RUN and COPY/ADD classified with the stage state they see."""
    stages: dict[str, StageState] = {}
    stage = StageState(index=-1, name=None)
    out: list[RunInfo | CopyInfo | Instruction] = []
    for ins in doc.instructions:
        if ins.cmd == "FROM":
            base = ins.value[0] if ins.value else ""
            name = ins.value[2].lower() if len(ins.value) >= 3 and ins.value[1].upper() == "AS" else None
            parent = stages.get(base.lower())
            if parent:
                stage = replace(parent, index=stage.index + 1, name=name, parent=base.lower())
            else:
                user = "(the base image's user)" if _non_root_base(base) else ""
                stage = StageState(index=stage.index + 1, name=name, user=user)
            if name:
                stages[name] = stage
            out.append(ins)
            continue
        if ins.cmd == "RUN":
            info = _run_info(doc, ins, stage)
            if any(p.only_uv and UV_HOME in " ".join(w.text for w in p.command.words) for p in info.pip):
                stage = replace(stage, has_uv=True)
            out.append(info)
        elif ins.cmd in ("COPY", "ADD") and not ins.heredocs:
            info = _copy_info(ins, stage)
            if any(posixpath.basename(s) in ("pip.conf", "pip.ini") for s in info.sources):
                stage = replace(stage, pip_conf=True)
            out.append(info)
        else:
            stage = _apply_state(stage, ins)
            out.append(ins)
        if stage.name:
            stages[stage.name] = stage
    return tuple(out)


def _non_root_base(image: str) -> bool:
    """Base images known to switch to a non-root USER themselves (the Dockerfile does not say so)."""
    name = image.split("@")[0].rsplit(":", 1)[0] if "/" in image or ":" in image else image
    return any(name == b or name.endswith("/" + b) for b in _NON_ROOT_BASES) or "/jupyter/" in f"/{name}"


def _apply_state(stage: StageState, ins: Instruction) -> StageState:
    if ins.cmd == "USER" and ins.value:
        return replace(stage, user=ins.value[0].split(":")[0])
    if ins.cmd == "SHELL" and ins.value:
        return replace(stage, shell=posixpath.basename(ins.value[0]))
    if ins.cmd == "WORKDIR" and ins.value:
        return replace(stage, workdir=resolve_path(stage.workdir, ins.value[0]).rstrip("/") or "/")
    if ins.cmd in ("ENV", "ARG"):
        names = ins.value[0::2] if ins.cmd == "ENV" else tuple(v.partition("=")[0] for v in ins.value)
        settings = tuple(n for n in names if n.startswith("PIP_") and n not in _HARMLESS_PIP_SETTINGS)
        if settings:
            return replace(stage, pip_settings=stage.pip_settings + settings)
    return stage


def _copy_info(ins: Instruction, stage: StageState) -> CopyInfo:
    values = ins.value
    sources, dest = tuple(values[:-1]), (values[-1] if values else "")
    from_other = any(f.startswith("--from") for f in ins.flags)
    urls = tuple(s for s in sources if "://" in s or s.startswith("git@"))
    from_context = not from_other and not urls
    return CopyInfo(
        instruction=ins,
        stage=stage,
        sources=sources,
        dest=dest,
        from_context=from_context,
        whole_context=from_context and any(s.rstrip("/") in (".", "") or s == "./" for s in sources),
        dependency_only=from_context and bool(sources) and all(is_dependency_file(s) for s in sources),
        url_downloads=tuple(u for u in urls if _is_weight_url(u)) if ins.cmd == "ADD" else (),
    )


def _run_info(doc: Dockerfile, ins: Instruction, stage: StageState) -> RunInfo:
    words = run_words(doc, ins)
    commands = split_commands(words) if words is not None else ()
    mounts = tuple(m for m in (parse_mount(f) for f in ins.flags) if m is not None)
    if words is None:
        shell_text = "\n".join(ins.heredocs) if ins.heredocs else " ".join(ins.value)
        commands = _commands_of_text(shell_text)
    else:
        shell_text = " ".join(ins.value)
    blocker = _run_blocker(ins, stage, mounts, words is None)
    pips, uvs, apts, cleanups, others = [], [], [], [], []
    for position, command in enumerate(commands):
        prog = command.program
        args = [w.text for w in command.words[1:]]
        if _PIP.match(prog) or (_PYTHON.match(prog) and args[:2] == ["-m", "pip"]):
            pip = _pip_install(command, stage, blocker or _launcher_blocker(commands[:position]))
            if pip is not None:
                pips.append(pip)
        elif prog == "uv" and (args[:2] in (["pip", "install"], ["pip", "sync"]) or args[:1] == ["sync"]):
            uvs.append(UvInstall(command, blocker or _uv_blocker(command)))
        elif prog in ("apt-get", "apt") and any(a in ("install", "update", "upgrade", "dist-upgrade") for a in args):
            apts.append(command)
        elif _is_apt_cleanup(prog, args):
            cleanups.append(command)
        elif _other_install(prog, args):
            others.append(f"{prog} {' '.join(a for a in args if not a.startswith('-'))[:40]}".strip())
    return RunInfo(
        instruction=ins,
        stage=stage,
        words=words,
        commands=commands,
        mounts=mounts,
        pip=tuple(pips),
        uv=tuple(uvs),
        apt=tuple(apts),
        apt_cleanups=tuple(cleanups),
        other_installs=tuple(others),
        downloads=_model_downloads(commands, shell_text),
        shell_text=shell_text,
    )


def _commands_of_text(text: str) -> tuple[Command, ...]:
    """Commands of a JSON-form RUN or a heredoc body: analysed, never rewritten (offsets are meaningless)."""
    commands: list[Command] = []
    for line in text.splitlines():
        words = scan_words(line, 0, len(line))
        if words:
            commands.extend(split_commands(words))
    return tuple(commands)


def _run_blocker(ins: Instruction, stage: StageState, mounts: tuple[Mount, ...], unscannable: bool) -> str | None:
    if ins.json:
        return "the RUN is in JSON (exec) form; rewrite it by hand"
    if ins.heredocs:
        return "the RUN uses a heredoc; rewrite it by hand"
    if unscannable:
        return "the RUN's quoting could not be followed; rewrite it by hand"
    if stage.shell not in _POSIX_SHELLS:
        return f"the stage's SHELL is {stage.shell}, not a POSIX shell"
    if stage.user not in ("", "root", "0"):
        return f"it runs as USER {stage.user}: the cache mount needs uid=/--cache-dir set by hand"
    if any(m.type == "secret" and "pip" in m.target for m in mounts):
        return "a secret mount provides pip's configuration, which uv does not read"
    return None


def _launcher_blocker(before: tuple[Command, ...]) -> str | None:
    """pip must exist before the RUN starts, since uv is installed by a separate instruction."""
    for command in before:
        args = [w.text for w in command.words[1:]]
        creates = (
            (
                command.program in ("apt-get", "apt", "apk", "yum", "dnf", "microdnf", "conda", "mamba", "micromamba")
                and any("python" in a or "pip" in a for a in args)
            )
            or command.program in ("virtualenv",)
            or (_PYTHON.match(command.program) and any(a in ("venv", "ensurepip", "virtualenv") for a in args))
            or any("get-pip" in a for a in args)
            or (command.program == "uv" and args[:1] == ["venv"])
        )
        if creates:
            return "pip or its environment is created earlier in the same RUN; split that RUN first"
    return None


def _pip_install(command: Command, stage: StageState, blocker: str | None) -> PipInstall | None:
    words = command.words
    launcher = 3 if _PYTHON.match(command.program) else 1
    rest = words[launcher:]
    install_at = next((i for i, w in enumerate(rest) if not w.text.startswith("-")), None)
    if install_at is None or rest[install_at].text != "install":
        return None  # pip download, pip list, …
    head_end = launcher + install_at + 1
    pre_groups, _ = _option_groups(words[launcher : launcher + install_at])
    groups, problem = _option_groups(words[launcher : launcher + install_at] + words[head_end:])
    drop, req, con, pkgs, edit, links, flags = [], [], [], [], [], [], set()
    for group in groups:
        name = group[0].text.split("=", 1)[0] if group[0].text.startswith("--") else group[0].text[:2]
        value = _group_value(group)
        if not group[0].text.startswith("-") or group[0].text == "-":
            pkgs.append(group[0].text)
            continue
        flags.add(name)
        if name in _DROP_FLAGS or name in _DROP_VALUES:
            drop.append(group)
        elif name in ("-r", "--requirement"):
            req.append(value)
        elif name in ("-c", "--constraint"):
            con.append(value)
        elif name in ("-e", "--editable"):
            edit.append(value)
        elif name in ("-f", "--find-links"):
            links.append(value)
        elif name not in _PASS_FLAGS and name not in _PASS_VALUES and group[0].text not in _PASS_FLAGS:
            problem = problem or (
                "pip's --user has no uv equivalent (use a virtual environment)"
                if name == "--user"
                else f"pip option {group[0].text.split('=')[0]} has no exact uv equivalent"
            )
    settings = [a.text.split("=")[0] for a in command.assignments]
    bad_settings = [s for s in settings if s.startswith("PIP_") and s not in _HARMLESS_PIP_SETTINGS]
    if bad_settings or stage.pip_settings:
        problem = (
            problem
            or f"{(bad_settings or list(stage.pip_settings))[0]} is set: uv does not read PIP_* settings; set the UV_* equivalent by hand"
        )
    if stage.pip_conf:
        problem = (
            problem or "a pip.conf is copied in: uv does not read it; move its settings to uv.toml or UV_* by hand"
        )
    only_uv = bool(pkgs) and not (req or con or edit) and all(re.match(r"^uv([=<>~!].*)?$", p) for p in pkgs)
    return PipInstall(
        command=command,
        launcher=words[:launcher],
        head=words[:head_end],
        pre_options=tuple(pre_groups),
        interpreter=_interpreter(words[:launcher]),
        drop=tuple(drop),
        requirement_files=tuple(req),
        constraint_files=tuple(con),
        packages=tuple(pkgs),
        editables=tuple(edit),
        find_links=tuple(links),
        no_cache_dir="--no-cache-dir" in flags,
        no_compile="--no-compile" in flags,
        no_index="--no-index" in flags,
        no_deps="--no-deps" in flags,
        custom_index=bool(flags & {"-i", "--index-url", "--extra-index-url", "-f", "--find-links"}),
        writes_elsewhere=bool(flags & {"-t", "--target", "--prefix"}),
        only_uv=only_uv,
        blocker=blocker or problem,
    )


def _option_groups(words: tuple[Word, ...]) -> tuple[list[tuple[Word, ...]], str | None]:
    """pip's arguments as groups: (option,) / (option, value) / (positional,)."""
    groups: list[tuple[Word, ...]] = []
    problem = None
    i = 0
    while i < len(words):
        word = words[i]
        text = word.text
        if (
            text.startswith("--")
            and "=" not in text
            and text in _PASS_VALUES | _DROP_VALUES | _OTHER_VALUES
            and i + 1 < len(words)
        ):
            groups.append((word, words[i + 1]))
            i += 2
            continue
        if (
            text.startswith("-")
            and not text.startswith("--")
            and text[:2] in _PASS_VALUES | _OTHER_VALUES
            and len(text) == 2
        ):
            if i + 1 < len(words):
                groups.append((word, words[i + 1]))
                i += 2
                continue
        redirect = _REDIRECT.match(text)
        if redirect and not word.quoted:
            i += 2 if not redirect.group(2) else 1  # `> file` takes the next word, `>/dev/null` does not
            continue
        if text.startswith("$") and not word.quoted:
            problem = problem or f"'{text}' expands at build time and may hold pip options"
        groups.append((word,))
        i += 1
    return groups, problem


def _group_value(group: tuple[Word, ...]) -> str:
    if len(group) == 2:
        return group[1].text
    text = group[0].text
    if text.startswith("--"):
        return text.partition("=")[2]
    return text[2:]


def _interpreter(launcher: tuple[Word, ...]) -> str:
    """The interpreter a pip launcher installs into, as uv's --python value."""
    path = launcher[0].text
    directory, _, name = path.rpartition("/")
    python = name if _PYTHON.match(name) else "python" + (name[3:] or "3")
    if directory:
        return f"{directory}/{python}"
    return f'"$(command -v {python})"'


def _uv_blocker(command: Command) -> str | None:
    args = [w.text for w in command.words]
    if "--no-cache" in args or "-n" in args or any(a.text.startswith("UV_NO_CACHE") for a in command.assignments):
        return "it runs uv with --no-cache"
    if "--cache-dir" in args or any(a.text.startswith(("UV_CACHE_DIR", "XDG_CACHE_HOME")) for a in command.assignments):
        return "it sets its own uv cache directory; mount that directory by hand"
    return None


def _is_apt_cleanup(prog: str, args: list[str]) -> bool:
    if prog in ("apt-get", "apt") and args[:1] in (["clean"], ["autoclean"]):
        return True
    if prog != "rm":
        return False
    paths = [a for a in args if not a.startswith("-")]
    return bool(paths) and all(
        p.rstrip("/*").rstrip("/") in ("/var/lib/apt/lists", "/var/cache/apt", "/var/cache/apt/archives")
        or p.startswith("/var/cache/apt/archives/")
        for p in paths
    )


def _other_install(prog: str, args: list[str]) -> bool:
    positional = [a for a in args if not a.startswith("-")]
    if prog == "poetry":
        return positional[:1] == ["install"] and "--only-root" not in args
    if prog in ("pipenv", "pdm"):
        return positional[:1] in (["install"], ["sync"])
    if prog in ("conda", "mamba", "micromamba"):
        return positional[:1] in (["install"], ["create"], ["update"]) or positional[:2] in (
            ["env", "create"],
            ["env", "update"],
        )
    return False


def _is_weight_url(url: str) -> bool:
    return url.split("?", 1)[0].split("#", 1)[0].lower().endswith(_WEIGHT_SUFFIXES)


def _model_downloads(commands: tuple[Command, ...], text: str) -> tuple[str, ...]:
    found: list[str] = []
    for command in commands:
        args = [w.text for w in command.words[1:]]
        if command.program == "huggingface-cli" and args[:1] == ["download"]:
            found.append("huggingface-cli download")
        elif command.program == "hf" and args[:1] == ["download"]:
            found.append("hf download")
        elif command.program in ("wget", "curl"):
            found.extend(f"{command.program} {a}" for a in args if "://" in a and _is_weight_url(a))
    for call in ("snapshot_download(", "hf_hub_download(", ".from_pretrained("):
        if call in text:
            found.append(call.strip(".") + ")")
    return tuple(dict.fromkeys(found))
