"""The local Hub server against the unmodified `huggingface_hub` client (and transformers), over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

import hftransfer.testing.hub_server as hub_server_module
from hftransfer.testing import LocalHubServer

MIB = 1024 * 1024


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _raw(server, method: str, target: str, body: bytes | None = None, headers: dict | None = None):
    """Send a request verbatim (http.client does not normalise `..` or re-encode the target)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _ndjson(*items: dict) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


# --------------------------------------------------------------------------------------------------------------------
# Accounts, repositories, auth
# --------------------------------------------------------------------------------------------------------------------


def test_whoami_and_bad_tokens(hub_server, hub_api):
    me = hub_api.whoami()
    assert me["name"] == "alice" and me["type"] == "user"
    assert [org["name"] for org in me["orgs"]] == ["hf-team"]
    assert me["auth"]["accessToken"]["role"] == "write"
    read_only = HfApi(endpoint=hub_server.url).whoami(token=hub_server.token_for("alice", "read"))
    assert read_only["auth"]["accessToken"]["role"] == "read"

    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(endpoint=hub_server.url).whoami(token="hf_not_a_real_token")
    assert excinfo.value.response.status_code == 401
    status, _, _ = _raw(hub_server, "GET", "/api/whoami-v2")
    assert status == 401
    # A wrong token is refused everywhere, even on public reads (as on the Hub), and not mistaken for a missing repo.
    with pytest.raises(HfHubHTTPError) as excinfo:
        list(HfApi(endpoint=hub_server.url, token="hf_wrong").list_models())
    assert excinfo.value.response.status_code == 401
    assert not isinstance(excinfo.value, RepositoryNotFoundError)


def test_create_repo_exist_ok_and_conflict(hub_api, hub_repo_id):
    url = hub_api.create_repo(hub_repo_id)
    assert url.repo_id == hub_repo_id and url.repo_type == "model"
    with pytest.raises(HfHubHTTPError) as excinfo:
        hub_api.create_repo(hub_repo_id)
    assert excinfo.value.response.status_code == 409
    assert excinfo.value.response.json()["url"] == str(url)
    assert hub_api.create_repo(hub_repo_id, exist_ok=True) == url

    info = hub_api.model_info(hub_repo_id)
    assert info.id == hub_repo_id and info.private is False and len(info.sha) == 40
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # the Hub's initial commit
    assert hub_api.repo_exists(hub_repo_id) and not hub_api.repo_exists(hub_repo_id + "-nope")

    dataset_id = hub_repo_id + "-data"
    assert hub_api.create_repo(dataset_id, repo_type="dataset").repo_type == "dataset"
    hub_api.upload_file(
        path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv", repo_id=dataset_id, repo_type="dataset"
    )
    assert hub_api.list_repo_files(dataset_id, repo_type="dataset") == [".gitattributes", "train.csv"]
    assert hub_api.dataset_info(dataset_id).id == dataset_id
    with pytest.raises(RepositoryNotFoundError):
        hub_api.model_info(dataset_id)  # same name, other type

    hub_api.delete_repo(dataset_id, repo_type="dataset")
    assert not hub_api.repo_exists(dataset_id, repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        hub_api.delete_repo(dataset_id, repo_type="dataset")


def test_write_permissions(hub_server, hub_api, hub_api_bob, hub_repo):
    anonymous = HfApi(endpoint=hub_server.url, token=False)
    with pytest.raises(HfHubHTTPError) as excinfo:
        anonymous.create_repo("alice/anonymous-attempt")
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as excinfo:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo)
    assert excinfo.value.response.status_code == 401

    with pytest.raises(HfHubHTTPError) as excinfo:
        hub_api_bob.create_repo("alice/bob-was-here")
    assert excinfo.value.response.status_code == 403
    assert "namespace 'alice'" in str(excinfo.value)
    with pytest.raises(HfHubHTTPError) as excinfo:
        hub_api_bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo)
    assert excinfo.value.response.status_code == 403

    read_only = HfApi(endpoint=hub_server.url, token=hub_server.token_for("alice", "read"))
    with pytest.raises(HfHubHTTPError) as excinfo:
        read_only.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo)
    assert excinfo.value.response.status_code == 403 and "read-only" in str(excinfo.value)

    # Organizations: alice is a member of hf-team, bob is not.
    org_repo = "hf-team/" + hub_repo.split("/")[1]
    hub_api.create_repo(org_repo)
    hub_api.upload_file(path_or_fileobj=b"team", path_in_repo="team.txt", repo_id=org_repo)
    with pytest.raises(HfHubHTTPError) as excinfo:
        hub_api_bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=org_repo)
    assert excinfo.value.response.status_code == 403
    assert hub_api.list_repo_files(hub_repo) == [".gitattributes"]  # nothing landed


