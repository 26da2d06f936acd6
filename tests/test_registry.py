"""The checkpoint registry: checkpoints.toml, --model resolution, Hub errors, hashes, `models list`.

The Hub is simulated by replacing `hf_hub_download` with functions that return local files or raise
the exceptions huggingface_hub itself raises, built the way the library builds them (from an HTTP
response passed through `hf_raise_for_status`). Offline mode is forced for every test, so nothing
here can reach the network even if a test forgets to patch the download.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import (
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    hf_raise_for_status,
)

from musicguide import cache, hub
from musicguide.cache import verify_sha256
from musicguide.errors import UserError
from musicguide.models import build_model, save_model_folder, tiny_random_config
from musicguide.models.folder import load_model
from musicguide.registry import (
    DEFAULT_REGISTRY_PATH,
    list_models,
    load_registry,
    resolve_model,
)

try:
    import httpx2 as http_client
except ImportError:  # huggingface_hub 1.x uses httpx, whose Request/Response API is the same
    import httpx as http_client

SAO_REPO = "stabilityai/stable-audio-open-1.0"
# Whatever checkpoints.toml pins (a branch until someone can reach the Hub, then a commit hash).
SAO_REVISION = load_registry(DEFAULT_REGISTRY_PATH)["sao-1.0"].revision
A_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def isolated_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline, with an empty Hub cache and musicguide cache, and a download that fails the test."""
    hub_cache = tmp_path / "hf-cache"
    hub_cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("MUSICGUIDE_CACHE_DIR", str(tmp_path / "musicguide-cache"))
    monkeypatch.delenv("MUSICGUIDE_CHECKPOINTS", raising=False)

    def unexpected_download(**kwargs: Any) -> str:
        raise AssertionError(f"test tried to download {kwargs}")

    monkeypatch.setattr(hub, "hf_hub_download", unexpected_download)
    return hub_cache


