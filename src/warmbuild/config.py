"""Build inputs: parsing and validation. No network access here.

Every problem is an `InputError` with one line that says what is wrong and how to fix it. A
`BuildRequest` holds structured values (compression, cache imports and exports, secrets), never
buildctl syntax: user-given BuildKit CSV is parsed here, once, and only `buildkit/command.py` writes
buildctl's syntax back.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import InputError
from .kube.names import MAX_LEASE_SECONDS

# Docker image reference grammar (distribution/reference), anchored.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
BUILD_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
PLATFORM = re.compile(r"^[a-z0-9_]+/[a-z0-9_]+(?:/[a-z0-9_.]+)?$")
# Layer compression of the pushed image and of the registry cache warmbuild writes, and the levels
# BuildKit accepts for each. zstd needs Docker 23+ / containerd 1.5+ to pull.
COMPRESSION_LEVELS = {"gzip": range(0, 10), "zstd": range(0, 23), "uncompressed": range(0)}


@dataclass(frozen=True)
class SecretSpec:
    id: str
    src: Path | None = None
    env: str | None = None


@dataclass(frozen=True)
class Compression:
    """Layer compression of the pushed image and of the registry cache warmbuild writes."""

    algorithm: str = "gzip"
    level: int | None = None  # None: BuildKit's default level for the algorithm

    @property
    def is_buildkit_default(self) -> bool:
        """gzip at its default level: BuildKit's default, so nothing needs saying."""
        return self.algorithm == "gzip" and self.level is None


@dataclass(frozen=True)
class CacheSpec:
    """One cache import or export: a BuildKit cache backend (`type`) and its attributes.

    A user's `--cache-from`/`--cache-to` keeps its attributes as given, in order (`attributes`), so
    it reaches buildctl as written. The cache warmbuild itself reads and writes is said with the
    named fields below; `buildkit/command.py` renders both.
    """

    type: str
    attributes: tuple[tuple[str, str], ...] = ()
    ref: str | None = None  # a registry cache's image reference
    max_mode: bool = False  # export the cache of every stage, not only the final image's layers
    ignore_error: bool = False  # an export that fails is a warning, never a failed build
    compression: Compression = Compression()  # an export's layers: as the image's

    @classmethod
    def registry_import(cls, ref: str) -> CacheSpec:
        return cls(type="registry", ref=ref)

    @classmethod
    def registry_export(cls, ref: str, compression: Compression) -> CacheSpec:
        return cls(type="registry", ref=ref, max_mode=True, ignore_error=True, compression=compression)


@dataclass(frozen=True)
class TlsFiles:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class BuilderEndpoint:
    address: str  # tcp://host:port or unix:///path
    tls: TlsFiles | None = None
    via_gateway: bool = False  # `address` is the gateway's (mode 3); the builder is tls.server_name

    @property
    def host_port(self) -> tuple[str, int] | None:
        parts = urlsplit(self.address)
        if parts.scheme != "tcp":
            return None
        return parts.hostname or "", parts.port or 1234


@dataclass(frozen=True)
class BuildRequest:
    context: Path
    dockerfile: Path
    tags: tuple[str, ...] = ()
    build_args: tuple[tuple[str, str], ...] = ()
    secrets: tuple[SecretSpec, ...] = ()
    target: str | None = None
    platforms: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    push: bool = False
    cache_imports: tuple[CacheSpec, ...] = ()
    cache_exports: tuple[CacheSpec, ...] = ()
    no_cache: bool = False
    result_file: Path = field(default=Path("build-result.json"))
    compression: Compression = Compression()


MAX_RETRIES = 5  # each retry is a whole build on another builder: more would hide a broken pool


@dataclass(frozen=True)
class PoolFlags:
    """A pool build's flags as given (`--pool` and the options beside it), checked by
    `check_pool_flags`; `pipeline.plan_pool_build` derives the rest from them."""

    pool: str
    namespace: str = "warmbuild"
    cache_key: str | None = None
    key_by_target: bool = False  # --cache-key-target: the target joins the default workload key
    named_dockerfile: Path | None = None  # the Dockerfile the user named, when --uv builds a rewritten copy
    max_wait_seconds: float = 60.0
    lease_seconds: int = 15
    fallback: str = "auto"
    untrusted: bool | None = None  # None: decided from the CI event (fork pull requests are untrusted)
    cache_ref: str | None = None
    cache_export: str = "auto"
    ephemeral_config: str | None = None
    ephemeral_image: str | None = None
    ephemeral_timeout: float | None = None
    kubeconfig: str | None = None
    kube_context: str | None = None
    state_file: str | None = None
    tls: TlsFiles | None = None
    buildctl: str | None = None
    retries: int = 1  # builds run again elsewhere after losing their builder before the push