def test_private_repo_is_invisible_to_others(hub_server, hub_api, hub_api_bob, hub_repo_id):
    hub_api.create_repo(hub_repo_id, private=True)
    hub_api.upload_file(path_or_fileobj=b"secret", path_in_repo="secret.txt", repo_id=hub_repo_id)
    assert hub_api.model_info(hub_repo_id).private is True

    for api in (hub_api_bob, HfApi(endpoint=hub_server.url, token=False)):
        with pytest.raises(RepositoryNotFoundError):
            api.model_info(hub_repo_id)
        assert not api.file_exists(hub_repo_id, "secret.txt")
        assert hub_repo_id not in [m.id for m in api.list_models(author="alice")]
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub_repo_id, "secret.txt", token=hub_server.token_for("bob"))
    with pytest.raises(RepositoryNotFoundError):  # bob cannot write, nor learn that the repo exists
        hub_api_bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo_id)
    status, headers, _ = _raw(hub_server, "HEAD", f"/{hub_repo_id}/resolve/main/secret.txt")
    assert (status, headers["X-Error-Code"]) == (404, "RepoNotFound")

    with open(hf_hub_download(hub_repo_id, "secret.txt", token=hub_server.token_for("alice")), "rb") as handle:
        assert handle.read() == b"secret"
    hub_api.update_repo_settings(hub_repo_id, private=False)
    assert hub_api_bob.model_info(hub_repo_id).private is False


# --------------------------------------------------------------------------------------------------------------------
# Uploads and downloads
# --------------------------------------------------------------------------------------------------------------------


def test_upload_folder_roundtrip_regular_and_lfs(hub_api, hub_repo, tmp_path):
    files = {
        "config.json": json.dumps({"hidden_size": 8}).encode(),
        "README.md": b"---\nlicense: apache-2.0\ntags:\n- vision\n---\n# Model\n",
        "sub/dir/notes.txt": "héllo wörld\n".encode(),
        "docs/read me ü #1.txt": b"spaces, unicode and '#' survive URL quoting",
        "model.safetensors": b"tiny but LFS by .gitattributes pattern",
        "raw/blob.dat": b"\x00\x01binary sniffed as LFS",
        "weights/big.bin": os.urandom(11 * MIB),  # above the 10 MiB threshold
        "empty.txt": b"",
    }
    local = tmp_path / "folder"
    for name, data in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    commit = hub_api.upload_folder(folder_path=local, repo_id=hub_repo, commit_message="add everything")
    assert commit.oid and commit.commit_url.endswith(f"/{hub_repo}/commit/{commit.oid}")

    info = hub_api.model_info(hub_repo, files_metadata=True)
    assert info.sha == commit.oid
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(files) | {".gitattributes"}
    lfs = {name for name, s in siblings.items() if s.lfs is not None}
    assert lfs == {"model.safetensors", "raw/blob.dat", "weights/big.bin"}
    for name in lfs:
        assert siblings[name].lfs.sha256 == _sha256(files[name]) and siblings[name].lfs.size == len(files[name])
    assert all(siblings[name].size == len(data) for name, data in files.items())
    assert info.card_data.license == "apache-2.0" and "vision" in info.tags

    for name, data in files.items():
        with open(hf_hub_download(hub_repo, name, token=hub_api.token), "rb") as handle:
            assert handle.read() == data, name
    snapshot = Path(snapshot_download(hub_repo, token=hub_api.token, local_dir=tmp_path / "snapshot"))
    for name, data in files.items():
        assert (snapshot / name).read_bytes() == data, name

    metadata = get_hf_file_metadata(hf_hub_url(hub_repo, "weights/big.bin"), token=hub_api.token)
    assert (metadata.etag, metadata.size, metadata.commit_hash) == (
        _sha256(files["weights/big.bin"]),
        11 * MIB,
        info.sha,
    )
    # Re-uploading identical content is a no-op commit on the client side (preupload reports the same oids).
    again = hub_api.upload_folder(folder_path=local, repo_id=hub_repo)
    assert again.oid == commit.oid


