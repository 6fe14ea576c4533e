"""`hftransfer push` / `hftransfer.hub.push_to_hub` against the live local Hub server, end to end.

One tiny model is trained once per module, with the recipe's hub section on: the trainer itself pushes it (as alice,
private). The other tests read that repo, or push copies of the output folder elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import types
import uuid
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, get_token, hf_hub_download
from PIL import Image

from hftransfer.hub import HubPushError, push_to_hub

REPO_ROOT = Path(__file__).resolve().parents[2]
# What a push of the tiny run must put in the repo: nothing more (no stages/, no caches), nothing less.
EXPECTED_FILES = sorted(
    [
        ".gitattributes",  # written by the server when the repo is created
        "README.md",
        "config.json",
        "configuration_hftransfer.py",
        "confusion_matrix.png",
        "confusion_matrix_finetune.png",
        "confusion_matrix_frozen.png",
        "history.json",
        "image_processing_hftransfer.py",
        "metrics.json",
        "model.safetensors",
        "modeling_hftransfer.py",
        "preprocessor_config.json",
        "recipe.yaml",
        "training_curves.png",
    ]
)
METRICS = ("accuracy", "f1", "precision", "recall")


def tiny_recipe(output_dir: Path, cache_dir: Path, **sections) -> dict:
    """Two short stages at 32 px on 64 Fashion-MNIST images: about 20 s on 2 CPU cores, real ImageNet weights."""
    recipe = {
        "name": "tiny",
        "model": {"backbone_weights": "keras-imagenet", "image_size": 32, "pooling": "avg", "hidden_sizes": [16]},
        "data": {"dataset": "fashion-mnist-subset", "max_train_samples": 64, "max_eval_samples": 32},
        "stages": [
            {"name": "frozen", "epochs": 1, "learning_rate": 0.003, "trainable": "head"},
            {"name": "finetune", "max_steps": 1, "learning_rate": 0.001, "trainable": "last_k", "last_k_blocks": 1},
        ],
        "training": {
            "output_dir": str(output_dir),
            "per_device_train_batch_size": 32,
            "logging_steps": 1,
            "dataloader_num_workers": 0,
            "feature_cache_dir": str(cache_dir),
            "eval_strategy": "no",
            "save_strategy": "no",
        },
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
    return recipe


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory, session_dir, _hub_server_session):
    """Train the tiny model with `hub.push_to_hub: true`: the trainer pushes it to a new private repo of alice."""
    from hftransfer.recipes import recipe_from_dict
    from hftransfer.training import train

    server = _hub_server_session.start()
    repo_id = f"alice/tiny-vgg16-{uuid.uuid4().hex[:8]}"
    output_dir = tmp_path_factory.mktemp("pushed-run") / "out"
    hub = {"push_to_hub": True, "repo_id": repo_id, "private": True}
    recipe = recipe_from_dict(tiny_recipe(output_dir, session_dir / "feature_cache", hub=hub))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", server.token_for("alice"))  # how a user logged in via HF_TOKEN trains and pushes
        train(recipe)
    return types.SimpleNamespace(output_dir=output_dir, repo_id=repo_id)


@pytest.fixture
def output_copy(pushed_run, tmp_path) -> Path:
    """A copy of the run's top-level files (a push re-renders README.md: keep the shared folder untouched)."""
    copy = tmp_path / "out"
    copy.mkdir()
    for path in pushed_run.output_dir.iterdir():
        if path.is_file():
            shutil.copy2(path, copy / path.name)
    (copy / "stages").mkdir()  # a checkpoint folder that must not be pushed
    (copy / "stages" / "model.safetensors").write_bytes(b"not for the hub")
    (copy / "eval-test").mkdir()
    (copy / "eval-test" / "metrics.json").write_text("{}")
    return copy


# --------------------------------------------------------------------------------------------------------------------
# What lands on the Hub
# --------------------------------------------------------------------------------------------------------------------