def check_pool_flags(flags: PoolFlags) -> PoolFlags:
    if flags.max_wait_seconds < 0:
        raise InputError("--max-wait must be 0 or more seconds")
    if not 0 <= flags.retries <= MAX_RETRIES:
        raise InputError(f"--retries must be 0 to {MAX_RETRIES}: how often a build that lost its builder runs again")
    if not 3 <= flags.lease_seconds <= MAX_LEASE_SECONDS:
        raise InputError(
            f"--lease-seconds must be 3 to {MAX_LEASE_SECONDS}: a holder that dies keeps its slot that long"
        )
    if flags.tls is not None:
        if flags.tls.server_name:
            raise InputError(
                "--tls-server-name (WARMBUILD_TLS_SERVER_NAME) applies to --builder only: a pool build verifies "
                "the name of the builder it leased (<pod>.<service>.<namespace>.svc)"
            )
        parse_builder("tcp://tls-check:1234", flags.tls)  # the same file checks as for --builder
    return flags


def validate_image_reference(tag: str) -> str:
    if not IMAGE_REFERENCE.match(tag) or len(tag) > 255:
        raise InputError(
            f"invalid tag '{tag}': use [registry[:port]/]name[:tag] with a lowercase name, e.g. 127.0.0.1:5000/team/app:1.2"
        )
    return tag


def parse_key_value(text: str, flag: str, environ: dict[str, str]) -> tuple[str, str]:
    """KEY=VALUE; a bare KEY takes its value from the environment, as `docker build` does."""
    key, sep, value = text.partition("=")
    if not BUILD_ARG_NAME.match(key):
        raise InputError(
            f"invalid {flag} '{key}': write {flag} NAME=VALUE where NAME is letters, digits and underscores"
        )
    if not sep:
        if key not in environ:
            raise InputError(
                f"{flag} {key} has no value and no environment variable {key} is set: write {flag} {key}=VALUE"
            )
        value = environ[key]
    return key, value


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key or not sep:
        raise InputError(f"invalid --label '{text}': write --label KEY=VALUE")
    return key, value


