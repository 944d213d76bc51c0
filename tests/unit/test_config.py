"""Input validation: every problem is an InputError (exit code 2) with a one-line message."""

from __future__ import annotations

from pathlib import Path

import pytest

from warmbuild.config import (
    CacheSpec,
    Compression,
    SecretSpec,
    TlsFiles,
    build_request,
    parse_builder,
    parse_key_value,
    parse_secret,
    validate_image_reference,
)
from warmbuild.errors import InputError

DIGEST = "sha256:" + "ab" * 32


def input_error(fn, *args, **kwargs) -> InputError:
    """Call fn, require an InputError with exit code 2 and a one-line message; return it."""
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.exit_code == 2
    assert err.message and "\n" not in err.message and "\r" not in err.message, repr(err.message)
    assert str(err) == err.message
    return err


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    context = tmp_path / "app"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\n")
    return context


def req(ctx: Path, **kwargs):
    kwargs.setdefault("environ", {})
    return build_request(context=str(ctx), **kwargs)


# --- context and Dockerfile --------------------------------------------------------------------


def test_minimal_request_resolves_paths(ctx):
    request = req(ctx)
    assert request.context == ctx.resolve()
    assert request.dockerfile == (ctx / "Dockerfile").resolve()
    assert request.tags == () and request.push is False


def test_missing_context_directory(tmp_path):
    missing = tmp_path / "nope"
    err = input_error(build_request, context=str(missing), environ={})
    assert str(missing) in err.message


def test_context_that_is_a_file_is_rejected(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    input_error(build_request, context=str(f), environ={})


def test_missing_dockerfile(tmp_path):
    context = tmp_path / "empty"
    context.mkdir()
    err = input_error(build_request, context=str(context), environ={})
    assert "Dockerfile" in err.message and "--file" in err.message


def test_file_pointing_elsewhere(ctx, tmp_path):
    other = tmp_path / "docker" / "Custom.Dockerfile"
    other.parent.mkdir()
    other.write_text("FROM scratch\n")
    request = req(ctx, file=str(other))
    assert request.dockerfile == other.resolve()
    assert request.context == ctx.resolve()


def test_file_pointing_to_a_missing_path(ctx, tmp_path):
    missing = tmp_path / "missing.Dockerfile"
    err = input_error(req, ctx, file=str(missing))
    assert str(missing) in err.message


# --- tags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [
        "app",
        "app:1.2",
        "team/app:dev",
        "127.0.0.1:5000/team/app:1.2",
        "localhost:5000/app",
        "registry.example.com/a/b/c/app:v1_2-3",
        "registry.example.com:443/ml/models/bert:latest",
        f"app@{DIGEST}",
        f"127.0.0.1:5000/team/app:1.2@{DIGEST}",
        "my-app_x.y__z:TAG_upper-OK",  # tags may be uppercase, names may not
    ],
)
def test_valid_tags(ctx, tag):
    assert validate_image_reference(tag) == tag
    assert req(ctx, tags=[tag]).tags == (tag,)


@pytest.mark.parametrize(
    "tag",
    [
        "App:1",
        "127.0.0.1:5000/Team/app:1",
        "",
        "my app:1",
        "app :1",
        "app:",
        "127.0.0.1:5000/app:",
        "app:1:2",
        "app@sha256:short",
        "-app",
        "app:" + "x" * 129,
    ],
)
def test_invalid_tags(tag):
    err = input_error(validate_image_reference, tag)
    assert "--tag" in err.message or "tag" in err.message


@pytest.mark.parametrize("tag", ["App:1", "my app:1", "app:", "127.0.0.1:5000/Team/app"])
def test_invalid_tags_through_build_request(ctx, tag):
    input_error(req, ctx, tags=[tag])


def test_tag_lists_accept_commas_and_newlines(ctx):
    request = req(ctx, tags=["a:1, b:2", "c:3\nd:4\n"])
    assert request.tags == ("a:1", "b:2", "c:3", "d:4")


def test_push_without_tags(ctx):
    err = input_error(req, ctx, push=True)
    assert "--tag" in err.message


def test_push_with_only_an_empty_tag_is_rejected(ctx):
    input_error(req, ctx, push=True, tags=[""])


def test_push_with_tag(ctx):
    request = req(ctx, push=True, tags=["127.0.0.1:5000/team/app:dev"])
    assert request.push is True


# --- build args ----------------------------------------------------------------------------------


def test_build_arg_key_value(ctx):
    request = req(ctx, build_args=["A=1", "B=x=y", "C=", "D=with space"])
    assert request.build_args == (("A", "1"), ("B", "x=y"), ("C", ""), ("D", "with space"))