def test_tree_listing_and_pagination(hub_server, hub_api, hub_repo):
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=path.encode())
        for path in ("a.txt", "d/b.txt", "d/e/c.txt", "d/e/f.txt")
    ]
    hub_api.create_commit(hub_repo, operations, commit_message="tree")
    assert hub_api.list_repo_files(hub_repo) == [".gitattributes", "a.txt", "d/b.txt", "d/e/c.txt", "d/e/f.txt"]
    top = {(entry.path, type(entry).__name__) for entry in hub_api.list_repo_tree(hub_repo)}
    assert top == {(".gitattributes", "RepoFile"), ("a.txt", "RepoFile"), ("d", "RepoFolder")}
    below = [entry.path for entry in hub_api.list_repo_tree(hub_repo, path_in_repo="d", recursive=True)]
    assert below == ["d/b.txt", "d/e", "d/e/c.txt", "d/e/f.txt"]
    with pytest.raises(EntryNotFoundError):
        list(hub_api.list_repo_tree(hub_repo, path_in_repo="nope"))
    infos = hub_api.get_paths_info(hub_repo, ["d/e", "a.txt", "missing"])
    assert sorted(entry.path for entry in infos) == ["a.txt", "d/e"]

    # Pagination follows the `Link: <...>; rel="next"` header, as the client does for big trees.
    target, seen, pages = f"/api/models/{hub_repo}/tree/main?recursive=true&limit=2", [], 0
    while target:
        status, headers, body = _raw(hub_server, "GET", target)
        assert status == 200
        seen, pages = seen + [entry["path"] for entry in json.loads(body)], pages + 1
        match = re.search(r'<([^>]+)>;\s*rel="next"', headers.get("Link", ""))
        target = match.group(1).removeprefix(hub_server.url) if match else None
    assert pages == 4
    assert seen == [".gitattributes", "a.txt", "d", "d/b.txt", "d/e", "d/e/c.txt", "d/e/f.txt"]


