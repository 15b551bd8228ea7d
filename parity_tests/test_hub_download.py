"""pretrained=True and hf-hub: names against a Hugging Face hub served on 127.0.0.1.

The hub is an http.server thread serving repos the tests write: HEAD/GET
/{repo}/resolve/{revision}/{filename} with the headers huggingface_hub's hf_hub_download reads
(X-Repo-Commit, ETag, Content-Length; X-Error-Code on errors). HF_ENDPOINT points at it and
HF_HOME is a temp folder; huggingface_hub reads both once, at import, so its constants are patched
too, which sends timm (the reference, downloading through the same hub) there as well. Nothing
here contacts the real hub.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import jax
import numpy as np
import pytest
import timm
import torch
from devtools.timm_verify import flax_forward, images, make_timm, timm_forward
from huggingface_hub import constants
from safetensors.numpy import save as save_numpy
from safetensors.torch import save as save_torch

from parity_tests.parity import assert_close
from vitjax.factory import create_model, save_pretrained
from vitjax.weights import hub as vhub

TOKEN = "hf_loopback_token"
HF_BIN = "pytorch_model.bin"  # the one token the hub's gated repos accept


@dataclass
class Repo:
    """A hub repo: revision name -> commit, commit -> files, and who may read it."""

    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    gated: bool = False
    private: bool = False


class LoopbackHub:
    """A Hugging Face hub on 127.0.0.1 serving in-memory repos (and plain files under /files/)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # filename -> bytes sent before the connection drops
        self.log: list[tuple[str, str]] = []
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add(self, repo_id: str, files: dict[str, bytes], revision: str = "main", **access) -> str:
        """Publish files as a new commit of repo_id at revision; returns the commit hash."""
        repo = self.repos.setdefault(repo_id, Repo(**access))
        digest = hashlib.sha1(repr(sorted(files.items())).encode() + revision.encode())
        commit = digest.hexdigest()
        repo.commits[commit], repo.refs[revision] = dict(files), commit
        return commit

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, method: str, path: str, headers) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body the hub gives for one request."""
        self.log.append((method, path))
        parts = [urllib.parse.unquote(p) for p in path.split("?")[0].lstrip("/").split("/")]
        if parts[0] == "files" and "/".join(parts[1:]) in self.files:
            return 200, {}, self.files["/".join(parts[1:])]
        if len(parts) < 5 or parts[2] != "resolve":
            return _error(404, "RepoNotFound", "Repository not found")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        token = (headers.get("Authorization") or "").removeprefix("Bearer ") or None
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and token != TOKEN):  # the hub hides both alike
            return _error(401, "RepoNotFound", "Repository not found")
        if repo.gated and token != TOKEN:
            status = 401 if token is None else 403
            return _error(status, "GatedRepo", f"Access to model {repo_id} is restricted.")
        commit = repo.refs.get(revision, revision)
        if commit not in repo.commits:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        meta = {"X-Repo-Commit": commit}
        if filename not in repo.commits[commit]:
            return _error(404, "EntryNotFound", f"{filename} does not exist", meta)
        data = repo.commits[commit][filename]
        return 200, {**meta, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, data


def _error(status: int, code: str, message: str, extra: dict | None = None):
    headers = {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
    return status, headers, json.dumps({"error": message}).encode()


class _Handler(BaseHTTPRequestHandler):
    hub: LoopbackHub  # HTTP/1.0: one request per connection, so a stopped hub is unreachable

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(send_body=True)

    def _reply(self, send_body: bool) -> None:
        status, headers, data = self.hub.answer(self.command, self.path, self.headers)
        self.send_response(status)
        for k, v in {"Content-Type": "application/octet-stream", **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            cut = self.hub.cut.get(self.path.rsplit("/", 1)[-1])
            self.wfile.write(data if cut is None else data[:cut])

    def log_message(self, *args) -> None:
        pass


# Settings of the machine running the tests that would change what the hub is asked.
_UNSET = (
    "HF_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_OIDC_RESOURCE", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
)  # fmt: skip


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A loopback hub with HF_ENDPOINT, HF_HOME and TORCH_HOME pointed at it / tmp_path."""
    server = LoopbackHub()
    home = tmp_path / "hf"
    for name in _UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    patched = dict(
        ENDPOINT=server.url,
        HUGGINGFACE_CO_URL_TEMPLATE=server.url + "/{repo_id}/resolve/{revision}/{filename}",
        HF_HOME=str(home),
        HF_HUB_CACHE=str(home / "hub"),
        HF_TOKEN_PATH=str(home / "token"),
        HF_STORED_TOKENS_PATH=str(home / "stored_tokens"),
        HF_HUB_OFFLINE=False,
        HF_HUB_DISABLE_IMPLICIT_TOKEN=False,
    )
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    url = huggingface_hub.hf_hub_url("a/b", "c")
    assert url.startswith(server.url), url  # never the real hub
    yield server
    server.stop()