def test_bare_build_arg_comes_from_the_given_environ(ctx, monkeypatch):
    monkeypatch.setenv("FROM_OS_ONLY", "os-value")
    request = req(ctx, build_args=["PIP_INDEX"], environ={"PIP_INDEX": "https://pypi.example/simple"})
    assert request.build_args == (("PIP_INDEX", "https://pypi.example/simple"),)
    # the given environ is used, not os.environ
    err = input_error(req, ctx, build_args=["FROM_OS_ONLY"], environ={})
    assert "FROM_OS_ONLY" in err.message


def test_bare_build_arg_missing_from_environ():
    err = input_error(parse_key_value, "MISSING", "--build-arg", {})
    assert "MISSING" in err.message and "--build-arg" in err.message


@pytest.mark.parametrize("text", ["1A=x", "A-B=x", "=x", "A B=x", "", "ä=1"])
def test_invalid_build_arg_names(ctx, text):
    input_error(req, ctx, build_args=[text])


def test_labels(ctx):
    request = req(ctx, labels=["org.opencontainers.image.source=https://x/y", "empty="])
    assert request.labels == (("org.opencontainers.image.source", "https://x/y"), ("empty", ""))
    input_error(req, ctx, labels=["novalue"])
    input_error(req, ctx, labels=["=v"])


# --- secrets -------------------------------------------------------------------------------------


def test_secret_from_file(tmp_path):
    token = tmp_path / "token.txt"
    token.write_text("s3cr3t")
    spec = parse_secret(f"id=hf_token,src={token}", {})
    assert spec == SecretSpec(id="hf_token", src=token.resolve())
    assert parse_secret(f"id=hf_token,source={token}", {}).src == token.resolve()


def test_secret_file_must_exist(tmp_path):
    missing = tmp_path / "nope.txt"
    err = input_error(parse_secret, f"id=x,src={missing}", {})
    assert "does not exist" in err.message


def test_secret_from_env():
    assert parse_secret("id=hf_token,env=HF_TOKEN", {"HF_TOKEN": "v"}) == SecretSpec(id="hf_token", env="HF_TOKEN")
    assert parse_secret("id=t,type=env,src=HF_TOKEN", {"HF_TOKEN": "v"}) == SecretSpec(id="t", env="HF_TOKEN")


def test_secret_env_must_be_set():
    err = input_error(parse_secret, "id=x,env=NOT_SET_ANYWHERE", {})
    assert "NOT_SET_ANYWHERE" in err.message


def test_secret_with_both_or_neither_source(tmp_path):
    token = tmp_path / "t"
    token.write_text("v")
    input_error(parse_secret, f"id=x,src={token},env=V", {"V": "1"})
    input_error(parse_secret, "id=x", {})


def test_secret_needs_a_valid_id(tmp_path):
    token = tmp_path / "t"
    token.write_text("v")
    input_error(parse_secret, f"src={token}", {})
    input_error(parse_secret, f"id=bad id,src={token}", {})


def test_secret_unknown_field_is_rejected_without_echoing_its_value():
    err = input_error(parse_secret, "id=x,token=hunter2-value", {"V": "1"})
    assert "token" in err.message
    assert "hunter2" not in err.message


def test_secret_missing_file_message_may_name_the_path():
    err = input_error(parse_secret, "id=x,src=hunter2-value", {})
    assert "hunter2-value" in err.message  # the path the user typed, so they can fix it


@pytest.mark.parametrize(
    "text",
    [
        "hunter2",  # a value pasted where the whole spec belongs
        "id=x,hunter2",  # a value pasted as a field
        "hunter2,id=x",
        "id=x,src=/tmp/a,hunter2",
    ],
)
def test_malformed_secret_never_echoes_what_looks_like_a_value(text):
    err = input_error(parse_secret, text, {})
    assert "hunter2" not in err.message, err.message


def test_secrets_through_build_request(ctx, tmp_path):
    token = tmp_path / "t"
    token.write_text("v")
    request = req(ctx, secrets=[f"id=a,src={token}", "id=b,env=B"], environ={"B": "1"})
    assert request.secrets == (SecretSpec(id="a", src=token.resolve()), SecretSpec(id="b", env="B"))


# --- platforms and target ---------------------------------------------------------------------------


def test_platform_lists(ctx):
    request = req(ctx, platforms=["linux/amd64,linux/arm64", "linux/arm/v7"])
    assert request.platforms == ("linux/amd64", "linux/arm64", "linux/arm/v7")