def test_missing_things_raise_typed_errors(hub_server, hub_api, hub_repo):
    hub_api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=hub_repo)
    head = hub_api.model_info(hub_repo).sha
    assert hub_api.file_exists(hub_repo, "config.json") and not hub_api.file_exists(hub_repo, "nope.json")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(hub_repo, "nope.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(hub_repo, "config.json", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hub_api.model_info(hub_repo, revision="0" * 40)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/does-not-exist", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        hub_api.model_info("nobody/does-not-exist")

    status, headers, body = _raw(hub_server, "HEAD", f"/{hub_repo}/resolve/main/nope.json")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"], body) == (404, "EntryNotFound", head, b"")
    status, headers, _ = _raw(hub_server, "GET", f"/{hub_repo}/resolve/nope/config.json")
    assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")
    status, headers, _ = _raw(hub_server, "GET", "/api/models/alice/nope-nope")
    assert (status, headers["X-Error-Code"]) == (404, "RepoNotFound")
    status, headers, _ = _raw(hub_server, "HEAD", f"/{hub_repo}/resolve/main/config.json")
    assert (status, headers["Content-Length"], headers["X-Repo-Commit"]) == (200, "2", head)
    assert headers["ETag"] == '"' + hashlib.sha1(b"blob 2\0{}").hexdigest() + '"'  # git blob oid, as on the Hub


def test_range_requests(hub_server, hub_api, hub_repo):
    data = bytes(range(256)) * 4
    hub_api.upload_file(path_or_fileobj=data, path_in_repo="bytes.bin", repo_id=hub_repo)
    target = f"/{hub_repo}/resolve/main/bytes.bin"
    for header, expected, content_range in [
        ("bytes=10-19", data[10:20], "bytes 10-19/1024"),
        ("bytes=1000-", data[1000:], "bytes 1000-1023/1024"),
        ("bytes=-5", data[-5:], "bytes 1019-1023/1024"),
        ("bytes=1020-5000", data[1020:], "bytes 1020-1023/1024"),
    ]:
        status, headers, body = _raw(hub_server, "GET", target, headers={"Range": header})
        assert (status, body, headers["Content-Range"]) == (206, expected, content_range), header
        assert headers["Content-Length"] == str(len(expected))
    status, headers, _ = _raw(hub_server, "GET", target, headers={"Range": "bytes=2000-"})
    assert (status, headers["Content-Range"]) == (416, "bytes */1024")
    assert _raw(hub_server, "GET", target)[2] == data
    # The client resumes interrupted downloads with Range: a partial cached file is completed, not restarted.
    status, _, body = _raw(hub_server, "GET", target, headers={"Range": "bytes=512-"})
    assert status == 206 and data[:512] + body == data


@pytest.fixture
def slow_commits(hub_server, monkeypatch):
    """Widen the window between reading a branch head and moving it, so that a missing lock would lose commits."""
    storage = hub_server.storage
    write_commit = storage.write_commit

    def slow_write_commit(*args, **kwargs):
        time.sleep(0.05)
        return write_commit(*args, **kwargs)

    monkeypatch.setattr(storage, "write_commit", slow_write_commit)


@pytest.mark.usefixtures("slow_commits")
def test_parallel_uploads_all_land(hub_api, hub_repo):
    errors: list[BaseException] = []

    def upload(index: int) -> None:
        try:
            hub_api.upload_file(
                path_or_fileobj=f"file {index}".encode(), path_in_repo=f"f{index}.txt", repo_id=hub_repo
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert hub_api.list_repo_files(hub_repo) == [".gitattributes"] + [f"f{i}.txt" for i in range(6)]
    assert len(hub_api.list_repo_commits(hub_repo)) == 1 + 6  # initial commit + one per upload, none lost


@pytest.mark.usefixtures("slow_commits")
def test_stale_parent_commit_only_one_wins(hub_api, hub_repo):
    parent = hub_api.model_info(hub_repo).sha
    barrier, outcomes = threading.Barrier(2), {}

    def commit(name: str) -> None:
        operation = CommitOperationAdd(path_in_repo=f"{name}.txt", path_or_fileobj=name.encode())
        barrier.wait()
        try:
            outcomes[name] = hub_api.create_commit(
                hub_repo, [operation], commit_message=name, parent_commit=parent
            ).oid
        except HfHubHTTPError as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=commit, args=(name,)) for name in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [name for name, outcome in outcomes.items() if isinstance(outcome, str)]
    losers = [outcome for outcome in outcomes.values() if isinstance(outcome, HfHubHTTPError)]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].response.status_code == 412
    assert hub_api.model_info(hub_repo).sha == outcomes[winners[0]]
    assert hub_api.list_repo_files(hub_repo) == [".gitattributes", f"{winners[0]}.txt"]


