"""buildctl argv construction (pure). Values that buildctl parses as CSV are checked with a CSV reader,
as buildctl does (encoding/csv for --output and --secret)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from warmbuild.buildkit.command import build_argv, cache_value, connection_args, csv_field, image_output
from warmbuild.cache import cache_options
from warmbuild.config import (
    BuilderEndpoint,
    BuildRequest,
    CacheSpec,
    Compression,
    SecretSpec,
    TlsFiles,
    parse_cache_spec,
)

BUILDCTL = "/usr/local/bin/buildctl"
BUILDER = BuilderEndpoint(address="tcp://127.0.0.1:1234")
METADATA = Path("/tmp/warmbuild-x/metadata.json")


def request(**kwargs) -> BuildRequest:
    kwargs.setdefault("context", Path("/src/app"))
    kwargs.setdefault("dockerfile", Path("/src/app/Dockerfile"))
    return BuildRequest(**kwargs)


def values_of(argv: list[str], flag: str) -> list[str]:
    """Every value that follows `flag` in argv."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def csv_fields(value: str) -> dict[str, str]:
    (row,) = list(csv.reader([value]))
    fields = {}
    for item in row:
        key, sep, val = item.partition("=")
        assert sep, f"field {item!r} of {value!r} is not key=value"
        fields[key] = val
    return fields


def test_argv_is_a_list_of_strings_starting_with_the_connection():
    argv = build_argv(BUILDCTL, BUILDER, request(), METADATA)
    assert isinstance(argv, list)
    assert all(isinstance(a, str) for a in argv)
    assert argv[:3] == [BUILDCTL, "--addr", "tcp://127.0.0.1:1234"]
    assert argv.index("build") > argv.index("--addr")


def test_fixed_options():
    argv = build_argv(BUILDCTL, BUILDER, request(), METADATA)
    assert "--progress=rawjson" in argv
    assert "--frontend=dockerfile.v0" in argv
    assert values_of(argv, "--metadata-file") == [str(METADATA)]


def test_context_and_dockerfile_locals():
    argv = build_argv(BUILDCTL, BUILDER, request(), METADATA)
    assert sorted(values_of(argv, "--local")) == ["context=/src/app", "dockerfile=/src/app"]
    assert "filename=Dockerfile" in values_of(argv, "--opt")


def test_dockerfile_elsewhere_sets_its_directory_and_file_name():
    argv = build_argv(BUILDCTL, BUILDER, request(dockerfile=Path("/src/docker/ml/Dockerfile.gpu")), METADATA)
    assert "dockerfile=/src/docker/ml" in values_of(argv, "--local")
    assert "context=/src/app" in values_of(argv, "--local")
    assert "filename=Dockerfile.gpu" in values_of(argv, "--opt")


def test_optional_mappings_are_absent_by_default():
    argv = build_argv(BUILDCTL, BUILDER, request(), METADATA)
    for flag in ("--no-cache", "--secret", "--import-cache", "--export-cache", "--output"):
        assert flag not in argv
    assert all(not v.startswith(("build-arg:", "label:", "target=", "platform=")) for v in values_of(argv, "--opt"))


def test_build_args_labels_target_platforms():
    argv = build_argv(
        BUILDCTL,
        BUILDER,
        request(
            build_args=(("PIP_INDEX", "https://pypi.example/simple"), ("EXTRA", "a=b, c")),
            labels=(("org.opencontainers.image.source", "https://git/x"),),
            target="runtime",
            platforms=("linux/amd64", "linux/arm64"),
        ),
        METADATA,
    )
    opts = values_of(argv, "--opt")
    assert "build-arg:PIP_INDEX=https://pypi.example/simple" in opts
    assert "build-arg:EXTRA=a=b, c" in opts  # one argv element, untouched: no shell involved
    assert "label:org.opencontainers.image.source=https://git/x" in opts
    assert "target=runtime" in opts
    assert "platform=linux/amd64,linux/arm64" in opts


def test_no_cache_and_caches():
    argv = build_argv(
        BUILDCTL,
        BUILDER,
        request(
            no_cache=True,
            cache_imports=(CacheSpec.registry_import("r/cache:a"), CacheSpec("local", (("src", "/c"),))),
            cache_exports=(CacheSpec("registry", (("ref", "r/cache:a"), ("mode", "max"))),),
        ),
        METADATA,
    )
    assert argv.count("--no-cache") == 1
    assert values_of(argv, "--import-cache") == ["type=registry,ref=r/cache:a", "type=local,src=/c"]
    assert values_of(argv, "--export-cache") == ["type=registry,ref=r/cache:a,mode=max"]