def parse_secret(text: str, environ: dict[str, str]) -> SecretSpec:
    """BuildKit syntax: id=NAME,src=PATH | id=NAME,env=VAR (type= and source= accepted too)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise InputError(
                f"invalid --secret '{_redact_secret_text(text)}': write id=NAME,src=PATH or id=NAME,env=VAR"
            )
        fields[key.strip()] = value.strip()
    secret_id = fields.pop("id", "")
    src = fields.pop("src", None) or fields.pop("source", None)
    env = fields.pop("env", None)
    kind = fields.pop("type", None)
    if fields:
        raise InputError(
            f"--secret id={secret_id}: unknown field(s) {', '.join(sorted(fields))}; allowed: id, src, env, type"
        )
    if not secret_id or not SECRET_ID.match(secret_id):
        raise InputError(
            "--secret needs id=NAME (letters, digits, '.', '_', '-'), e.g. --secret id=hf_token,env=HF_TOKEN"
        )
    if kind == "env" and env is None:
        env, src = src, None
    if (src is None) == (env is None):
        raise InputError(f"--secret id={secret_id}: give exactly one of src=PATH or env=VAR")
    if env is not None:
        if env not in environ:
            raise InputError(f"--secret id={secret_id}: environment variable {env} is not set")
        return SecretSpec(id=secret_id, env=env)
    path = Path(src).expanduser()
    if not path.is_file():
        raise InputError(f"--secret id={secret_id}: file {path} does not exist")
    return SecretSpec(id=secret_id, src=path.resolve())


CACHE_ATTRIBUTE_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_cache_spec(text: str, flag: str) -> CacheSpec:
    """A `--cache-from`/`--cache-to` value in BuildKit's CSV syntax (`type=TYPE,KEY=VALUE,…`), or a
    bare image reference for the registry cache, as buildx, build-push-action and buildctl accept.

    Values are never echoed back in an error: a cache attribute may be a credential (s3, gha).
    """
    text = text.strip()
    if text and "=" not in text:
        if not IMAGE_REFERENCE.match(text) or len(text) > 255:
            raise InputError(
                f"invalid {flag}: write BuildKit's type=TYPE,KEY=VALUE,… or an image reference for the registry cache, e.g. {flag} 127.0.0.1:5000/team/app:buildcache"
            )
        return CacheSpec.registry_import(text)
    kind = None
    attributes = []
    for number, item in enumerate(_csv_record(text, flag)):
        key, sep, value = item.partition("=")
        if not sep or not CACHE_ATTRIBUTE_KEY.match(key):
            raise InputError(
                f"invalid {flag}: field {number + 1} is not KEY=VALUE with a KEY of letters, digits, '.', '_', '-'"
            )
        if key.lower() == "type":
            kind = value
        else:
            attributes.append((key, value))
    if not kind:
        keys = ",".join(k + "=…" for k, _ in attributes)
        example = "type=local,src=DIR" if flag == "--cache-from" else "type=local,dest=DIR"
        raise InputError(f"invalid {flag} '{keys}': name the cache backend with type=TYPE, e.g. {flag} {example}")
    return CacheSpec(type=kind, attributes=tuple(attributes))


def _csv_record(text: str, flag: str) -> list[str]:
    """One CSV record as buildctl reads it (Go's encoding/csv): a field that starts with `"` is
    quoted, `""` inside it is one quote; a quote anywhere else is an error, as a line break is."""
    fields: list[str] = []
    i = 0
    while True:
        if text.startswith('"', i):
            value, i = [], i + 1
            while True:
                end = text.find('"', i)
                if end < 0:
                    raise InputError(f"invalid {flag}: field {len(fields) + 1} opens a quote it never closes")
                value.append(text[i:end])
                if text.startswith('"', end + 1):
                    value.append('"')
                    i = end + 2
                    continue
                i = end + 1
                break
            if i < len(text) and text[i] != ",":
                raise InputError(
                    f'invalid {flag}: field {len(fields) + 1} has text after its closing quote; quote the whole field, e.g. "src=/a,b"'
                )
            fields.append("".join(value))
        else:
            end = text.find(",", i)
            end = len(text) if end < 0 else end
            value = text[i:end]
            if '"' in value or "\n" in value or "\r" in value:
                raise InputError(
                    f'invalid {flag}: field {len(fields) + 1} has a quote or line break inside; quote the whole field, e.g. "src=/a,b"'
                )
            fields.append(value)
            i = end
        if i >= len(text):
            return fields
        i += 1  # the comma


def _redact_secret_text(text: str) -> str:
    # Someone may paste a value where a path belongs: never echo values back.
    return ",".join(p.split("=", 1)[0] + "=…" if "=" in p else "…" for p in text.split(","))


def parse_builder(address: str, tls: TlsFiles | None) -> BuilderEndpoint:
    parts = urlsplit(address)
    if parts.scheme == "tcp":
        if not parts.hostname:
            raise InputError(f"invalid --builder '{address}': write tcp://HOST:PORT, e.g. tcp://127.0.0.2:1234")
        try:
            port = parts.port
        except ValueError:
            raise InputError(f"invalid --builder '{address}': the port is not a number") from None
        if port is None:
            raise InputError(f"invalid --builder '{address}': add the port, e.g. tcp://{parts.hostname}:1234")
    elif parts.scheme == "unix":
        if not parts.path:
            raise InputError(f"invalid --builder '{address}': write unix:///path/to/buildkitd.sock")
    else:
        raise InputError(f"invalid --builder '{address}': use tcp://HOST:PORT or unix:///path/to/buildkitd.sock")
    if tls is not None:
        for name, path in (("--tls-ca", tls.ca), ("--tls-cert", tls.cert), ("--tls-key", tls.key)):
            if path is not None and not path.is_file():
                raise InputError(f"{name} {path} does not exist")
        if (tls.cert is None) != (tls.key is None):
            raise InputError("--tls-cert and --tls-key go together: give both or neither")
    return BuilderEndpoint(address=address, tls=tls)


def build_request(
    *,
    context: str,
    file: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    build_args: list[str] | tuple[str, ...] = (),
    secrets: list[str] | tuple[str, ...] = (),
    target: str | None = None,
    platforms: list[str] | tuple[str, ...] = (),
    labels: list[str] | tuple[str, ...] = (),
    push: bool = False,
    cache_from: list[str] | tuple[str, ...] = (),
    cache_to: list[str] | tuple[str, ...] = (),
    no_cache: bool = False,
    result_file: str = "build-result.json",
    compression: str = "gzip",
    compression_level: int | None = None,
    environ: dict[str, str] | None = None,
) -> BuildRequest:
    """Validate raw inputs (CLI flags or CI inputs) into a BuildRequest."""
    environ = dict(os.environ) if environ is None else environ
    context_dir = Path(context).expanduser()
    if not context_dir.is_dir():
        raise InputError(f"build context '{context}' is not a directory: pass the folder that holds your sources")
    dockerfile = Path(file).expanduser() if file else context_dir / "Dockerfile"
    if not dockerfile.is_file():
        hint = "pass --file PATH" if not file else "check the --file path"
        raise InputError(f"Dockerfile '{dockerfile}' not found: {hint}")
    tag_list = tuple(validate_image_reference(t.strip()) for t in _split_list(tags))
    if push and not tag_list:
        raise InputError("--push needs at least one --tag naming where to push, e.g. --tag 127.0.0.1:5000/team/app:dev")
    platform_list = tuple(_split_list(platforms))
    for platform in platform_list:
        if not PLATFORM.match(platform):
            raise InputError(f"invalid --platform '{platform}': write os/arch[/variant], e.g. linux/amd64")
    if target is not None and not re.match(r"^[A-Za-z0-9_.-]+$", target):
        raise InputError(f"invalid --target '{target}': name a build stage (letters, digits, '.', '_', '-')")
    validate_compression(compression, compression_level)
    return BuildRequest(
        context=context_dir.resolve(),
        dockerfile=dockerfile.resolve(),
        tags=tag_list,
        build_args=tuple(parse_key_value(a, "--build-arg", environ) for a in build_args),
        secrets=tuple(parse_secret(s, environ) for s in secrets),
        target=target or None,
        platforms=platform_list,
        labels=tuple(parse_label(label) for label in labels),
        push=push,
        cache_imports=tuple(parse_cache_spec(c, "--cache-from") for c in cache_from),
        cache_exports=tuple(parse_cache_spec(c, "--cache-to") for c in cache_to),
        no_cache=no_cache,
        result_file=Path(result_file),
        compression=Compression(compression, compression_level),
    )


def validate_compression(compression: str, level: int | None) -> None:
    if compression not in COMPRESSION_LEVELS:
        raise InputError(f"invalid --compression '{compression}': choose {', '.join(COMPRESSION_LEVELS)}")
    levels = COMPRESSION_LEVELS[compression]
    if level is not None and level not in levels:
        allowed = f"{levels.start}–{levels.stop - 1}" if levels else "none (drop --compression-level)"
        raise InputError(f"invalid --compression-level {level} for {compression}: allowed {allowed}")


def _split_list(values) -> list[str]:
    """Accept repeated flags and comma- or newline-separated lists (CI inputs use both)."""
    items: list[str] = []
    for value in values:
        items.extend(v.strip() for v in re.split(r"[,\n]", value) if v.strip())
    return items


def repository_identity(context: Path, environ: dict[str, str]) -> str:
    """Which repository a build comes from: the CI platform's name for it, else git's, else the path."""
    for variable in ("GITHUB_REPOSITORY", "CI_PROJECT_PATH", "GIT_URL", "BUILD_REPOSITORY_URI"):
        if environ.get(variable):
            return environ[variable]
    try:
        remote = subprocess.run(
            ["git", "-C", str(context), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            timeout=5,
            stdin=subprocess.DEVNULL,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        remote = ""
    return remote or str(context)


def ci_run_url(environ: dict[str, str]) -> str:
    """A link to the CI run, recorded on the slot lease so `pool status` can say who holds it."""
    if environ.get("GITHUB_RUN_ID") and environ.get("GITHUB_REPOSITORY"):
        server = environ.get("GITHUB_SERVER_URL", "https://github.com")
        return f"{server}/{environ['GITHUB_REPOSITORY']}/actions/runs/{environ['GITHUB_RUN_ID']}"
    return environ.get("CI_JOB_URL") or environ.get("BUILD_URL") or ""