def test_branches_tags_pull_requests_and_deletes(hub_api, hub_repo):
    first = hub_api.upload_file(path_or_fileobj=b"v1", path_in_repo="weights.txt", repo_id=hub_repo).oid
    hub_api.create_branch(hub_repo, branch="dev")
    hub_api.create_branch(hub_repo, branch="dev", exist_ok=True)
    hub_api.upload_file(path_or_fileobj=b"v2", path_in_repo="weights.txt", repo_id=hub_repo, revision="dev")
    hub_api.create_tag(hub_repo, tag="v1.0", revision=first)

    def read(revision: str) -> bytes:
        with open(hf_hub_download(hub_repo, "weights.txt", revision=revision), "rb") as handle:
            return handle.read()

    assert (read("main"), read("dev"), read("v1.0"), read(first)) == (b"v1", b"v2", b"v1", b"v1")
    refs = hub_api.list_repo_refs(hub_repo)
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["v1.0"]
    with pytest.raises(HfHubHTTPError) as excinfo:  # commits go to branches, not tags
        hub_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo, revision="v1.0")
    assert excinfo.value.response.status_code == 400

    pr = hub_api.upload_file(path_or_fileobj=b"v3", path_in_repo="weights.txt", repo_id=hub_repo, create_pr=True)
    assert pr.pr_num == 1 and pr.pr_revision == "refs/pr/1"
    assert (read("refs/pr/1"), read("main")) == (b"v3", b"v1")
    assert [p.ref for p in hub_api.list_repo_refs(hub_repo, include_pull_requests=True).pull_requests] == ["refs/pr/1"]

    hub_api.upload_file(path_or_fileobj=b"n", path_in_repo="folder/a.txt", repo_id=hub_repo)
    hub_api.delete_file("weights.txt", hub_repo)
    hub_api.delete_folder("folder", hub_repo)
    assert hub_api.list_repo_files(hub_repo) == [".gitattributes"]
    with pytest.raises(EntryNotFoundError):
        hub_api.delete_file("weights.txt", hub_repo)
    hub_api.delete_branch(hub_repo, branch="dev")
    with pytest.raises(RevisionNotFoundError):
        hub_api.model_info(hub_repo, revision="dev")


def test_model_card_metadata_is_validated(hub_api, hub_repo):
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        hub_api.upload_file(
            path_or_fileobj=b"---\nlicense: [unclosed\n---\n", path_in_repo="README.md", repo_id=hub_repo
        )
    assert hub_api.list_repo_files(hub_repo) == [".gitattributes"]
    card = b"---\nlicense: mit\ndate: 2024-05-01\n---\nhi\n"  # YAML dates have no JSON type: must not break info
    hub_api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id=hub_repo)
    assert hub_api.model_info(hub_repo).card_data.license == "mit"


def test_transformers_from_pretrained_probing(hub_server, hub_api, hub_repo_id, caplog):
    from transformers import AutoConfig, AutoImageProcessor, BertConfig, ViTImageProcessor

    hub_api.create_repo(hub_repo_id, private=True)
    config = BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    processor = ViTImageProcessor(size={"height": 40, "width": 40})
    hub_api.create_commit(
        hub_repo_id,
        [
            CommitOperationAdd("config.json", config.to_json_string().encode()),
            CommitOperationAdd("preprocessor_config.json", processor.to_json_string().encode()),
        ],
        commit_message="bert-style config",
    )
    token = hub_server.token_for("alice")
    loaded = AutoConfig.from_pretrained(hub_repo_id, token=token)  # through $HF_ENDPOINT, like any user code
    assert (loaded.model_type, loaded.hidden_size, loaded.num_hidden_layers) == ("bert", 48, 2)
    with caplog.at_level("INFO", logger="hftransfer.testing.hub_server"):
        image_processor = AutoImageProcessor.from_pretrained(hub_repo_id, token=token)
    assert isinstance(image_processor, ViTImageProcessor) and image_processor.size["height"] == 40
    # transformers probed optional files that do not exist: each got a 404 EntryNotFound, not an error.
    probes = [r.getMessage() for r in caplog.records if "/resolve/" in r.getMessage() and '" 404 ' in r.getMessage()]
    assert probes, "expected transformers to probe for an optional file"
    with pytest.raises(OSError):  # transformers' own error for a repo it cannot see
        AutoConfig.from_pretrained(hub_repo_id, token=hub_server.token_for("bob"), force_download=True)