def write_registry(folder: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install a registry file for this test through the documented environment variable."""
    path = folder / "checkpoints.toml"
    path.write_text(text)
    monkeypatch.setenv("MUSICGUIDE_CHECKPOINTS", str(path))
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_tiny_model(folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a real model folder and return the state dict it should load back as."""
    torch.manual_seed(seed)
    model = build_model(tiny_random_config())
    save_model_folder(model, folder)
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


# checkpoints.toml


def test_shipped_registry_lists_the_required_models_with_their_fields() -> None:
    entries = load_registry(DEFAULT_REGISTRY_PATH)
    assert {"sao-1.0", "sao-small", "tiny-random"} <= set(entries)
    assert entries["sao-1.0"].repo == SAO_REPO
    assert entries["sao-small"].repo == "stabilityai/stable-audio-open-small"
    for entry in entries.values():
        assert entry.description.strip() and entry.license.strip()
        if entry.source == "hub":
            assert entry.revision
            assert {"model_config.json", "model.safetensors"} <= set(entry.files)
            assert entry.gated is True
            assert set(entry.sha256) <= set(entry.files)
    tiny = entries["tiny-random"]
    assert tiny.source == "builtin" and isinstance(tiny.seed, int)
    assert "noise" in tiny.description


def test_registry_path_can_be_overridden_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_registry(
        tmp_path,
        '[models.only]\nsource = "builtin"\nseed = 7\nlicense = "MIT"\ndescription = "one model"\n',
        monkeypatch,
    )
    entries = load_registry()
    assert list(entries) == ["only"]
    assert entries["only"].seed == 7 and entries["only"].gated is False


GOOD_HUB_ENTRY = (
    f'[models.m]\nsource = "hub"\nrepo = "org/m"\nrevision = "{A_COMMIT}"\n'
    'files = ["model_config.json", "model.safetensors"]\nlicense = "MIT"\ndescription = "d"\n'
)


BUILTIN_ENTRY = '[models.m]\nsource = "builtin"\nseed = {seed}\nlicense = "MIT"\ndescription = "d"\n'


@pytest.mark.parametrize(
    ("text", "key_phrases"),
    [
        # Each message names the field at fault and, where there is one, the value it got.
        ("[models.m\n", ["TOML"]),
        ("title = 'x'\n", ["[models"]),
        (GOOD_HUB_ENTRY.replace('repo = "org/m"\n', ""), ["'m'", "'repo'"]),
        (GOOD_HUB_ENTRY.replace('source = "hub"', 'source = "ftp"'), ["'source'", "'ftp'"]),
        (GOOD_HUB_ENTRY.replace('"org/m"', '"org-m"'), ["'repo'", "'org-m'"]),
        (GOOD_HUB_ENTRY + "sha265 = {}\n", ["'sha265'"]),
        (GOOD_HUB_ENTRY.replace('"model.safetensors"', '"model.ckpt"'), ["'files'", "'model.safetensors'"]),
        (GOOD_HUB_ENTRY.replace('"model_config.json"', '"sub/model_config.json"'),
         ["'files'", "sub/model_config.json"]),
        (GOOD_HUB_ENTRY + "gated = 'yes'\n", ["'gated'"]),
        (GOOD_HUB_ENTRY + "[models.m.sha256]\n'model.safetensors' = 'abc'\n", ["sha256", "'model.safetensors'"]),
        (GOOD_HUB_ENTRY + f"[models.m.sha256]\n'other.bin' = '{'0' * 64}'\n", ["'sha256'", "'other.bin'"]),
        (GOOD_HUB_ENTRY.replace('description = "d"', 'description = ""'), ["'description'"]),
        # Values a hostile or careless registry can hold: one line each, never an internal error.
        (BUILTIN_ENTRY.format(seed=2**64), ["'seed'", str(2**64)]),
        (BUILTIN_ENTRY.format(seed=-1), ["'seed'", "-1"]),
        (BUILTIN_ENTRY.format(seed=1.5), ["'seed'", "1.5"]),
        (BUILTIN_ENTRY.format(seed='"7"'), ["'seed'", "'7'"]),
        (BUILTIN_ENTRY.format(seed="1" * 5000), ["TOML"]),
        (BUILTIN_ENTRY.format(seed="[" * 50_000 + "]" * 50_000), ["TOML"]),
        (GOOD_HUB_ENTRY.replace('"org/m"', '"org/m m"'), ["'repo'", "org/m m"]),
        (GOOD_HUB_ENTRY.replace('"org/m"', '"org/m--x"'), ["'repo'", "org/m--x"]),
        (GOOD_HUB_ENTRY.replace(f'revision = "{A_COMMIT}"', 'revision = "ma in"'), ["'revision'", "'ma in'"]),
        (GOOD_HUB_ENTRY.replace('"model.safetensors"]', '"model.safetensors", ".."]'), ["'files'", "'..'"]),
        (GOOD_HUB_ENTRY.replace('description = "d"', 'description = "two\\nlines"'), ["'description'"]),
        (GOOD_HUB_ENTRY.replace("[models.m]", '[models."m\\n"]'), ["'m\\n'"]),
    ],
)
def test_invalid_registry_is_rejected_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key_phrases: list[str]
) -> None:
    path = write_registry(tmp_path, text, monkeypatch)
    with pytest.raises(UserError) as raised:
        load_registry()
    for phrase in key_phrases:
        assert phrase in raised.value.message
    assert str(path) in raised.value.message
    assert "\n" not in raised.value.message


def test_the_largest_builtin_seed_builds_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_registry(tmp_path, BUILTIN_ENTRY.format(seed=2**64 - 1), monkeypatch)
    model, resolved = load_model("m")
    assert resolved.seed == 2**64 - 1 and not model.training


def test_a_registry_that_is_a_folder_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICGUIDE_CHECKPOINTS", str(tmp_path))
    with pytest.raises(UserError) as raised:
        load_registry()
    assert str(tmp_path) in raised.value.message and "\n" not in raised.value.message


