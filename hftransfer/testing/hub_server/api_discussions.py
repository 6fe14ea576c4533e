"""Discussions and pull requests, as `huggingface_hub` uses them (`get_repo_discussions`, `create_pr=True`,
`comment_discussion`, `merge_pull_request`, ...)."""

from __future__ import annotations

import html
import secrets

from .common import DISCUSSIONS_PAGE_SIZE, MAX_COMMENT, HubHTTPError, _now_iso
from .transport import Request, Response, _json_response


class DiscussionsAPI:
    """Discussions and pull requests: list, details, create, comment, edit/hide, status, title, merge."""

    def _discussion_event(self, kind: str, author: str, data: dict) -> dict:
        return {
            "id": secrets.token_hex(12),
            "type": kind,
            "createdAt": _now_iso(),
            "author": {"name": author, "type": "user"},
            "data": data,
        }

    @staticmethod
    def _comment_data(text: str) -> dict:
        return {"edited": False, "hidden": False, "latest": {"raw": text, "html": html.escape(text)}, "numEdits": 0}

    def _discussion_summary(self, meta: dict, item: dict) -> dict:
        return {
            "num": item["num"],
            "title": item["title"],
            "status": item["status"],
            "author": {"name": item["author"], "type": "user"},
            "createdAt": item["createdAt"],
            "isPullRequest": item["isPullRequest"],
            "repo": {"name": meta["id"], "type": meta["type"]},
            "numComments": sum(1 for event in item["events"] if event["type"] == "comment"),
            "pinned": False,
        }

    def _discussion(self, repo_type: str, repo_id: str, num: str) -> tuple[dict, dict]:
        discussions = self.storage.read_discussions(repo_type, repo_id)
        if not num.isascii() or not num.isdigit() or num not in discussions:
            raise HubHTTPError(404, f"Discussion #{num} does not exist in {repo_type} '{repo_id}'.")
        return discussions, discussions[num]

    def discussion_details(self, request: Request, repo_type: str, repo_id: str, num: str) -> Response:
        meta = self._repo_for_read(request, repo_type, repo_id)
        return _json_response(self._discussion_details(meta, self._discussion(repo_type, repo_id, num)[1]))

    def list_discussions(self, request: Request, repo_type: str, repo_id: str) -> Response:
        meta = self._repo_for_read(request, repo_type, repo_id)
        kind, status, author = (
            request.param("type") or "all",
            request.param("status") or "all",
            request.param("author"),
        )
        items = sorted(self.storage.read_discussions(repo_type, repo_id).values(), key=lambda d: -d["num"])
        if kind in ("discussion", "pull_request"):
            items = [d for d in items if d["isPullRequest"] == (kind == "pull_request")]
        if status in ("open", "closed"):
            items = [d for d in items if (d["status"] in ("open", "draft")) == (status == "open")]
        if author:
            items = [d for d in items if d["author"] == author]
        try:
            page = max(0, int(request.param("p") or 0))
        except ValueError:
            raise HubHTTPError(400, f"Invalid page {request.param('p')!r}: expected an integer.") from None
        start = page * DISCUSSIONS_PAGE_SIZE
        return _json_response(
            {
                "discussions": [
                    self._discussion_summary(meta, d) for d in items[start : start + DISCUSSIONS_PAGE_SIZE]
                ],
                "count": len(items),
                "start": start,
                "numClosedDiscussions": sum(1 for d in items if d["status"] in ("closed", "merged")),
            }
        )

    def _discussion_details(self, meta: dict, item: dict) -> dict:
        details = {**self._discussion_summary(meta, item), "events": item["events"], "diff": ""}
        if item["isPullRequest"]:
            details["changes"] = {"base": f"refs/heads/{item['base']}"}
            if item.get("mergeCommitId"):
                details["changes"]["mergeCommitId"] = item["mergeCommitId"]
            details["filesWithConflicts"] = []
        return details

    def _new_discussion(
        self, repo_type: str, repo_id: str, *, title: str, author: str, pull_request: bool, status: str, base: str
    ) -> dict:
        """Under the repo lock: add a discussion (numbered after every discussion and PR so far) and return it."""
        discussions = self.storage.read_discussions(repo_type, repo_id)
        refs = self.storage.read_refs(repo_type, repo_id)
        num = max([int(n) for n in discussions] + [int(n) for n in refs["prs"]] + [0]) + 1
        item = {
            "num": num,
            "title": title,
            "status": status,
            "author": author,
            "createdAt": _now_iso(),
            "isPullRequest": pull_request,
            "events": [],
        }
        if pull_request:
            head = self._resolve(repo_type, repo_id, base)[0]
            item.update(base=base, baseCommit=head)
            refs["prs"][str(num)] = {"head": head, "base": base, "title": title}
            self.storage.write_refs(repo_type, repo_id, refs)
        discussions[str(num)] = item
        self.storage.write_discussions(repo_type, repo_id, discussions)
        return item

    def create_discussion(self, request: Request, repo_type: str, repo_id: str) -> Response:
        body = request.json_object()
        pull_request = bool(body.get("pullRequest"))
        if pull_request:  # a pull request gets a branch of its own: the same rights as a commit
            _, principal = self._repo_for_write(request, repo_type, repo_id, "open a pull request on")
        else:
            self._repo_for_read(request, repo_type, repo_id)
            principal = self._require_writer_token(request, "open a discussion")
        title = body.get("title")
        if not isinstance(title, str) or not title.strip() or len(title) > 200:
            raise HubHTTPError(400, "A discussion needs a 'title' of 1 to 200 characters.")
        description = body.get("description") or ""
        if not isinstance(description, str) or len(description) > MAX_COMMENT:
            raise HubHTTPError(400, f"'description' must be a string of at most {MAX_COMMENT} characters.")
        with self.storage.lock(repo_type, repo_id):
            discussions = self.storage.read_discussions(repo_type, repo_id)
            item = self._new_discussion(
                repo_type,
                repo_id,
                title=title.strip(),
                author=principal.name,
                pull_request=pull_request,
                status="draft" if pull_request else "open",
                base="main",
            )
            discussions = self.storage.read_discussions(repo_type, repo_id)
            discussions[str(item["num"])]["events"].append(
                self._discussion_event("comment", principal.name, self._comment_data(description))
            )
            self.storage.write_discussions(repo_type, repo_id, discussions)
        url = f"{self._repo_url(request, repo_type, repo_id)}/discussions/{item['num']}"
        return _json_response({"num": item["num"], "url": url, "pullRequest": pull_request})

    def _change(self, request: Request, repo_type: str, repo_id: str, num: str, *, write: bool, action: str, apply):
        """Run `apply(discussions, item, principal)` under the repo lock after the access checks; save; answer it."""
        if write:
            _, principal = self._repo_for_write(request, repo_type, repo_id, action)
        else:
            self._repo_for_read(request, repo_type, repo_id)
            principal = self._require_writer_token(request, action)
        body = request.json_object()
        with self.storage.lock(repo_type, repo_id):
            discussions, item = self._discussion(repo_type, repo_id, num)
            answer = apply(discussions, item, principal, body)
            self.storage.write_discussions(repo_type, repo_id, discussions)
        return _json_response(answer)

    def comment_discussion(self, request: Request, repo_type: str, repo_id: str, num: str) -> Response:
        def apply(discussions, item, principal, body):
            comment = body.get("comment")
            if not isinstance(comment, str) or not comment.strip() or len(comment) > MAX_COMMENT:
                raise HubHTTPError(400, f"A comment needs a non-empty 'comment' of at most {MAX_COMMENT} characters.")
            event = self._discussion_event("comment", principal.name, self._comment_data(comment))
            item["events"].append(event)
            return {"newMessage": event}

        return self._change(request, repo_type, repo_id, num, write=False, action="comment", apply=apply)

    def edit_comment(
        self, request: Request, repo_type: str, repo_id: str, num: str, comment_id: str, verb: str
    ) -> Response:
        comment_id = comment_id.lower()

        def apply(discussions, item, principal, body):
            event = next((e for e in item["events"] if e["id"] == comment_id and e["type"] == "comment"), None)
            if event is None:
                raise HubHTTPError(404, f"Comment {comment_id} does not exist in discussion #{num}.")
            if event["author"]["name"] != principal.name and not self._can_write_namespace(
                principal, repo_id.split("/")[0]
            ):
                raise HubHTTPError(403, f"User '{principal.name}' cannot {verb} a comment of another user.")
            if verb == "hide":
                event["data"]["hidden"] = True
            else:
                content = body.get("content")
                if not isinstance(content, str) or not content.strip() or len(content) > MAX_COMMENT:
                    raise HubHTTPError(400, "An edit needs a non-empty 'content'.")
                event["data"].update(edited=True, numEdits=event["data"]["numEdits"] + 1)
                event["data"]["latest"] = {"raw": content, "html": html.escape(content)}
            return {"updatedComment": event}

        return self._change(request, repo_type, repo_id, num, write=False, action=f"{verb} a comment", apply=apply)

    def discussion_status(self, request: Request, repo_type: str, repo_id: str, num: str) -> Response:
        def apply(discussions, item, principal, body):
            status = body.get("status")
            if status not in ("open", "closed"):
                raise HubHTTPError(400, f"Invalid status {status!r}: expected 'open' or 'closed'.")
            if item["status"] == "merged":
                raise HubHTTPError(400, f"Pull request #{num} is merged: its status cannot change.")
            item["status"] = status
            if isinstance(body.get("comment"), str) and body["comment"].strip():
                item["events"].append(
                    self._discussion_event("comment", principal.name, self._comment_data(body["comment"]))
                )
            event = self._discussion_event("status-change", principal.name, {"status": status})
            item["events"].append(event)
            return {"newStatus": event}

        return self._change(
            request, repo_type, repo_id, num, write=True, action="change the status of a discussion of", apply=apply
        )

    def discussion_title(self, request: Request, repo_type: str, repo_id: str, num: str) -> Response:
        def apply(discussions, item, principal, body):
            title = body.get("title")
            if not isinstance(title, str) or not title.strip() or len(title) > 200:
                raise HubHTTPError(400, "A discussion needs a 'title' of 1 to 200 characters.")
            event = self._discussion_event(
                "title-change", principal.name, {"from": item["title"], "to": title.strip()}
            )
            item["title"] = title.strip()
            item["events"].append(event)
            return {"newTitle": event}

        return self._change(request, repo_type, repo_id, num, write=True, action="rename a discussion of", apply=apply)

    def merge_pull_request(self, request: Request, repo_type: str, repo_id: str, num: str) -> Response:
        def apply(discussions, item, principal, body):
            if not item["isPullRequest"]:
                raise HubHTTPError(400, f"#{num} is a discussion, not a pull request: there is nothing to merge.")
            if item["status"] not in ("open", "draft"):
                raise HubHTTPError(400, f"Pull request #{num} is {item['status']}: only open pull requests merge.")
            refs = self.storage.read_refs(repo_type, repo_id)
            base_head = refs["branches"].get(item["base"])
            if base_head is None:
                raise HubHTTPError(400, f"The target branch '{item['base']}' of pull request #{num} no longer exists.")
            pr_head = refs["prs"][num]["head"]
            origin = self._commit(repo_type, repo_id, item["baseCommit"])["tree"]
            theirs = self._commit(repo_type, repo_id, pr_head)["tree"]
            tree = dict(self._commit(repo_type, repo_id, base_head)["tree"])
            conflicts = []
            for path in sorted(origin.keys() | theirs.keys()):
                if origin.get(path) == theirs.get(path):
                    continue  # not changed by the pull request
                if tree.get(path) != origin.get(path) and tree.get(path) != theirs.get(path):
                    conflicts.append(path)  # changed on both sides, differently
                elif path in theirs:
                    tree[path] = theirs[path]
                else:
                    tree.pop(path, None)
            if conflicts:
                raise HubHTTPError(
                    409, f"Pull request #{num} conflicts with '{item['base']}' in: {', '.join(conflicts)}."
                )
            commit = self.storage.write_commit(
                repo_type,
                repo_id,
                parents=[base_head, pr_head],
                tree=tree,
                title=f"Merge pull request #{num}: {item['title']}",
                message=body.get("comment") if isinstance(body.get("comment"), str) else "",
                author=principal.name,
            )
            refs["branches"][item["base"]] = commit["id"]
            self.storage.write_refs(repo_type, repo_id, refs)
            item.update(status="merged", mergeCommitId=commit["id"])
            item["events"].append(self._discussion_event("status-change", principal.name, {"status": "merged"}))
            return {"success": True, "commitOid": commit["id"]}

        return self._change(
            request, repo_type, repo_id, num, write=True, action="merge a pull request of", apply=apply
        )