def test_lfs_objects_are_scoped_to_their_repository(hub_server, hub_api, hub_api_bob, hub_repo_id):
    secret = os.urandom(2048)
    hub_api.create_repo(hub_repo_id, private=True)
    hub_api.upload_file(path_or_fileobj=secret, path_in_repo="secret.bin", repo_id=hub_repo_id)
    oid = hub_api.model_info(hub_repo_id, files_metadata=True).siblings[-1].lfs.sha256
    assert oid == _sha256(secret)
    bob_repo = "bob/" + hub_repo_id.split("/")[1]
    hub_api_bob.create_repo(bob_repo)
    bob = {"Authorization": f"Bearer {hub_server.token_for('bob')}", "Content-Type": "application/json"}

    # Knowing the sha256 is not enough: the batch API asks bob to upload it, and a bare pointer commit is refused.
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(secret)}]}
    status, _, body = _raw(
        hub_server, "POST", f"/{bob_repo}.git/info/lfs/objects/batch", json.dumps(batch).encode(), bob
    )
    assert status == 200 and "upload" in json.loads(body)["objects"][0]["actions"]
    pointer = _ndjson(
        {"key": "header", "value": {"summary": "steal"}},
        {"key": "lfsFile", "value": {"path": "stolen.bin", "algo": "sha256", "oid": oid, "size": len(secret)}},
    )
    status, _, body = _raw(hub_server, "POST", f"/api/models/{bob_repo}/commit/main", pointer, bob)
    assert status == 422 and b"never uploaded" in body
    assert hub_api_bob.list_repo_files(bob_repo) == [".gitattributes"]
    # Uploading the same bytes (proof of possession) works, and shares the stored blob.
    hub_api_bob.upload_file(path_or_fileobj=secret, path_in_repo="mine.bin", repo_id=bob_repo)
    with open(hf_hub_download(bob_repo, "mine.bin"), "rb") as handle:
        assert handle.read() == secret


# --------------------------------------------------------------------------------------------------------------------
# HTTP robustness and safety
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/alice/x/resolve/main/../../../etc/passwd",
        "/alice/x/resolve/main/%2e%2e/%2e%2e/secret",
        "/alice/x/resolve/main/a%2F..%2F..%2Fsecret",
        "/alice/x/resolve/main/%252e%252e/secret",
        "/alice/x/resolve/main/..%5c..%5csecret",
        "/api/models/alice/x/tree/main/..%2F..",
        "/api/models/%2e%2e/x",
    ],
)
def test_path_traversal_in_urls_is_refused(hub_server, target):
    status, headers, body = _raw(hub_server, "GET", target)
    assert status == 400, target
    assert "traversal" in json.loads(body)["error"] and "traversal" in headers["X-Error-Message"]


def test_path_traversal_in_commits_and_names_is_refused(hub_server, hub_api, hub_repo):
    auth = {"Authorization": f"Bearer {hub_server.token_for('alice')}", "Content-Type": "application/x-ndjson"}
    before = hub_api.model_info(hub_repo).sha
    for path in ("../evil.txt", "a/../../evil.txt", "/etc/evil", "a\\..\\evil", ".git/config", "a//b"):
        payload = _ndjson(
            {"key": "header", "value": {"summary": "evil"}},
            {"key": "file", "value": {"path": path, "content": base64.b64encode(b"x").decode(), "encoding": "base64"}},
        )
        status, _, body = _raw(hub_server, "POST", f"/api/models/{hub_repo}/commit/main", payload, auth)
        assert status == 400, (path, body)
    assert hub_api.model_info(hub_repo).sha == before
    for name in ("..", "a..b", "-x", "x" * 200):
        status, _, _ = _raw(hub_server, "POST", "/api/repos/create", json.dumps({"name": name}).encode(), auth)
        assert status == 400, name
    assert not any(p.name == "evil.txt" for p in hub_server.data_dir.rglob("*"))