def test_model_argument_too_long_for_the_filesystem_is_a_user_error() -> None:
    with pytest.raises(UserError) as raised:
        resolve_model("a" * 300)
    assert "--model" in raised.value.message and "a" * 20 in raised.value.message  # the name, shortened
    assert "\n" not in str(raised.value)


def test_a_home_folder_that_does_not_exist_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError) as raised:
        resolve_model("~no-such-user-here/m")
    assert "--model" in raised.value.message and "~no-such-user-here" in raised.value.message
    monkeypatch.setenv("MUSICGUIDE_CHECKPOINTS", "~no-such-user-here/checkpoints.toml")
    with pytest.raises(UserError) as raised:
        load_registry()
    assert "MUSICGUIDE_CHECKPOINTS" in raised.value.message and "~no-such-user-here" in raised.value.message


def test_missing_registry_file_names_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUSICGUIDE_CHECKPOINTS", str(tmp_path / "absent.toml"))
    with pytest.raises(UserError, match="does not exist") as raised:
        load_registry()
    assert "MUSICGUIDE_CHECKPOINTS" in (raised.value.hint or "")


# --model resolution


@pytest.mark.parametrize(
    ("typo", "suggestion"), [("sao-1", "sao-1.0"), ("tiny-randm", "tiny-random"), ("tiny", "tiny-random")]
)
def test_unknown_name_lists_known_models_and_suggests_the_closest(typo: str, suggestion: str) -> None:
    with pytest.raises(UserError) as raised:
        resolve_model(typo)
    assert repr(typo) in raised.value.message
    hint = raised.value.hint or ""
    assert f"did you mean {suggestion!r}" in hint
    assert "sao-1.0" in hint and "sao-small" in hint and "tiny-random" in hint


def test_path_that_does_not_exist_is_reported_as_a_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(missing))


