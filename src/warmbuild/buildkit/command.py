"""buildctl command lines, pure. Always an argv list: never passed through a shell.

The one place buildctl's syntax is written: the rest of warmbuild hands over structured values
(`Compression`, `CacheSpec`, `SecretSpec`). buildctl reads --output, --import-cache, --export-cache
and --secret as one CSV record each (Go's encoding/csv), so a field holding a comma, a quote or a
line break is quoted.
"""

from __future__ import annotations

from pathlib import Path

from ..config import BuilderEndpoint, BuildRequest, CacheSpec, Compression, SecretSpec


def connection_args(buildctl: str, builder: BuilderEndpoint) -> list[str]:
    argv = [buildctl, "--addr", builder.address]
    tls = builder.tls
    if tls is not None:
        if tls.ca is not None:
            argv += ["--tlscacert", str(tls.ca)]
        if tls.cert is not None:
            argv += ["--tlscert", str(tls.cert), "--tlskey", str(tls.key)]
        if tls.server_name:
            argv += ["--tlsservername", tls.server_name]
    return argv


def csv_field(field: str) -> str:
    if any(c in field for c in ',"\n\r'):
        return '"' + field.replace('"', '""') + '"'
    return field


def compression_fields(compression: Compression) -> list[str]:
    """Nothing for BuildKit's default (gzip at its default level), else the algorithm and any level."""
    if compression.is_buildkit_default:
        return []
    level = [] if compression.level is None else [f"compression-level={compression.level}"]
    return [f"compression={compression.algorithm}", *level]


def cache_value(cache: CacheSpec) -> str:
    """--import-cache/--export-cache: the type, the reference, a user's attributes as given, then
    what warmbuild asks of its own exports."""
    fields = [f"type={cache.type}"]
    if cache.ref is not None:
        fields.append(f"ref={cache.ref}")
    fields += [f"{key}={value}" for key, value in cache.attributes]
    if cache.max_mode:
        fields.append("mode=max")
    if cache.ignore_error:
        fields.append("ignore-error=true")
    fields += compression_fields(cache.compression)
    return ",".join(csv_field(f) for f in fields)


def secret_value(secret: SecretSpec) -> str:
    """Where buildctl finds the secret (a file or an environment variable), never its value."""
    fields = [f"id={secret.id}", f"env={secret.env}" if secret.env is not None else f"src={secret.src}"]
    return ",".join(csv_field(f) for f in fields)


def image_output(request: BuildRequest) -> str | None:
    if not request.tags:
        return None
    # The name list holds commas when there are several tags; it is always quoted, one tag or many.
    fields = ['"name=' + ",".join(request.tags).replace('"', '""') + '"', f"push={'true' if request.push else 'false'}"]
    return ",".join(["type=image", *fields, *compression_fields(request.compression)])


def build_argv(buildctl: str, builder: BuilderEndpoint, request: BuildRequest, metadata_file: Path) -> list[str]:
    argv = connection_args(buildctl, builder)
    argv += [
        "build",
        "--progress=rawjson",
        "--frontend=dockerfile.v0",
        "--local",
        f"context={request.context}",
        "--local",
        f"dockerfile={request.dockerfile.parent}",
        "--opt",
        f"filename={request.dockerfile.name}",
        "--metadata-file",
        str(metadata_file),
    ]
    for key, value in request.build_args:
        argv += ["--opt", f"build-arg:{key}={value}"]
    for key, value in request.labels:
        argv += ["--opt", f"label:{key}={value}"]
    if request.target:
        argv += ["--opt", f"target={request.target}"]
    if request.platforms:
        argv += ["--opt", f"platform={','.join(request.platforms)}"]
    if request.no_cache:
        argv += ["--no-cache"]
    for secret in request.secrets:
        argv += ["--secret", secret_value(secret)]
    for cache in request.cache_imports:
        argv += ["--import-cache", cache_value(cache)]
    for cache in request.cache_exports:
        argv += ["--export-cache", cache_value(cache)]
    output = image_output(request)
    if output:
        argv += ["--output", output]
    return argv