def test_secrets_map_to_buildctl_syntax():
    argv = build_argv(
        BUILDCTL,
        BUILDER,
        request(secrets=(SecretSpec(id="hf", src=Path("/run/secrets/hf.txt")), SecretSpec(id="tok", env="TOKEN"))),
        METADATA,
    )
    secrets = [csv_fields(v) for v in values_of(argv, "--secret")]
    assert secrets == [{"id": "hf", "src": "/run/secrets/hf.txt"}, {"id": "tok", "env": "TOKEN"}]
    # the secret's value never appears, only where to find it
    assert not any("TOKEN=" in a for a in argv)


def test_secret_path_with_a_comma_survives_buildctls_csv_parsing():
    # buildctl reads --secret with encoding/csv; a resolved path may contain a comma
    # (e.g. a CI checkout directory), so the field must be quoted.
    path = Path("/builds/team,ml/secrets/hf.txt")
    argv = build_argv(BUILDCTL, BUILDER, request(secrets=(SecretSpec(id="hf", src=path),)), METADATA)
    (value,) = values_of(argv, "--secret")
    assert csv_fields(value) == {"id": "hf", "src": str(path)}


# --- image output ------------------------------------------------------------------------------


def test_no_output_without_tags():
    assert image_output(request()) is None
    assert "--output" not in build_argv(BUILDCTL, BUILDER, request(), METADATA)


@pytest.mark.parametrize("push", [True, False])
def test_output_names_all_tags_and_push_flag(push):
    tags = ("127.0.0.1:5000/team/app:dev", "127.0.0.1:5000/team/app:1.2")
    argv = build_argv(BUILDCTL, BUILDER, request(tags=tags, push=push), METADATA)
    (value,) = values_of(argv, "--output")
    fields = csv_fields(value)
    assert fields == {"type": "image", "name": ",".join(tags), "push": "true" if push else "false"}


def test_output_with_a_single_tag():
    fields = csv_fields(image_output(request(tags=("app:1",), push=False)))
    assert fields["name"] == "app:1"
    assert fields["push"] == "false"


# --- TLS ------------------------------------------------------------------------------------------


def test_connection_args_without_tls():
    assert connection_args(BUILDCTL, BUILDER) == [BUILDCTL, "--addr", "tcp://127.0.0.1:1234"]


def test_connection_args_with_full_tls():
    tls = TlsFiles(
        ca=Path("/tls/ca.pem"), cert=Path("/tls/cert.pem"), key=Path("/tls/key.pem"), server_name="buildkitd"
    )
    argv = connection_args(BUILDCTL, BuilderEndpoint("tcp://10.0.0.5:1234", tls))
    assert argv[:3] == [BUILDCTL, "--addr", "tcp://10.0.0.5:1234"]
    assert values_of(argv, "--tlscacert") == ["/tls/ca.pem"]
    assert values_of(argv, "--tlscert") == ["/tls/cert.pem"]
    assert values_of(argv, "--tlskey") == ["/tls/key.pem"]
    assert values_of(argv, "--tlsservername") == ["buildkitd"]


def test_connection_args_with_ca_only():
    argv = connection_args(BUILDCTL, BuilderEndpoint("tcp://10.0.0.5:1234", TlsFiles(ca=Path("/tls/ca.pem"))))
    assert values_of(argv, "--tlscacert") == ["/tls/ca.pem"]
    for flag in ("--tlscert", "--tlskey", "--tlsservername"):
        assert flag not in argv


def test_build_argv_carries_the_tls_flags_before_the_subcommand():
    tls = TlsFiles(ca=Path("/tls/ca.pem"), cert=Path("/tls/cert.pem"), key=Path("/tls/key.pem"))
    argv = build_argv(BUILDCTL, BuilderEndpoint("tcp://10.0.0.5:1234", tls), request(), METADATA)
    build_at = argv.index("build")
    for flag in ("--tlscacert", "--tlscert", "--tlskey"):
        assert argv.index(flag) < build_at  # global flags of buildctl


def test_gzip_by_default_leaves_the_output_as_buildkit_defaults_it():
    fields = csv_fields(image_output(request(tags=("app:1",), push=True)))
    assert "compression" not in fields and "compression-level" not in fields