def test_training_push_lands_every_file_in_one_commit(pushed_run, hub_api, hub_api_bob):
    repo_id, output_dir = pushed_run.repo_id, pushed_run.output_dir
    assert sorted(hub_api.list_repo_files(repo_id)) == EXPECTED_FILES
    commits = hub_api.list_repo_commits(repo_id)
    assert len(commits) == 2, [c.title for c in commits]  # the server's initial commit, then the push
    assert commits[0].title == "Upload hftransfer model (recipe 'tiny')"
    assert hub_api.list_repo_files(repo_id, revision=commits[1].commit_id) == [".gitattributes"]
    assert hub_api.model_info(repo_id).private is True
    assert not hub_api_bob.repo_exists(repo_id)  # private: invisible to others

    # Every pushed file is byte for byte the local one, the 57 MB safetensors (stored with LFS) included.
    info = hub_api.model_info(repo_id, files_metadata=True)
    lfs = {sibling.rfilename: sibling.lfs.sha256 for sibling in info.siblings if sibling.lfs}
    assert "model.safetensors" in lfs  # binary files (weights, PNGs) go through LFS, as on the Hub
    assert lfs == {name: _sha256(output_dir / name) for name in lfs}
    for name in EXPECTED_FILES[1:]:
        downloaded = hf_hub_download(repo_id, name, token=hub_api.token, force_download=True)
        assert Path(downloaded).read_bytes() == (output_dir / name).read_bytes(), name
    readme = (output_dir / "README.md").read_text()
    assert f'model_id = "{repo_id}"' in readme  # the card's usage snippet names the repo, not a local path
    assert "stages" not in {name.split("/")[0] for name in hub_api.list_repo_files(repo_id)}


def test_card_on_the_hub_parses_and_reports_metrics_json(pushed_run, hub_api):
    card = ModelCard.load(pushed_run.repo_id, token=hub_api.token)
    metrics = json.loads((pushed_run.output_dir / "metrics.json").read_text())
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-classification"
    (model_index,) = data["model-index"]
    assert model_index["name"] == pushed_run.repo_id.split("/")[1]
    reported = {
        (result["dataset"]["split"], metric["type"]): metric["value"]
        for result in model_index["results"]
        for metric in result["metrics"]
    }
    expected = {(split, name): values[name] for split, values in metrics["final"].items() for name in METRICS}
    assert reported == pytest.approx(expected, abs=0)
    assert set(metrics["final"]) == {"validation", "test"}


# --------------------------------------------------------------------------------------------------------------------
# Loading it elsewhere
# --------------------------------------------------------------------------------------------------------------------