def test_keep_alive_drains_bodies_and_accepts_chunked(hub_server, hub_api, hub_repo):
    connection = http.client.HTTPConnection("127.0.0.1", hub_server.port, timeout=30)
    payload = _ndjson(
        {"key": "header", "value": {"summary": "chunked"}},
        {"key": "file", "value": {"path": "c.txt", "content": base64.b64encode(b"chunky").decode()}},
    )
    try:
        # A refused request (no token) with a 1 MiB body: the body must be drained so the connection stays usable.
        connection.request("POST", f"/api/models/{hub_repo}/commit/main", body=b"x" * MIB)
        refused = connection.getresponse()
        assert refused.status == 401 and refused.getheader("Content-Length") is not None
        refused.read()
        connection.request(
            "POST",
            f"/api/models/{hub_repo}/commit/main",
            body=iter([payload[:10], payload[10:]]),
            headers={"Authorization": f"Bearer {hub_server.token_for('alice')}"},
            encode_chunked=True,
        )
        accepted = connection.getresponse()
        assert accepted.status == 200, accepted.read()
        assert len(json.loads(accepted.read())["commitOid"]) == 40
    finally:
        connection.close()
    assert hub_api.list_repo_files(hub_repo) == [".gitattributes", "c.txt"]


def test_truncated_commit_body_changes_nothing(hub_server, hub_api, hub_repo):
    before = hub_api.model_info(hub_repo).sha
    payload = _ndjson(
        {"key": "header", "value": {"summary": "cut"}},
        {"key": "file", "value": {"path": "cut.txt", "content": base64.b64encode(b"c" * 1000).decode()}},
    )
    head = (
        f"POST /api/models/{hub_repo}/commit/main HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {hub_server.token_for('alice')}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", hub_server.port), timeout=30) as sock:
        sock.sendall(head.encode() + payload[: len(payload) // 2])  # then the client "dies"
    assert hub_api.model_info(hub_repo).sha == before
    assert hub_api.list_repo_files(hub_repo) == [".gitattributes"]


def test_restart_keeps_data_and_port(hub_server, hub_api, hub_repo):
    commit = hub_api.upload_file(path_or_fileobj=b"persist", path_in_repo="p.txt", repo_id=hub_repo).oid
    port = hub_server.port
    hub_server.restart()
    assert hub_server.port == port
    assert hub_api.model_info(hub_repo).sha == commit
    with open(hf_hub_download(hub_repo, "p.txt", force_download=True), "rb") as handle:
        assert handle.read() == b"persist"
    with pytest.raises(RuntimeError, match="already served"):
        LocalHubServer(hub_server.data_dir, port=0).start()  # one server per data directory


class _SimulatedClientCrash(Exception):
    pass


class _StallingReader(io.BytesIO):
    """A file object that, once armed, hands out `stall_at` bytes, then blocks until released and fails."""

    def __init__(self, data: bytes, stall_at: int) -> None:
        super().__init__(data)
        self.stall_at, self.armed = stall_at, False
        self.stalled, self.released = threading.Event(), threading.Event()

    def read(self, size: int | None = -1) -> bytes:
        if self.armed:
            left = self.stall_at - self.tell()
            if left <= 0:
                self.stalled.set()
                self.released.wait(60)
                raise _SimulatedClientCrash("the client gives up once the server is gone")
            size = left if size is None or size < 0 else min(size, left)
        return super().read(size)


@pytest.mark.slow  # two server processes
def test_sigkill_during_lfs_upload_leaves_nothing_partial(hub_server_process, tmp_path):
    port_file = tmp_path / "port"
    server = hub_server_process(extra_args=["--port-file", str(port_file)])
    assert port_file.read_text().strip() == str(server.port)
    data_dir = server.data_dir
    api = HfApi(endpoint=server.url, token=server.token_for("alice"))
    repo_id = "alice/crash-test"
    api.create_repo(repo_id)
    before = api.upload_file(path_or_fileobj=b"before", path_in_repo="a.txt", repo_id=repo_id).oid

    payload = os.urandom(12 * MIB)
    reader = _StallingReader(payload, stall_at=6 * MIB)
    operation = CommitOperationAdd(path_in_repo="big.bin", path_or_fileobj=reader)  # hashes the file, unarmed
    reader.armed = True
    outcome: list[BaseException | None] = []

    def upload() -> None:
        try:
            api.create_commit(repo_id, [operation], commit_message="big")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    assert reader.stalled.wait(60), "the upload never reached the stall point"
    partial = data_dir / "tmp"
    deadline = threading.Event()
    for _ in range(200):  # wait until the server holds part of the upload on disk
        if any(p.stat().st_size > 0 for p in partial.glob("upload-*")):
            break
        deadline.wait(0.05)
    assert any(p.stat().st_size > 0 for p in partial.glob("upload-*")), "the server never received upload data"
    server.kill()  # SIGKILL: no cleanup code runs
    reader.released.set()
    thread.join(60)
    assert outcome and outcome[0] is not None, "the upload cannot have succeeded"

    # Same port, same data dir. The first start ran `python -m hftransfer.testing.hub_server`; this one runs the same
    # file as a script, which spares a second `import hftransfer` (transformers, torch) on 2 CPU cores.
    server.run_as = "script"
    server.start()
    assert not any(partial.iterdir()), "leftovers of the interrupted upload are removed at start"
    assert api.model_info(repo_id).sha == before
    assert api.list_repo_files(repo_id) == [".gitattributes", "a.txt"]
    assert not api.file_exists(repo_id, "big.bin")
    assert not (data_dir / "blobs" / "sha256" / _sha256(payload)[:2] / _sha256(payload)).exists()

    after = api.upload_file(path_or_fileobj=payload, path_in_repo="big.bin", repo_id=repo_id).oid
    info = api.model_info(repo_id, files_metadata=True)
    assert info.sha == after != before
    assert {s.rfilename: s.lfs.sha256 for s in info.siblings if s.lfs} == {"big.bin": _sha256(payload)}
    with open(hf_hub_download(repo_id, "big.bin", endpoint=server.url, force_download=True), "rb") as handle:
        assert handle.read() == payload


def test_upload_mode_follows_gitattributes_binary_content_and_size(tmp_path):
    app = hub_server_module.HubApp(hub_server_module.HubStorage(tmp_path, fsync=False), {}, lfs_threshold=1000)
    patterns = hub_server_module._PatternSet.from_gitattributes(
        hub_server_module.default_gitattributes() + "*.keep filter=lfs\nspecial.keep -filter\n"
    )

    def mode(path: str, size: int = 10, sample: bytes = b"plain text") -> str:
        return app.upload_mode(path, size, sample, patterns)

    assert mode("README.md") == "regular" and mode("deep/dir/config.json") == "regular"
    assert mode("model.safetensors") == mode("sub/dir/pytorch_model.bin") == "lfs"  # patterns match at any depth
    assert mode("saved_model/variables/v.data") == "lfs" and mode("other/variables/v.data") == "regular"
    assert mode("a.keep") == "lfs" and mode("special.keep") == "regular"  # the last matching line wins
    assert mode("logo.png", sample=b"\x89PNG\r\n\x1a\n\x00\x00") == "lfs"  # binary content
    assert mode("notes.txt", sample="é".encode() * 5 + "é".encode()[:1]) == "regular"  # sample cut mid-character
    assert mode("big.txt", size=1001) == "lfs" and mode("empty.bin", size=0) == "regular"


def test_cli_help_runs_standalone():
    # The package is stdlib-only, so its folder also runs on its own (e.g. copied to an air-gapped machine).
    package_dir = Path(hub_server_module.__file__).parent
    env = {**os.environ, "PYTHONPATH": str(package_dir.parent)}
    result = subprocess.run(
        [sys.executable, "-m", package_dir.name, "--help"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0
    assert "--data-dir" in result.stdout and "--token" in result.stdout and "HF_HUB_DISABLE_XET" in result.stdout