def test_a_file_instead_of_a_folder_is_rejected(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a model")
    with pytest.raises(UserError, match="expects a model folder") as raised:
        resolve_model(str(weights))
    assert "model_config.json" in (raised.value.hint or "")


def test_local_folder_loads_the_saved_weights(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    expected = save_tiny_model(folder, seed=3)
    model, resolved = load_model(str(folder))
    assert resolved.kind == "local" and resolved.folder == folder.resolve()
    assert not model.training
    assert_same_state(model.state_dict(), expected)


def test_existing_folder_wins_over_a_registry_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_tiny_model(tmp_path / "tiny-random", seed=5)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_model("tiny-random")
    assert resolved.kind == "local" and resolved.folder == (tmp_path / "tiny-random").resolve()


def test_folder_missing_its_weights_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "half"
    save_tiny_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        load_model(str(folder))


def test_config_that_does_not_match_the_weights_names_the_keys(tmp_path: Path) -> None:
    folder = tmp_path / "mismatched"
    save_tiny_model(folder)
    config_path = folder / "model_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["diffusion"]["config"]["depth"] += 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(UserError) as raised:
        load_model(str(folder))
    assert "does not match model_config.json: missing" in raised.value.message
    assert "layers.2." in raised.value.message
    assert "\n" not in raised.value.message


def test_local_registry_entry_loads_relative_to_the_registry_and_checks_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = save_tiny_model(tmp_path / "models" / "demo", seed=11)
    digest = sha256_of(tmp_path / "models" / "demo" / "model.safetensors")
    entry = (
        '[models.demo]\nsource = "local"\npath = "models/demo"\nlicense = "MIT"\ndescription = "demo"\n'
        "[models.demo.sha256]\n'model.safetensors' = '{digest}'\n"
    )
    write_registry(tmp_path, entry.format(digest=digest), monkeypatch)
    model, resolved = load_model("demo")
    assert resolved.kind == "local" and resolved.name == "demo"
    assert_same_state(model.state_dict(), expected)

    write_registry(tmp_path, entry.format(digest="f" * 64), monkeypatch)
    with pytest.raises(UserError, match="sha256 mismatch") as raised:
        resolve_model("demo")
    assert "git lfs pull" in (raised.value.hint or "")

    write_registry(tmp_path, entry.replace("models/demo", "models/gone").format(digest=digest), monkeypatch)
    with pytest.raises(UserError, match="which does not exist"):
        resolve_model("demo")


# tiny-random


def test_tiny_random_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    first, resolved = load_model("tiny-random")
    assert torch.equal(torch.get_rng_state(), rng_before)
    second, _ = load_model("tiny-random")
    assert resolved.kind == "builtin" and resolved.folder is None
    assert_same_state(first.state_dict(), second.state_dict())
    assert not first.training


def test_tiny_random_weights_follow_the_registry_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_zero, _ = load_model("tiny-random")
    write_registry(
        tmp_path,
        '[models."tiny-random"]\nsource = "builtin"\nseed = 1\nlicense = "MIT"\ndescription = "noise"\n',
        monkeypatch,
    )
    seed_one, _ = load_model("tiny-random")
    differing = [
        key
        for key, value in seed_zero.state_dict().items()
        if value.is_floating_point() and not torch.equal(value, seed_one.state_dict()[key])
    ]
    assert differing


def test_tiny_random_honours_dtype() -> None:
    model, _ = load_model("tiny-random", dtype=torch.float64)
    assert {value.dtype for value in model.state_dict().values() if value.is_floating_point()} == {torch.float64}


# sha256 check


def test_hash_check_accepts_the_right_digest_and_rejects_a_wrong_one(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights " * 1000)
    verify_sha256(weights, sha256_of(weights))
    wrong = "0" * 64
    with pytest.raises(UserError) as raised:
        verify_sha256(weights, wrong)
    message = raised.value.message
    assert str(weights) in message and wrong in message and sha256_of(weights) in message
    assert f"delete {weights.resolve()}" in (raised.value.hint or "")


def test_hash_check_is_remembered_until_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"original")
    digest = sha256_of(weights)
    verify_sha256(weights, digest)

    hashed: list[Path] = []
    real_hash = cache.file_sha256

    def counting_hash(path: Path) -> str:
        hashed.append(path)
        return real_hash(path)

    monkeypatch.setattr(cache, "file_sha256", counting_hash)
    verify_sha256(weights, digest)
    assert hashed == []

    weights.write_bytes(b"tampered, and longer")
    with pytest.raises(UserError, match="sha256 mismatch"):
        verify_sha256(weights, digest)
    assert hashed == [weights.resolve()]


# Hub downloads


def hub_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hashes: dict[str, str]) -> None:
    table = "".join(f"'{name}' = '{digest}'\n" for name, digest in hashes.items())
    write_registry(
        tmp_path,
        '[models.fake]\nsource = "hub"\nrepo = "org/fake"\nrevision = "abc123"\n'
        'files = ["model_config.json", "model.safetensors"]\ngated = true\nlicense = "MIT"\n'
        f'description = "fake"\n[models.fake.sha256]\n{table}',
        monkeypatch,
    )


def serve_from(folder: Path, calls: list[dict[str, Any]]) -> Callable[..., str]:
    def download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(folder / kwargs["filename"])

    return download


def test_hub_model_downloads_every_file_with_pinned_revision_and_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = tmp_path / "snapshot"
    expected = save_tiny_model(snapshot, seed=2)
    hub_registry(tmp_path, monkeypatch, {"model.safetensors": sha256_of(snapshot / "model.safetensors")})
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(hub, "hf_hub_download", serve_from(snapshot, calls))

    model, resolved = load_model("fake", token="hf_secret")
    assert resolved.kind == "hub" and resolved.folder == snapshot
    assert (resolved.repo, resolved.revision) == ("org/fake", "abc123")
    assert [(c["repo_id"], c["filename"], c["revision"], c["token"]) for c in calls] == [
        ("org/fake", "model_config.json", "abc123", "hf_secret"),
        ("org/fake", "model.safetensors", "abc123", "hf_secret"),
    ]
    assert_same_state(model.state_dict(), expected)


def test_hub_download_with_wrong_hash_names_the_file_and_both_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = tmp_path / "snapshot"
    save_tiny_model(snapshot)
    wrong = "ab" * 32
    hub_registry(tmp_path, monkeypatch, {"model_config.json": wrong})
    monkeypatch.setattr(hub, "hf_hub_download", serve_from(snapshot, []))
    with pytest.raises(UserError) as raised:
        resolve_model("fake")
    config = snapshot / "model_config.json"
    message = raised.value.message
    assert str(config) in message and wrong in message and sha256_of(config) in message
    assert "delete" in (raised.value.hint or "")


def hub_http_error(status: int, error_code: str | None, filename: str = "model_config.json") -> Exception:
    """The exception huggingface_hub raises for a Hub response, produced by the library itself."""
    url = f"https://huggingface.co/{SAO_REPO}/resolve/{SAO_REVISION}/{filename}"
    headers = {"X-Error-Code": error_code} if error_code else {}
    response = http_client.Response(status, headers=headers, request=http_client.Request("HEAD", url))
    with pytest.raises(Exception) as raised:
        hf_raise_for_status(response)
    return raised.value


def not_cached_because_of(cause: Exception) -> LocalEntryNotFoundError:
    """What hf_hub_download raises when the metadata request failed and the file is not cached."""
    error = LocalEntryNotFoundError(
        "An error happened while trying to locate the file on the Hub and we cannot find the requested"
        " files in the local cache."
    )
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("make_error", "offline", "key_phrases", "hint_fragment"),
    [
        (lambda: hub_http_error(401, "GatedRepo"), False, ["'sao-1.0'", SAO_REPO, "gated"], "HF_TOKEN"),
        (lambda: hub_http_error(404, "RepoNotFound"), False, [SAO_REPO, "not found"], "HF_TOKEN"),
        (lambda: hub_http_error(404, "RevisionNotFound"), False, [repr(SAO_REVISION), SAO_REPO], "'revision'"),
        (lambda: hub_http_error(404, "EntryNotFound"), False, ["model_config.json", SAO_REPO], "'files'"),
        (
            lambda: not_cached_because_of(http_client.ConnectError("[Errno -3] name resolution failed")),
            False,
            ["model_config.json", SAO_REPO, "not cached"],
            f"hf download {SAO_REPO}",
        ),
        (lambda: http_client.ReadTimeout("read timed out"), False, ["model_config.json", "not cached"], "network"),
        (
            lambda: not_cached_because_of(OfflineModeIsEnabled("offline mode is enabled")),
            True,
            ["HF_HUB_OFFLINE", "model_config.json"],
            "hf download",
        ),
        (lambda: hub_http_error(503, None), False, ["model_config.json", "503"], "retry"),
    ],
    ids=["gated", "repo", "revision", "entry", "no-network", "timeout", "offline", "server"],
)
def test_hub_errors_become_one_line_user_errors(
    monkeypatch: pytest.MonkeyPatch,
    make_error: Callable[[], Exception],
    offline: bool,
    key_phrases: list[str],
    hint_fragment: str,
) -> None:
    error = make_error()
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", offline)

    def failing_download(**kwargs: Any) -> str:
        raise error

    monkeypatch.setattr(hub, "hf_hub_download", failing_download)
    with pytest.raises(UserError) as raised:
        resolve_model("sao-1.0")
    for phrase in key_phrases:
        assert phrase in raised.value.message
    assert hint_fragment in (raised.value.hint or "")
    assert "\n" not in str(raised.value)
    assert raised.value.__cause__ is error