@pytest.mark.parametrize("platform", ["linux", "Linux/amd64", "linux/amd64/v8/x", "linux amd64"])
def test_invalid_platforms(ctx, platform):
    input_error(req, ctx, platforms=[platform])


def test_target(ctx):
    assert req(ctx, target="runtime").target == "runtime"
    input_error(req, ctx, target="bad target")


# --- builder ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, host_port",
    [
        ("tcp://127.0.0.1:1234", ("127.0.0.1", 1234)),
        ("tcp://buildkitd.pool.svc:8372", ("buildkitd.pool.svc", 8372)),
        ("tcp://[::1]:1234", ("::1", 1234)),
    ],
)
def test_tcp_builders(address, host_port):
    builder = parse_builder(address, None)
    assert builder.address == address
    assert builder.host_port == host_port
    assert builder.tls is None


def test_unix_builder():
    builder = parse_builder("unix:///run/buildkit/buildkitd.sock", None)
    assert builder.host_port is None


@pytest.mark.parametrize(
    "address",
    ["http://127.0.0.1:1234", "127.0.0.1:1234", "localhost:1234", "docker-container://x", "", "tcp://", "unix://"],
)
def test_bad_builder_addresses(address):
    input_error(parse_builder, address, None)


def test_port_that_is_not_a_number():
    err = input_error(parse_builder, "tcp://127.0.0.1:abc", None)
    assert "port" in err.message


@pytest.mark.parametrize("address", ["tcp://127.0.0.1", "tcp://127.0.0.1:"])
def test_tcp_builder_without_a_port_number_is_rejected(address):
    # buildctl dials tcp://HOST as net.Dial("tcp", "HOST"), which fails with "missing port in
    # address"; warmbuild's own reachability check would meanwhile probe port 1234. Reject early.
    err = input_error(parse_builder, address, None)
    assert "PORT" in err.message or "port" in err.message


# --- TLS ------------------------------------------------------------------------------------------------


def _pem(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_tls_files_that_exist(tmp_path):
    tls = TlsFiles(
        ca=_pem(tmp_path, "ca.pem"), cert=_pem(tmp_path, "c.pem"), key=_pem(tmp_path, "k.pem"), server_name="b"
    )
    assert parse_builder("tcp://127.0.0.1:1234", tls).tls == tls
    ca_only = TlsFiles(ca=_pem(tmp_path, "ca2.pem"))
    assert parse_builder("tcp://127.0.0.1:1234", ca_only).tls == ca_only


@pytest.mark.parametrize("field", ["ca", "cert", "key"])
def test_tls_file_must_exist(tmp_path, field):
    files = {"ca": _pem(tmp_path, "ca.pem"), "cert": _pem(tmp_path, "c.pem"), "key": _pem(tmp_path, "k.pem")}
    files[field] = tmp_path / f"missing-{field}.pem"
    err = input_error(parse_builder, "tcp://127.0.0.1:1234", TlsFiles(**files))
    assert f"--tls-{field}" in err.message and str(files[field]) in err.message


def test_tls_cert_and_key_go_together(tmp_path):
    cert, key = _pem(tmp_path, "c.pem"), _pem(tmp_path, "k.pem")
    input_error(parse_builder, "tcp://127.0.0.1:1234", TlsFiles(cert=cert))
    input_error(parse_builder, "tcp://127.0.0.1:1234", TlsFiles(key=key))


# --- one-line messages, even for inputs with line breaks ---------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda ctx: req(ctx, build_args=["BAD NAME\nX=1"]),
        lambda ctx: req(ctx, labels=["no-equals\nsecond"]),
        lambda ctx: parse_builder("ftp://host\n:1234", None),
    ],
    ids=["build-arg", "label", "builder"],
)
def test_messages_stay_on_one_line_when_the_input_has_a_line_break(ctx, call):
    # CI inputs are often multi-line YAML strings; the error must still be one line
    # (errors.WarmbuildError: "`str(err)` is the one line shown to the user").
    input_error(call, ctx)


# --- compression ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compression, level", [("gzip", None), ("gzip", 9), ("zstd", 0), ("zstd", 22), ("uncompressed", None)]
)
def test_compressions_and_their_levels(ctx, compression, level):
    request = req(ctx, compression=compression, compression_level=level)
    assert request.compression == Compression(compression, level)


def test_gzip_at_its_default_level_is_buildkits_default(ctx):
    assert req(ctx).compression == Compression() and Compression().is_buildkit_default
    assert not Compression("gzip", 6).is_buildkit_default and not Compression("zstd").is_buildkit_default