def st_bytes(module: torch.nn.Module) -> bytes:
    """A timm model's weights as model.safetensors bytes."""
    return save_torch({k: v.detach().contiguous() for k, v in module.state_dict().items()})


def timm_repo(module: torch.nn.Module, tmp_path: Path) -> dict[str, bytes]:
    """config.json + model.safetensors exactly as timm's push_to_hf_hub writes them."""
    out = tmp_path / f"repo_{len(list(tmp_path.glob('repo_*')))}"
    timm.models.save_for_hf(module, str(out), safe_serialization=True)
    return {p.name: p.read_bytes() for p in out.iterdir()}


def cache_snapshot(repo_id: str, commit: str) -> Path:
    """The snapshot folder huggingface_hub's cache keeps for repo_id at commit."""
    repo_dir = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    return repo_dir / "snapshots" / commit


def same_variables(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    same = (np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))
    return len(leaves_a) == len(leaves_b) and all(same)


def test_pretrained_downloads_then_reads_the_cache(hub, monkeypatch):
    name = "vit_tiny_patch16_224"
    hub_id = vhub.resolve_pretrained_cfg(name)["hf_hub_id"]
    assert hub_id == timm.models.get_pretrained_cfg(name).hf_hub_id  # timm's default tag
    module = make_timm(name, depth=1)
    commit = hub.add(hub_id, {"model.safetensors": st_bytes(module)})
    model, variables = create_model(name, pretrained=True, depth=1)
    assert ("GET", f"/{hub_id}/resolve/main/model.safetensors") in hub.log
    assert (cache_snapshot(hub_id, commit) / "model.safetensors").is_file()
    twin = timm.create_model(name, pretrained=True, depth=1).eval()  # through the same hub
    x = images(module)
    assert_close(
        flax_forward(model, variables, x)[0], timm_forward(twin, x)[0],
        "pretrained=True logits (downloaded)", dtype="float32_model",
    )  # fmt: skip
    hub.stop()  # unreachable now: the cache serves it, online and offline
    _, again = create_model(name, pretrained=True, depth=1)
    assert same_variables(again, variables)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = vhub.pretrained_checkpoint(name)
    assert path.samefile(cache_snapshot(hub_id, commit) / "model.safetensors")