def test_gated_error_is_not_mistaken_for_a_missing_repository() -> None:
    error = hub_http_error(403, "GatedRepo")
    assert isinstance(error, hub.RepositoryNotFoundError)
    user_error = hub._hub_user_error(error, load_registry()["sao-1.0"], "model.safetensors")
    assert "is gated" in user_error.message


# models list


def fake_hub_cache(cache: Path, repo: str, files: list[str], revision: str,
                   commit: str = "c0ffee" * 6 + "beef") -> None:
    """The Hub cache layout: refs/<branch> → commit, snapshots/<commit>/<file> (blobs are irrelevant
    here). A revision that is already a commit hash is its own snapshot, with no ref."""
    repo_folder = cache / f"models--{repo.replace('/', '--')}"
    (repo_folder / "refs").mkdir(parents=True)
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    else:
        (repo_folder / "refs" / revision).write_text(commit)
    snapshot = repo_folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for filename in files:
        (snapshot / filename).write_bytes(b"cached")


def test_models_list_reports_what_is_cached_without_the_network(isolated_hub: Path) -> None:
    entries = load_registry()
    fake_hub_cache(isolated_hub, SAO_REPO, ["model_config.json", "model.safetensors"], SAO_REVISION)
    small = entries["sao-small"]
    fake_hub_cache(isolated_hub, small.repo, ["model_config.json"], small.revision)
    rows = {row.name: row for row in list_models()}
    assert rows["sao-1.0"].available is True
    assert rows["sao-small"].available is False
    assert rows["tiny-random"].available is True
    assert rows["sao-1.0"].location == SAO_REPO and rows["sao-1.0"].gated is True
    assert rows["sao-1.0"].revision == SAO_REVISION and rows["sao-1.0"].license
    assert rows["tiny-random"].source == "builtin" and rows["tiny-random"].revision is None