@pytest.mark.parametrize(
    "compression, level, expected",
    [
        ("zstd", None, {"compression": "zstd"}),
        ("zstd", 3, {"compression": "zstd", "compression-level": "3"}),
        ("gzip", 1, {"compression": "gzip", "compression-level": "1"}),
        ("uncompressed", None, {"compression": "uncompressed"}),
    ],
)
def test_compression_goes_into_the_image_output(compression, level, expected):
    fields = csv_fields(
        image_output(request(tags=("a:1", "a:2"), push=True, compression=Compression(compression, level)))
    )
    assert {k: v for k, v in fields.items() if k.startswith("compression")} == expected
    assert fields["name"] == "a:1,a:2"


# --- cache imports and exports ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "type=registry,ref=x,mode=max",
        "type=registry,ref=127.0.0.1:5000/team/app:buildcache,mode=max,ignore-error=true,compression=zstd",
        "type=local,src=/c",
        'type=local,"src=/a,b"',
        'type=local,"dest=/a ""quoted"" dir"',
        "type=gha,scope=main,mode=min",
        'type=s3,region=eu,bucket=b,"name=a,b"',
    ],
)
def test_a_user_cache_spec_reaches_buildctl_as_written(text):
    assert cache_value(parse_cache_spec(text, "--cache-to")) == text


@pytest.mark.parametrize("value", ["/a,b", 'a "quoted" dir', 'both, "of" them', "a\nline break", "plain"])
def test_attribute_values_survive_buildctls_csv_parsing(value):
    rendered = cache_value(CacheSpec("local", (("src", value), ("mode", "max"))))
    assert csv_fields(rendered) == {"type": "local", "src": value, "mode": "max"}
    assert parse_cache_spec(rendered, "--cache-from") == CacheSpec("local", (("src", value), ("mode", "max")))


def test_csv_field_quotes_only_what_needs_it():
    assert csv_field("ref=r/app:1") == "ref=r/app:1"
    assert csv_field("src=/a,b") == '"src=/a,b"'
    assert csv_field('src=a"b') == '"src=a""b"'


def test_a_bare_reference_renders_as_the_registry_cache():
    rendered = cache_value(parse_cache_spec("r/app:buildcache", "--cache-from"))
    assert rendered == "type=registry,ref=r/app:buildcache"


def test_warmbuilds_own_cache_export():
    export = CacheSpec.registry_export("r/app:buildcache", Compression())
    assert cache_value(export) == "type=registry,ref=r/app:buildcache,mode=max,ignore-error=true"
    assert cache_value(CacheSpec.registry_import("r/app:buildcache")) == "type=registry,ref=r/app:buildcache"


def test_zstd_with_a_level_reaches_the_image_and_warmbuilds_cache_export():
    zstd = Compression("zstd", 19)
    options = cache_options("ephemeral", "r/app:buildcache", "auto", True, False, zstd)
    built = request(
        tags=("r/app:1",), push=True, compression=zstd, cache_imports=options.imports, cache_exports=options.exports
    )
    argv = build_argv(BUILDCTL, BUILDER, built, METADATA)
    (output,) = values_of(argv, "--output")
    (export,) = values_of(argv, "--export-cache")
    (imported,) = values_of(argv, "--import-cache")
    for value in (output, export):
        assert {k: v for k, v in csv_fields(value).items() if k.startswith("compression")} == {
            "compression": "zstd",
            "compression-level": "19",
        }
    assert "compression" not in imported


def test_gzip_by_default_renders_no_compression_anywhere():
    options = cache_options("spill", "r/app:buildcache", "auto", True, False, Compression())
    built = request(tags=("r/app:1",), push=True, cache_imports=options.imports, cache_exports=options.exports)
    argv = build_argv(BUILDCTL, BUILDER, built, METADATA)
    assert not any("compression" in a for a in argv)


# --- the same argv as before the structured types (computed from the string-based code) ----------

SAME_BUILDER = BuilderEndpoint("tcp://127.0.0.1:1234")
SAME_METADATA = Path("/tmp/m.json")


def _pipeline_request(compression: Compression, path: str, policy: str, untrusted: bool) -> BuildRequest:
    """As pipeline.py builds it: the user's request, then the registry cache for the placement."""
    built = request(
        tags=("r/app:1",),
        push=True,
        compression=compression,
        cache_exports=(parse_cache_spec("type=local,dest=/x", "--cache-to"),),
    )
    options = cache_options(path, "r/app:buildcache", policy, built.push, untrusted, built.compression)
    return replace(
        built, cache_imports=built.cache_imports + options.imports, cache_exports=built.cache_exports + options.exports
    )