@pytest.mark.parametrize(
    "compression, level, fragment",
    [
        ("brotli", None, "invalid --compression 'brotli': choose gzip, zstd, uncompressed"),
        ("gzip", 10, "invalid --compression-level 10 for gzip: allowed 0–9"),
        ("zstd", 23, "allowed 0–22"),
        ("uncompressed", 1, "drop --compression-level"),
    ],
)
def test_a_compression_buildkit_would_refuse_is_one_line(ctx, compression, level, fragment):
    assert fragment in input_error(req, ctx, compression=compression, compression_level=level).message


# --- cache imports and exports ---------------------------------------------------------------------


def test_no_caches_by_default(ctx):
    request = req(ctx)
    assert request.cache_imports == () and request.cache_exports == ()


def test_cache_flags_are_parsed_into_specs_in_order(ctx):
    request = req(
        ctx,
        cache_from=["type=registry,ref=r/app:cache", 'type=local,"src=/a,b"'],
        cache_to=["type=registry,ref=r/app:cache,mode=max", "type=s3,region=eu,bucket=b"],
    )
    assert request.cache_imports == (
        CacheSpec("registry", (("ref", "r/app:cache"),)),
        CacheSpec("local", (("src", "/a,b"),)),
    )
    assert request.cache_exports == (
        CacheSpec("registry", (("ref", "r/app:cache"), ("mode", "max"))),
        CacheSpec("s3", (("region", "eu"), ("bucket", "b"))),
    )


@pytest.mark.parametrize("flag", ["cache_from", "cache_to"])
def test_a_bare_reference_is_the_registry_cache(ctx, flag):
    request = req(ctx, **{flag: ["127.0.0.1:5000/team/app:buildcache"]})
    (spec,) = request.cache_imports if flag == "cache_from" else request.cache_exports
    assert spec == CacheSpec.registry_import("127.0.0.1:5000/team/app:buildcache")
    assert spec.ref == "127.0.0.1:5000/team/app:buildcache" and not spec.max_mode


def test_quoted_fields_as_buildctl_reads_them(ctx):
    (spec,) = req(ctx, cache_from=['type=local,"src=/a ""b"", c"', '"type=registry"']).cache_imports[:1]
    assert spec.attributes == (("src", '/a "b", c'),)
    assert req(ctx, cache_from=['"type=registry"']).cache_imports == (CacheSpec("registry"),)


def test_a_type_key_in_any_case_names_the_backend(ctx):
    assert req(ctx, cache_to=["TYPE=inline"]).cache_exports == (CacheSpec("inline"),)


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("ref=r/app:cache,mode=max", "invalid --cache-to 'ref=…,mode=…': name the cache backend with type=TYPE"),
        ("type=,ref=r/app:cache", "name the cache backend"),
        ("type=registry,=x", "field 2 is not KEY=VALUE"),
        ("type=registry,ref", "field 2 is not KEY=VALUE"),
        ("type=registry,ref=x,", "field 3 is not KEY=VALUE"),
        ("type=registry, ref=x", "field 2 is not KEY=VALUE"),
        ("", "field 1 is not KEY=VALUE"),
        ('type=local,"src=/a', "field 2 opens a quote it never closes"),
        ('type=local,"src=/a"b', "field 2 has text after its closing quote"),
        ('type=local,src="/a,b"', "field 2 has a quote or line break inside"),
        ("type=local,src=/a\nb", "field 2 has a quote or line break inside"),
        ("Not A Ref", "invalid --cache-to: write BuildKit's type=TYPE,KEY=VALUE"),
    ],
)
def test_a_malformed_cache_spec_is_one_line(ctx, value, fragment):
    assert fragment in input_error(req, ctx, cache_to=[value]).message


def test_a_cache_error_never_echoes_a_value(ctx):
    message = input_error(req, ctx, cache_to=["secret_access_key=hunter2,bucket=b"]).message
    assert "hunter2" not in message and "secret_access_key=…" in message
    assert "hunter2" not in input_error(req, ctx, cache_to=['type=s3,"secret_access_key=hunter2']).message


@pytest.mark.parametrize("seconds, ok", [(2, False), (3, True), (300, True), (301, False), (3600, False)])
def test_lease_seconds_are_3_to_300(seconds, ok):
    from warmbuild.config import PoolFlags, check_pool_flags

    flags = PoolFlags(pool="default", lease_seconds=seconds)
    if ok:
        assert check_pool_flags(flags).lease_seconds == seconds
    else:
        assert "--lease-seconds must be 3 to 300" in input_error(check_pool_flags, flags).message