def test_hf_hub_name_builds_and_loads_like_timm(hub, tmp_path):
    spec, kw = "someone/tiny-vit", dict(depth=1, img_size=64, num_classes=5)
    main, v1 = make_timm("vit_tiny_patch16_224", **kw), make_timm("vit_tiny_patch16_224", 1, **kw)
    hub.add(spec, timm_repo(main, tmp_path))
    hub.add(spec, timm_repo(v1, tmp_path), revision="v1")
    x = images(main)
    for name, module in ((f"hf-hub:{spec}", main), (f"hf-hub:{spec}@v1", v1)):
        model, variables = create_model(name)
        assert (model.cfg.depth, model.cfg.img_size, model.cfg.num_classes) == (1, 64, 5)
        twin = timm.create_model(name, pretrained=True).eval()
        want = timm_forward(twin, x)[0]
        assert_close(want, timm_forward(module, x)[0], f"timm {name} = its weights")
        assert_close(flax_forward(model, variables, x)[0], want, f"{name} logits")
    cfg = vhub.resolve_pretrained_cfg(f"hf-hub:{spec}")
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "num_classes", "source"):
        assert tuple(np.atleast_1d(cfg[key])) == tuple(np.atleast_1d(twin.pretrained_cfg[key]))
    # keyword overrides win over the repo's model_args, as timm's do (a fresh 3-class head)
    model, variables = create_model(f"hf-hub:{spec}", num_classes=3)
    twin = timm.create_model(f"hf-hub:{spec}", pretrained=True, num_classes=3).eval()
    assert model.cfg.num_classes == 3 == twin.num_classes
    pre = flax_forward(model, variables, x)[1]
    assert_close(pre, timm_forward(twin, x)[1], "new-head pre_logits")


def test_safetensors_first_then_pytorch_model_bin(hub):
    module = make_timm("deit_tiny_patch16_224", depth=1)
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    repo = "timm/deit_tiny_patch16_224.fb_in1k"
    hub.add(repo, {"pytorch_model.bin": buf.getvalue()})
    path = vhub.pretrained_checkpoint("deit_tiny_patch16_224")
    assert path.name == "pytorch_model.bin" and path.read_bytes() == buf.getvalue()
    heads = [p for m, p in hub.log if m == "HEAD"]  # timm's order: the safetensors file first
    assert heads == [f"/{repo}/resolve/main/{n}" for n in ("model.safetensors", HF_BIN)]