def test_user_caches_secrets_and_options_give_the_same_argv_as_before():
    built = request(
        tags=("r/app:1", "r/app:2"),
        push=True,
        build_args=(("A", "1"),),
        labels=(("l", "v"),),
        target="runtime",
        platforms=("linux/amd64",),
        secrets=(SecretSpec(id="hf", src=Path("/b/team,ml/hf")), SecretSpec(id="t", env="T")),
        cache_imports=tuple(
            parse_cache_spec(c, "--cache-from")
            for c in ("type=registry,ref=r/cache:a", "type=local,src=/c", 'type=local,"src=/a,b"')
        ),
        cache_exports=(parse_cache_spec("type=registry,ref=r/cache:a,mode=max", "--cache-to"),),
    )
    assert build_argv("buildctl", SAME_BUILDER, built, SAME_METADATA) == [
        "buildctl",
        "--addr",
        "tcp://127.0.0.1:1234",
        "build",
        "--progress=rawjson",
        "--frontend=dockerfile.v0",
        "--local",
        "context=/src/app",
        "--local",
        "dockerfile=/src/app",
        "--opt",
        "filename=Dockerfile",
        "--metadata-file",
        "/tmp/m.json",
        "--opt",
        "build-arg:A=1",
        "--opt",
        "label:l=v",
        "--opt",
        "target=runtime",
        "--opt",
        "platform=linux/amd64",
        "--secret",
        'id=hf,"src=/b/team,ml/hf"',
        "--secret",
        "id=t,env=T",
        "--import-cache",
        "type=registry,ref=r/cache:a",
        "--import-cache",
        "type=local,src=/c",
        "--import-cache",
        'type=local,"src=/a,b"',
        "--export-cache",
        "type=registry,ref=r/cache:a,mode=max",
        "--output",
        'type=image,"name=r/app:1,r/app:2",push=true',
    ]


@pytest.mark.parametrize(
    "compression, path, policy, untrusted, expected",
    [
        (
            Compression("zstd", 3),
            "ephemeral",
            "auto",
            False,
            [
                "--import-cache",
                "type=registry,ref=r/app:buildcache",
                "--export-cache",
                "type=local,dest=/x",
                "--export-cache",
                "type=registry,ref=r/app:buildcache,mode=max,ignore-error=true,compression=zstd,compression-level=3",
                "--output",
                'type=image,"name=r/app:1",push=true,compression=zstd,compression-level=3',
            ],
        ),
        (
            Compression("gzip", 1),
            "warm",
            "auto",
            False,
            [
                "--export-cache",
                "type=local,dest=/x",
                "--export-cache",
                "type=registry,ref=r/app:buildcache,mode=max,ignore-error=true,compression=gzip,compression-level=1",
                "--output",
                'type=image,"name=r/app:1",push=true,compression=gzip,compression-level=1',
            ],
        ),
        (
            Compression(),
            "warm",
            "always",
            False,
            [
                "--export-cache",
                "type=local,dest=/x",
                "--export-cache",
                "type=registry,ref=r/app:buildcache,mode=max,ignore-error=true",
                "--output",
                'type=image,"name=r/app:1",push=true',
            ],
        ),
        (
            Compression("uncompressed"),
            "spill",
            "never",
            False,
            [
                "--import-cache",
                "type=registry,ref=r/app:buildcache",
                "--export-cache",
                "type=local,dest=/x",
                "--export-cache",
                "type=registry,ref=r/app:buildcache,mode=max,ignore-error=true,compression=uncompressed",
                "--output",
                'type=image,"name=r/app:1",push=true,compression=uncompressed',
            ],
        ),
        (
            Compression("zstd"),
            "ephemeral",
            "always",
            True,
            [
                "--import-cache",
                "type=registry,ref=r/app:buildcache",
                "--export-cache",
                "type=local,dest=/x",
                "--output",
                'type=image,"name=r/app:1",push=true,compression=zstd',
            ],
        ),
    ],
)
def test_warmbuilds_registry_cache_gives_the_same_argv_as_before(compression, path, policy, untrusted, expected):
    argv = build_argv("buildctl", SAME_BUILDER, _pipeline_request(compression, path, policy, untrusted), SAME_METADATA)
    assert argv[:14] == [
        "buildctl",
        "--addr",
        "tcp://127.0.0.1:1234",
        "build",
        "--progress=rawjson",
        "--frontend=dockerfile.v0",
        "--local",
        "context=/src/app",
        "--local",
        "dockerfile=/src/app",
        "--opt",
        "filename=Dockerfile",
        "--metadata-file",
        "/tmp/m.json",
    ]
    assert argv[14:] == expected