ROUND_TRIP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    try:
        import hftransfer
    except ImportError:
        pass
    else:
        raise SystemExit("hftransfer is importable: the test environment is wrong")
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    repo_id, tensor_path, *images = sys.argv[1:]
    model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.load(tensor_path)).logits
    classifier = pipeline("image-classification", model=repo_id, trust_remote_code=True)
    predictions = classifier([Image.open(path) for path in images], top_k=3)
    print(json.dumps({
        "logits": logits.tolist(),
        "predictions": predictions,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "hftransfer_loaded": any(name.split(".")[0] == "hftransfer" for name in sys.modules),
    }))
    """
)


def _images(folder: Path) -> list[Path]:
    """A grayscale 28x28 (like Fashion-MNIST) and an RGB 40x30 image: the processor resizes and converts both."""
    generator = torch.Generator().manual_seed(0)
    paths = []
    for name, mode, size in (("gray.png", "L", (28, 28)), ("rgb.png", "RGB", (40, 30))):
        channels = 1 if mode == "L" else 3
        pixels = torch.randint(0, 256, (size[1], size[0], channels), generator=generator, dtype=torch.uint8)
        path = folder / name
        Image.fromarray(pixels.squeeze(-1).numpy() if channels == 1 else pixels.numpy(), mode=mode).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow  # a second Python process that imports torch and transformers
def test_round_trip_without_hftransfer_installed(pushed_run, hub_server, tmp_path):
    from transformers import pipeline

    from hftransfer import TransferForImageClassification

    # A folder on PYTHONPATH whose `hftransfer.py` fails to import: the child can only use the pushed remote code.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "hftransfer.py").write_text("raise ImportError('hftransfer is not installed here')\n")
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(pixel_values, tmp_path / "pixels.pt")
    images = _images(tmp_path)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HFTRANSFER_"))}
    env.update(
        HF_HOME=str(tmp_path / "fresh_hf_home"),  # an empty cache: everything comes from the server
        HF_ENDPOINT=hub_server.url,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_TOKEN=hub_server.token_for("alice"),  # the repo is private
        PYTHONPATH=str(blocker),
    )
    child = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP_SCRIPT, pushed_run.repo_id, str(tmp_path / "pixels.pt"), *map(str, images)],
        cwd=tmp_path,  # not the repo root: `-c` puts the working directory first on sys.path
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    remote = json.loads(child.stdout.strip().splitlines()[-1])
    assert remote["hftransfer_loaded"] is False
    assert remote["model_class"].startswith("transformers_modules.")
    assert remote["model_class"].endswith(".modeling_hftransfer.TransferForImageClassification")

    local = TransferForImageClassification.from_pretrained(pushed_run.output_dir).eval()
    with torch.no_grad():
        expected = local(pixel_values=pixel_values).logits
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected, atol=1e-5, rtol=0)

    classifier = pipeline("image-classification", model=str(pushed_run.output_dir))
    local_predictions = classifier([Image.open(path) for path in images], top_k=3)
    assert len(remote["predictions"]) == len(local_predictions) == 2
    for theirs, ours in zip(remote["predictions"], local_predictions):
        assert [p["label"] for p in theirs] == [p["label"] for p in ours]
        assert [p["score"] for p in theirs] == pytest.approx([p["score"] for p in ours], abs=1e-5)


@pytest.mark.slow  # trains a second (one-step) model
def test_continue_fine_tuning_from_the_pushed_model(pushed_run, hub_server, session_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from hftransfer.recipes import recipe_from_dict
    from hftransfer.training import staged, train

    monkeypatch.setenv("HF_TOKEN", hub_server.token_for("alice"))
    initial: dict[str, torch.Tensor] = {}
    build_model = staged.build_model_and_processor

    def spy(recipe, id2label):  # the model exactly as training receives it, before any step
        model, processor = build_model(recipe, id2label)
        initial.update({key: value.detach().clone() for key, value in model.state_dict().items()})
        return model, processor

    monkeypatch.setattr(staged, "build_model_and_processor", spy)
    output_dir = tmp_path / "continued"
    recipe = tiny_recipe(
        output_dir,
        session_dir / "feature_cache",
        model={"init_from": pushed_run.repo_id},
        stages=[{"name": "more", "max_steps": 2, "learning_rate": 0.01, "trainable": "head"}],
    )
    train(recipe_from_dict(recipe))

    pushed = load_file(str(pushed_run.output_dir / "model.safetensors"))
    assert initial.keys() == pushed.keys()
    for key, tensor in pushed.items():
        assert torch.equal(initial[key], tensor), f"{key} does not start from the pushed weights"
    continued = load_file(str(output_dir / "model.safetensors"))
    backbone = [key for key in pushed if key.startswith("backbone.")]
    head = [key for key in pushed if not key.startswith("backbone.")]
    assert backbone and head
    assert all(torch.equal(continued[key], pushed[key]) for key in backbone)  # frozen in this stage
    assert not all(torch.equal(continued[key], pushed[key]) for key in head)  # trained further
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.base_model == pushed_run.repo_id  # the new card says where it came from

    # A pushed head cannot be reused for other labels: a clear error, before any training.
    with pytest.raises(ValueError, match=r"predicts labels .* but the dataset has"):
        build_model(recipe_from_dict(recipe), {0: "cat", 1: "dog"})


# --------------------------------------------------------------------------------------------------------------------
# The command line and branches
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # `hftransfer push` in a child process
def test_cli_push_to_a_branch_prints_the_commit_url(output_copy, hub_server, hub_api, hub_repo_id):
    env = dict(os.environ, HF_TOKEN=hub_server.token_for("alice"))
    command = [sys.executable, "-m", "hftransfer", "push", str(output_copy), "--repo-id", hub_repo_id]
    child = subprocess.run(
        [*command, "--revision", "dev"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert child.returncode == 0, child.stderr[-3000:]
    head = hub_api.model_info(hub_repo_id, revision="dev").sha
    assert child.stdout.strip() == f"{hub_server.url}/{hub_repo_id}/commit/{head}"
    assert sorted(hub_api.list_repo_files(hub_repo_id, revision="dev")) == EXPECTED_FILES
    assert hub_api.list_repo_files(hub_repo_id) == [".gitattributes"]  # main is untouched
    assert HfApi(token=False).model_info(hub_repo_id).private is False  # public: readable without a token
    card = Path(hf_hub_download(hub_repo_id, "README.md", revision="dev", token=False)).read_text()
    assert f'model_id = "{hub_repo_id}"' in card

    # The same push again changes nothing: no new commit, the same URL.
    again = push_to_hub(output_copy, hub_repo_id, revision="dev", token=hub_server.token_for("alice"))
    assert again == child.stdout.strip()
    assert len(hub_api.list_repo_commits(hub_repo_id, revision="dev")) == 2


def test_cli_push_errors_are_one_line(output_copy, hub_server, hub_api, capsys, monkeypatch):
    from hftransfer.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["push", str(output_copy), "--repo-id", "alice/x", "--token", "hf_not_a_token"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: The Hub at") and "401" in error and "Traceback" not in error
    assert main(["push", str(output_copy / "stages"), "--repo-id", "alice/x"]) == 1
    error = capsys.readouterr().err
    assert "missing config.json" in error and "hftransfer train" in error
    assert not hub_api.repo_exists("alice/x")


# --------------------------------------------------------------------------------------------------------------------
# Bad input: a clear error, and nothing (partial) in the repo
# --------------------------------------------------------------------------------------------------------------------


def _alice_repos(api: HfApi) -> set[str]:
    return {model.id for model in api.list_models(author="alice")}


@pytest.mark.parametrize("repo_id", ["tiny-vgg16", "alice/has space", "alice/a/b", "alice/", "alice/bad--name", ""])
def test_invalid_repo_id(pushed_run, hub_api, repo_id):
    before = _alice_repos(hub_api)
    with pytest.raises(HubPushError, match="Invalid repo id") as error:
        push_to_hub(pushed_run.output_dir, repo_id, token=hub_api.token)
    assert repr(repo_id) in str(error.value) and "expected 'namespace/name'" in str(error.value)
    assert _alice_repos(hub_api) == before


def test_no_token(pushed_run, hub_api, hub_repo_id, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert get_token() is None  # the suite's HF_HOME holds no saved login
    with pytest.raises(HubPushError, match="no Hub token found") as error:
        push_to_hub(pushed_run.output_dir, hub_repo_id)
    assert "`hf auth login`" in str(error.value) and "--token / set HF_TOKEN" in str(error.value)
    assert not hub_api.repo_exists(hub_repo_id)


def test_wrong_token(pushed_run, hub_api, hub_repo_id, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_expired_or_mistyped")
    with pytest.raises(HubPushError, match=r"refused the token in HF_TOKEN \(401 Unauthorized\)") as error:
        push_to_hub(pushed_run.output_dir, hub_repo_id)
    assert "`hf auth login`" in str(error.value)
    assert not hub_api.repo_exists(hub_repo_id)


def test_read_only_token(pushed_run, hub_server, hub_api, hub_repo_id):
    with pytest.raises(HubPushError, match="of user 'alice' is read-only"):
        push_to_hub(pushed_run.output_dir, hub_repo_id, token=hub_server.token_for("alice", role="read"))
    assert not hub_api.repo_exists(hub_repo_id)


def test_pushing_into_another_users_namespace(pushed_run, hub_server, hub_api):
    bob = hub_server.token_for("bob")
    new_repo = f"alice/bobs-{uuid.uuid4().hex[:8]}"
    for repo_id in (new_repo, pushed_run.repo_id):  # a new repo, and alice's existing (private) one
        with pytest.raises(HubPushError, match="user 'bob' .* may not write to namespace 'alice'") as error:
            push_to_hub(pushed_run.output_dir, repo_id, token=bob)
        assert f"'bob/{repo_id.split('/')[1]}'" in str(error.value)  # where bob can push instead
    assert not hub_api.repo_exists(new_repo)
    assert len(hub_api.list_repo_commits(pushed_run.repo_id)) == 2


def test_pushing_into_an_organization_needs_membership(output_copy, hub_server, hub_api):
    repo_id = f"hf-team/org-{uuid.uuid4().hex[:8]}"
    with pytest.raises(HubPushError, match="user 'bob' .* may not write to namespace 'hf-team'"):
        push_to_hub(output_copy, repo_id, token=hub_server.token_for("bob"))
    assert not hub_api.repo_exists(repo_id)
    push_to_hub(output_copy, repo_id, token=hub_server.token_for("alice"))  # alice is a member
    assert sorted(hub_api.list_repo_files(repo_id)) == EXPECTED_FILES


def test_reading_another_users_private_repo(pushed_run, hub_server, hub_api_bob, monkeypatch, tmp_path):
    import huggingface_hub.constants
    from transformers import AutoModelForImageClassification

    from hftransfer.recipes import recipe_from_dict
    from hftransfer.training import staged

    assert not hub_api_bob.repo_exists(pushed_run.repo_id)  # same answer as a missing repo: existence leaks not
    monkeypatch.setenv("HF_TOKEN", hub_server.token_for("bob"))
    # Bob's own (empty) cache: huggingface_hub serves files already in the local cache even when the Hub answers
    # "not found" for this token, so on a machine where alice loaded the repo, bob would read her cached copy.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "bob-cache"))
    with pytest.raises(OSError, match="If this is a private repository, make sure to pass a token") as error:
        AutoModelForImageClassification.from_pretrained(pushed_run.repo_id, trust_remote_code=True)
    assert pushed_run.repo_id in str(error.value)
    recipe = recipe_from_dict({"model": {"init_from": pushed_run.repo_id}})
    with pytest.raises(OSError, match="private repository"):
        staged.build_model_and_processor(recipe, {0: "a"})


def test_push_replaces_old_weight_files_and_keeps_the_rest(output_copy, hub_api, hub_repo):
    # A repo that held another checkpoint layout (shards, a .bin) and a file of the user's own.
    for name in ("model-00001-of-00002.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "notes.txt"):
        hub_api.upload_file(path_or_fileobj=b"old " + name.encode(), path_in_repo=name, repo_id=hub_repo)
    before = len(hub_api.list_repo_commits(hub_repo))
    push_to_hub(output_copy, hub_repo, token=hub_api.token)
    # Two checkpoints side by side would be ambiguous: the old weights go, in the same (single) commit.
    assert sorted(hub_api.list_repo_files(hub_repo)) == sorted([*EXPECTED_FILES, "notes.txt"])
    assert len(hub_api.list_repo_commits(hub_repo)) == before + 1


def test_private_push_into_an_existing_public_repo_is_refused(output_copy, hub_api, hub_repo):
    with pytest.raises(HubPushError, match="already exists and is public"):
        push_to_hub(output_copy, hub_repo, private=True, token=hub_api.token)
    assert hub_api.list_repo_files(hub_repo) == [".gitattributes"]
    assert len(hub_api.list_repo_commits(hub_repo)) == 1


def test_output_dir_without_a_model(output_copy, tmp_path, hub_api, hub_repo_id):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HubPushError) as error:
        push_to_hub(empty, hub_repo_id, token=hub_api.token)
    message = str(error.value)
    for name in ("config.json", "preprocessor_config.json", "model.safetensors", "metrics.json"):
        assert name in message
    assert "`hftransfer train`" in message

    (output_copy / "model.safetensors").rename(output_copy / "weights.bak")
    with pytest.raises(HubPushError, match=r"complete trained model: missing model\.safetensors\. A finished"):
        push_to_hub(output_copy, hub_repo_id, token=hub_api.token)
    (output_copy / "modeling_hftransfer.py").unlink()
    with pytest.raises(HubPushError, match=r"modeling_hftransfer\.py \(model code named by auto_map\)"):
        push_to_hub(output_copy, hub_repo_id, token=hub_api.token)

    # A half-written checkpoint (e.g. a copy that was interrupted) is caught from its header, not pushed.
    partial = (output_copy / "weights.bak").read_bytes()[: 10 * 1024 * 1024]
    (output_copy / "model.safetensors").write_bytes(partial)
    shutil.copy2(REPO_ROOT / "hftransfer" / "modeling_hftransfer.py", output_copy)
    with pytest.raises(HubPushError, match=r"model\.safetensors: it is truncated"):
        push_to_hub(output_copy, hub_repo_id, token=hub_api.token)
    with pytest.raises(HubPushError, match="no such folder"):
        push_to_hub(tmp_path / "nowhere", hub_repo_id, token=hub_api.token)
    assert not hub_api.repo_exists(hub_repo_id)


def test_unreachable_endpoint(pushed_run, hub_server, hub_repo_id):
    with socket_port() as port:  # a port nobody listens on
        endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(HubPushError, match=f"Could not reach the Hub at {endpoint}") as error:
        push_to_hub(pushed_run.output_dir, hub_repo_id, token=hub_server.token_for("alice"), endpoint=endpoint)
    assert "re-running it is safe" in str(error.value)


@contextlib.contextmanager
def socket_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# --------------------------------------------------------------------------------------------------------------------
# The server dies mid-upload
# --------------------------------------------------------------------------------------------------------------------


class _KillMidway(io.RawIOBase):
    """Hands the upload its first `kill_at` bytes, then SIGKILLs the server before handing out more."""

    def __init__(self, raw, kill_at: int, kill) -> None:
        super().__init__()
        self.raw, self.kill_at, self.kill, self.fired = raw, kill_at, kill, False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def read(self, size: int | None = -1) -> bytes:
        position = self.raw.tell()
        if not self.fired:
            if position >= self.kill_at:
                self.fired = True
                self.kill()
            elif size is None or size < 0 or position + size > self.kill_at:
                size = self.kill_at - position
        return self.raw.read(size)


@pytest.mark.slow  # a server in a child process, killed and restarted
def test_server_killed_mid_upload_then_rerun_completes(output_copy, hub_server_process, monkeypatch):
    import huggingface_hub.utils._http as hf_http

    server = hub_server_process(run_as="script")  # the server file alone: starts without importing torch
    token = server.token_for("alice")
    api = HfApi(endpoint=server.url, token=token)
    repo_id = "alice/interrupted"
    weights = output_copy / "model.safetensors"
    weights_sha = _sha256(weights)

    killed = threading.Event()
    original_as_file = CommitOperationAdd.as_file

    def kill_server() -> None:
        server.kill()  # SIGKILL: a crash, no cleanup
        killed.set()

    @contextlib.contextmanager
    def as_file(self, with_tqdm: bool = False):
        # `with_tqdm=True` is how the LFS upload opens the file (hashing opens it without).
        with original_as_file(self, with_tqdm=with_tqdm) as fileobj:
            if with_tqdm and self.path_in_repo == "model.safetensors" and not killed.is_set():
                yield _KillMidway(fileobj, kill_at=8 * 1024 * 1024, kill=kill_server)
            else:
                yield fileobj

    monkeypatch.setattr(CommitOperationAdd, "as_file", as_file)
    # The client retries a failed upload 5 times, sleeping 1+2+4+8+8 s, against a dead server: skip the sleeps.
    monkeypatch.setattr(hf_http, "time", types.SimpleNamespace(sleep=lambda seconds: None))

    with pytest.raises(HubPushError) as error:
        push_to_hub(output_copy, repo_id, token=token, endpoint=server.url)
    assert killed.is_set(), "the server was not killed during the upload"
    message = str(error.value)
    assert f"Could not reach the Hub at {server.url} while uploading" in message
    assert "re-running it is safe" in message and f"hftransfer push {output_copy} --repo-id {repo_id}" in message

    server.start()  # same port, same data directory
    assert not any((server.data_dir / "tmp").iterdir()), "the partial upload was discarded"
    assert not (server.data_dir / "blobs" / "sha256" / weights_sha[:2] / weights_sha).exists()
    assert api.list_repo_files(repo_id) == [".gitattributes"]  # the repo was created; nothing of the push is in it
    assert len(api.list_repo_commits(repo_id)) == 1

    url = push_to_hub(output_copy, repo_id, token=token, endpoint=server.url)
    commits = api.list_repo_commits(repo_id)
    assert len(commits) == 2 and url == f"{server.url}/{repo_id}/commit/{commits[0].commit_id}"
    assert sorted(api.list_repo_files(repo_id)) == EXPECTED_FILES
    downloaded = hf_hub_download(repo_id, "model.safetensors", endpoint=server.url, token=token, force_download=True)
    assert _sha256(Path(downloaded)) == weights_sha