@pytest.mark.parametrize("how", ["env", "constants"])
def test_offline_refuses_an_uncached_name(hub, monkeypatch, how):
    weights = save_numpy({"a": np.ones(2)})
    hub.add("timm/deit_tiny_patch16_224.fb_in1k", {"model.safetensors": weights})
    if how == "env":  # set after huggingface_hub was imported: read at call time
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(vhub.PretrainedNotFoundError) as e:
        create_model("deit_tiny_patch16_224", pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg, msg
    assert "timm/deit_tiny_patch16_224.fb_in1k/model.safetensors" in msg, msg
    assert "`hf download timm/deit_tiny_patch16_224.fb_in1k model.safetensors`" in msg, msg
    assert hub.log == []  # nothing was asked of the hub


def test_unreachable_hub_and_not_cached(hub, monkeypatch):
    hub.stop()
    monkeypatch.setattr(time, "sleep", lambda s: None)  # huggingface_hub's retry backoff
    with pytest.raises(vhub.PretrainedNotFoundError) as e:
        create_model("deit_tiny_patch16_224", pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg and f"{hub.url} cannot be reached" in msg, msg
    assert "timm/deit_tiny_patch16_224.fb_in1k/model.safetensors: not in the hub cache" in msg, msg


@pytest.mark.parametrize("case", ["gated-no-token", "gated-no-access", "private-no-token"])
def test_gated_or_private_repo_is_refused(hub, monkeypatch, case):
    kind, _, who = case.partition("-")
    hub.add("acme/locked", {"config.json": b"{}"}, **{kind: True})
    if who == "no-access":
        monkeypatch.setenv("HF_TOKEN", "hf_someone_without_access")
    with pytest.raises(vhub.PretrainedAccessError) as e:
        create_model("hf-hub:acme/locked")
    msg = str(e.value)
    status = 403 if who == "no-access" else 401
    assert "\n" not in msg and f"HTTP {status}" in msg and "acme/locked" in msg, msg
    assert ("gated repo" if kind == "gated" else "if it is private") in msg, msg
    assert ("request it" if who == "no-access" else "HF_TOKEN") in msg, msg
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # huggingface_hub sends HF_TOKEN: now it downloads
    assert vhub.hub_file("acme/locked", "config.json").read_bytes() == b"{}"


@pytest.mark.parametrize("case", ["file", "revision", "repo"])
def test_missing_file_revision_or_repo(hub, case):
    hub.add("timm/deit_tiny_patch16_224.fb_in1k", {"README.md": b"no weights"})
    hub.add("acme/tiny", {"config.json": b"{}"})
    name, pretrained, want = {
        "file": ("deit_tiny_patch16_224", True, "has no file pytorch_model.bin at revision main"),
        "revision": ("hf-hub:acme/tiny@v9", False, "acme/tiny has no revision 'v9' (HTTP 404)"),
        "repo": ("hf-hub:acme/nothing", False, "repo acme/nothing not found at"),
    }[case]
    with pytest.raises(vhub.PretrainedNotFoundError) as e:
        create_model(name, pretrained=pretrained)
    msg = str(e.value)
    assert "\n" not in msg and want in msg, msg
    if case == "file":
        assert "HTTP 404" in msg and "nor has it model.safetensors" in msg, msg


@pytest.mark.parametrize("how", ["served-truncated", "cut-mid-transfer"])
def test_truncated_download(hub, monkeypatch, how):
    data = save_numpy({"w": np.ones((64, 64), np.float32)})
    repo = "timm/deit_tiny_patch16_224.fb_in1k"
    if how == "served-truncated":  # the hub's headers agree with the short file
        hub.add(repo, {"model.safetensors": data[: len(data) // 2]})
        with pytest.raises(vhub.CorruptDownloadError) as e:
            create_model("deit_tiny_patch16_224", pretrained=True)
        msg = str(e.value)
        assert "\n" not in msg and f"{repo}: the downloaded file" in msg, msg
        assert "is corrupt" in msg and "delete" in msg and "--force-download" in msg, msg
        hub.stop()  # the corrupt copy in the cache is refused again, not loaded
        with pytest.raises(vhub.CorruptDownloadError):
            vhub.pretrained_checkpoint("deit_tiny_patch16_224")
        return
    hub.add(repo, {"model.safetensors": data})
    hub.cut["model.safetensors"] = len(data) // 2  # Content-Length says more than arrives
    monkeypatch.setattr(time, "sleep", lambda s: None)  # huggingface_hub's resume retries
    with pytest.raises(vhub.PretrainedNotFoundError) as e:
        vhub.pretrained_checkpoint("deit_tiny_patch16_224")
    msg = str(e.value)
    assert "\n" not in msg and "the download from" in msg and "retry" in msg, msg
    assert not list(Path(constants.HF_HUB_CACHE).rglob("model.safetensors"))  # nothing half-kept


def test_url_weights_go_to_torch_hub_cache(hub, monkeypatch, tmp_path):
    hub.files["ckpt/w.pth"] = b"weights"
    cfg = {"architecture": "vit_x", "url": f"{hub.url}/files/ckpt/w.pth"}
    path = vhub.pretrained_checkpoint(cfg)
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "w.pth"
    assert path.read_bytes() == b"weights"
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert vhub.pretrained_checkpoint(cfg) == path
    with pytest.raises(vhub.PretrainedNotFoundError, match="HF_HUB_OFFLINE is set"):
        vhub.pretrained_checkpoint({**cfg, "url": f"{hub.url}/files/other.pth"})


def test_hf_hub_name_reads_a_save_pretrained_repo(hub, tmp_path):
    model, variables = create_model("vit_tutorial_patch16_32", depth=1)
    save_pretrained(tmp_path / "out", model, variables)  # its exact model_config wins
    hub.add("me/mine", {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()})
    again, loaded = create_model("hf-hub:me/mine")
    assert again.cfg == model.cfg and same_variables(loaded, variables)