def test_models_list_reports_local_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_tiny_model(tmp_path / "present")
    write_registry(
        tmp_path,
        '[models.here]\nsource = "local"\npath = "present"\nlicense = "MIT"\ndescription = "d"\n'
        '[models.gone]\nsource = "local"\npath = "absent"\nlicense = "MIT"\ndescription = "d"\n',
        monkeypatch,
    )
    rows = {row.name: row for row in list_models()}
    assert rows["here"].available is True and rows["here"].location == str((tmp_path / "present").resolve())
    assert rows["gone"].available is False


def test_loading_a_model_folder_imports_no_hub_client(tmp_path: Path) -> None:
    """A folder resolves without huggingface_hub: the GPU machine's image lacks what its downloads
    import (httpx2), and a bench on a lent GPU loads a folder through the API."""
    import subprocess
    import sys

    from musicguide.models import build_model, tiny_random_config
    from musicguide.models.folder import save_model_folder

    save_model_folder(build_model(tiny_random_config()), tmp_path / "model")
    code = ("import sys\nfrom musicguide import Editor\nEditor.from_pretrained(sys.argv[1], device='cpu')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('huggingface_hub', 'httpx2')))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("repo", ["stabilityai/stable-audio-open-1.0", "a/b", "_x/y_", "a-/b", "a/.b", "a--b/c",
                                  "a/b..c", "a/b.git", "x" * 96 + "/y", "x" * 97 + "/y", "\u00e9/b", "a b/c"])
def test_repository_ids_follow_the_hubs_rules_without_importing_it(repo: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry checks ids itself (importing huggingface_hub costs every command 0.1 s); its
    verdict must be huggingface_hub's own."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
        valid = True
    except HFValidationError:
        valid = False
    path = write_registry(tmp_path, f'[models.x]\nsource = "hub"\nrepo = "{repo}"\nrevision = "main"\n'
                                    'files = ["model_config.json", "model.safetensors"]\nlicense = "MIT"\n'
                                    'description = "x"\n', monkeypatch)
    if valid:
        assert load_registry(path)["x"].repo == repo
    else:
        with pytest.raises(UserError, match="not a valid Hugging Face repository id"):
            load_registry(path)
