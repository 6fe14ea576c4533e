"""Pull requests and discussions as huggingface_hub uses them, with the same access rules as commits; card tags in
listings (issue 12, finding 6). Unmodified client against the live server on 127.0.0.1."""

from __future__ import annotations

import pytest
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError


def _read(repo: str, path: str, revision: str = "main") -> bytes:
    with open(hf_hub_download(repo, path, revision=revision, force_download=True), "rb") as handle:
        return handle.read()


def test_pull_request_from_a_commit_lists_comments_and_merges(hub_api, hub_repo):
    hub_api.upload_file(path_or_fileobj=b"v1", path_in_repo="a.txt", repo_id=hub_repo)
    commit = hub_api.upload_file(
        path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id=hub_repo, create_pr=True, commit_message="Better a"
    )
    assert commit.pr_num == 1 and commit.pr_url.endswith("/discussions/1")
    hub_api.upload_file(path_or_fileobj=b"new", path_in_repo="b.txt", repo_id=hub_repo, revision="refs/pr/1")
    hub_api.upload_file(path_or_fileobj=b"main moved", path_in_repo="c.txt", repo_id=hub_repo)  # no conflict

    listed = list(hub_api.get_repo_discussions(hub_repo))
    assert [(d.num, d.title, d.is_pull_request, d.status) for d in listed] == [(1, "Better a", True, "open")]
    hub_api.comment_discussion(hub_repo, 1, "Looks good")
    details = hub_api.get_discussion_details(hub_repo, 1)
    assert details.target_branch == "refs/heads/main"
    assert [e.type for e in details.events] == ["comment", "commit", "commit", "comment"]
    assert details.events[-1].content == "Looks good" and details.events[-1].author == "alice"

    hub_api.merge_pull_request(hub_repo, 1, comment="merging")
    assert (_read(hub_repo, "a.txt"), _read(hub_repo, "b.txt"), _read(hub_repo, "c.txt")) == (
        b"v2",
        b"new",
        b"main moved",
    )
    merged = hub_api.get_discussion_details(hub_repo, 1)
    assert merged.status == "merged" and merged.merge_commit_oid == hub_api.model_info(hub_repo).sha
    with pytest.raises(HfHubHTTPError) as caught:  # merged once is merged
        hub_api.merge_pull_request(hub_repo, 1)
    assert caught.value.response.status_code == 400


def test_discussions_numbering_status_title_and_filters(hub_api, hub_api_bob, hub_repo):
    discussion = hub_api_bob.create_discussion(hub_repo, "A question", description="Why?")
    draft = hub_api.create_pull_request(hub_repo, "Draft work")
    assert (discussion.num, discussion.is_pull_request, draft.num, draft.status) == (1, False, 2, "draft")
    hub_api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo, revision="refs/pr/2")
    assert _read(hub_repo, "x.txt", "refs/pr/2") == b"x"
    hub_api.change_discussion_status(hub_repo, 1, "closed", comment="answered")
    hub_api.rename_discussion(hub_repo, 2, "Real work")
    assert [d.num for d in hub_api.get_repo_discussions(hub_repo, discussion_status="open")] == [2]
    assert [d.num for d in hub_api.get_repo_discussions(hub_repo, discussion_type="discussion")] == [1]
    assert [d.num for d in hub_api.get_repo_discussions(hub_repo, author="bob")] == [1]
    comment = hub_api_bob.comment_discussion(hub_repo, 1, "tpyo")
    hub_api_bob.edit_discussion_comment(hub_repo, 1, comment.id, "typo")
    events = hub_api.get_discussion_details(hub_repo, 1).events
    assert events[-1].content == "typo" and events[-1].edited
    assert hub_api.get_discussion_details(hub_repo, 2).title == "Real work"
    with pytest.raises(HfHubHTTPError) as caught:  # bob may comment on alice's public repo, not change a status
        hub_api_bob.change_discussion_status(hub_repo, 2, "closed")
    assert caught.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as caught:
        hub_api.get_discussion_details(hub_repo, 99)
    assert caught.value.response.status_code == 404


def test_strangers_cannot_open_comment_or_merge_on_a_private_repo(hub_server, hub_api, hub_api_bob, hub_repo_id):
    from huggingface_hub import HfApi

    hub_api.create_repo(hub_repo_id, private=True)
    hub_api.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id=hub_repo_id, create_pr=True)
    anonymous = HfApi(endpoint=hub_server.url, token=False)
    read_only = HfApi(endpoint=hub_server.url, token=hub_server.token_for("alice", "read"))
    for api in (hub_api_bob, anonymous):
        with pytest.raises(RepositoryNotFoundError):
            list(api.get_repo_discussions(hub_repo_id))
        with pytest.raises(RepositoryNotFoundError):
            api.get_discussion_details(hub_repo_id, 1)
        with pytest.raises(RepositoryNotFoundError):
            api.create_discussion(hub_repo_id, "hello")
        with pytest.raises(RepositoryNotFoundError):
            api.create_pull_request(hub_repo_id, "mine")
        with pytest.raises(RepositoryNotFoundError):
            api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo_id, create_pr=True)
        with pytest.raises(RepositoryNotFoundError):
            api.comment_discussion(hub_repo_id, 1, "let me in")
        with pytest.raises(RepositoryNotFoundError):
            api.merge_pull_request(hub_repo_id, 1)
    with pytest.raises(HfHubHTTPError) as caught:  # the owner's read-only token sees, but cannot merge or comment
        read_only.merge_pull_request(hub_repo_id, 1)
    assert caught.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as caught:
        read_only.comment_discussion(hub_repo_id, 1, "hi")
    assert caught.value.response.status_code == 403
    assert [d.num for d in read_only.get_repo_discussions(hub_repo_id)] == [1]
    assert hub_api.get_discussion_details(hub_repo_id, 1).status == "open"
    assert hub_api.list_repo_files(hub_repo_id) == [".gitattributes"]


def test_list_models_returns_the_card_tags(hub_api, hub_repo):
    card = b"---\nlicense: mit\ntags:\n- vision\n- hftransfer\npipeline_tag: image-classification\n---\n# card\n"
    hub_api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id=hub_repo)
    listed = [m for m in hub_api.list_models(author="alice", search=hub_repo.split("/")[1])]
    assert [m.id for m in listed] == [hub_repo]
    assert listed[0].tags == ["vision", "hftransfer", "image-classification"]
    assert listed[0].pipeline_tag == "image-classification"
