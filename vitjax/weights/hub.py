"""Pretrained weights where timm gets them: timm's pretrained config and the Hugging Face hub.

``pretrained_checkpoint(name)`` resolves ``arch`` / ``arch.tag`` to timm's pretrained config and
returns the local file holding its weights, downloaded with ``huggingface_hub.hf_hub_download``
(its cache, progress bar, token and revisions) unless already cached, trying the files timm tries
in timm's order. ``hub_model_config("org/repo[@revision]")`` reads an hf-hub repo's timm-format
config.json as ``timm.create_model("hf-hub:...")`` does. Every failure is a
``PretrainedNotFoundError`` whose one-line message names the repo, the file and what to do.

HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_CACHE and HF_HOME are read at call time; huggingface_hub
reads them once, at import, and both agree unless the environment changed since. Without
huggingface_hub only the cache is searched; without timm a small built-in table covers the most
used names and ``arch.tag`` maps to ``timm/arch.tag``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitjax.registry import split_tag
from vitjax.util import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)
from vitjax.weights.errors import CheckpointError

_INCEPTION = dict(mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD)
_IMAGENET = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
_BASE_CFG = dict(
    input_size=(3, 224, 224),
    interpolation="bicubic",
    crop_pct=0.9,
    crop_mode="center",
    num_classes=1000,
    **_INCEPTION,
)

# Default tags of common models, used only when timm is not installed (from timm 1.0).
_FALLBACK: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16_224": dict(tag="augreg_in21k_ft_in1k"),
    "vit_small_patch16_224": dict(tag="augreg_in21k_ft_in1k"),
    "vit_base_patch32_224": dict(tag="augreg_in21k_ft_in1k"),
    "vit_base_patch16_224": dict(tag="augreg2_in21k_ft_in1k"),
    "vit_base_patch16_384": dict(
        tag="augreg_in21k_ft_in1k", input_size=(3, 384, 384), crop_pct=1.0
    ),
    "vit_large_patch16_224": dict(tag="augreg_in21k_ft_in1k"),
    "deit_tiny_patch16_224": dict(tag="fb_in1k", **_IMAGENET),
    "deit_small_patch16_224": dict(tag="fb_in1k", **_IMAGENET),
    "deit_base_patch16_224": dict(tag="fb_in1k", **_IMAGENET),
    "deit_base_distilled_patch16_224": dict(tag="fb_in1k", **_IMAGENET),
    "deit3_base_patch16_224": dict(tag="fb_in1k", **_IMAGENET),
    "vit_small_patch14_dinov2": dict(
        tag="lvd142m", input_size=(3, 518, 518), crop_pct=1.0, num_classes=0, **_IMAGENET
    ),
    "vit_base_patch14_dinov2": dict(
        tag="lvd142m", input_size=(3, 518, 518), crop_pct=1.0, num_classes=0, **_IMAGENET
    ),
}
_EXPORTED = (
    "architecture",
    "tag",
    "hf_hub_id",
    "input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "num_classes",
    "license",
    "label_names",
    "label_descriptions",
)
# timm's names (timm.models._hub) for the weight files of a hub repo.
HF_WEIGHTS_NAME = "pytorch_model.bin"
HF_SAFE_WEIGHTS_NAME = "model.safetensors"
HF_OPEN_CLIP_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
HF_OPEN_CLIP_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "config.json"
_MAX_CONFIG_BYTES = 16 << 20
_HUB_PREFIXES = ("hf-hub:", "hf_hub:")  # hf_hub: is timm's deprecated spelling


class PretrainedNotFoundError(FileNotFoundError):
    """Pretrained weights that are neither cached nor downloadable; the message says what to do."""


class PretrainedAccessError(PretrainedNotFoundError):
    """A gated or private hub repo that the current token (or no token) may not read."""


class CorruptDownloadError(PretrainedNotFoundError, CheckpointError):
    """A downloaded weight file that does not read as its format (truncated or damaged)."""


def _is_true(value: str | None) -> bool:
    return (value or "").upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether hub downloads are off: HF_HUB_OFFLINE now, or when huggingface_hub was imported."""
    if any(_is_true(os.environ.get(k)) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.is_offline_mode())


def hub_endpoint() -> str:
    """The hub's base URL: HF_ENDPOINT now, else huggingface_hub's (https://huggingface.co)."""
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    try:
        from huggingface_hub import constants
    except ImportError:
        return "https://huggingface.co"
    return str(constants.ENDPOINT)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE or HF_HOME/hub now, else huggingface_hub's."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return Path(os.path.expanduser(os.environ["HF_HOME"])) / "hub"
    try:
        from huggingface_hub import constants
    except ImportError:
        home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(home) / "huggingface" / "hub"
    return Path(constants.HF_HUB_CACHE)


def is_hub_name(name: str) -> bool:
    """Whether a model name is an 'hf-hub:org/repo[@revision]' reference."""
    return name.startswith(_HUB_PREFIXES)


def split_hub_id(hub_id: str) -> tuple[str, str | None]:
    """'org/repo@rev' -> ('org/repo', 'rev'); 'org/repo' -> ('org/repo', None) (timm's hf_split)."""
    hub_id = hub_id.partition(":")[2] if is_hub_name(hub_id) else hub_id
    repo_id, at, revision = hub_id.partition("@")
    if not repo_id or "@" in revision or (at and not revision):
        raise ValueError(f"{hub_id!r}: expected 'org/repo' or 'org/repo@revision'")
    return repo_id, revision or None


def _current_name(name: str) -> str:
    """name, or for a deprecated timm name its current 'arch.tag' (timm's warning, once)."""
    from vitjax.registry import current_name

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_model resolved (and warned about) it already
        return current_name(name)


def resolve_pretrained_cfg(name: str, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """timm's pretrained config for 'arch', 'arch.tag' or 'hf-hub:org/repo[@rev]'.

    timm's registry when timm is installed, else a small table; an hf-hub name's comes from the
    repo's config.json (downloaded, or the cached copy).
    """
    if is_hub_name(name):
        return hub_model_config(name, cache_dir)[2]
    name = _current_name(name)  # timm's deprecated names -> arch.tag, as timm maps them
    arch, tag = split_tag(name)
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        get_pretrained_cfg = None
    if get_pretrained_cfg is not None:
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as e:  # unknown tag
            raise ValueError(f"{name}: {e}") from e
        if cfg is None:
            raise ValueError(f"timm has no pretrained config for {name!r}")
        return cfg.to_dict()
    from vitjax.models import deprecated

    if name in deprecated.PRETRAINED:  # a deprecated name's tag: its fields, without timm
        cfg = {**_BASE_CFG, **deprecated.pretrained_cfg(name), "architecture": arch, "tag": tag}
        return {"hf_hub_id": f"timm/{name}", **cfg}  # timm's hub convention
    known = _FALLBACK.get(arch)
    if known is not None and tag in ("", known["tag"]):
        cfg = {**_BASE_CFG, **known, "architecture": arch}
    elif tag:  # timm's hub convention; the tag's classes and input size are unknown here
        cfg = {"architecture": arch, "tag": tag}
    else:
        raise ValueError(
            f"{name}: without timm installed, give a tag (e.g. '{arch}.augreg_in1k'), pass "
            "checkpoint_path=..., or pip install timm"
        )
    cfg["hf_hub_id"] = f"timm/{arch}.{cfg['tag']}"
    return cfg


def _weight_filenames(cfg: Mapping[str, Any]) -> list[str]:
    """Files timm would read for this config, safetensors alternatives first (timm's order)."""
    name = cfg.get("hf_hub_filename") or HF_WEIGHTS_NAME
    if name.endswith(".safetensors"):
        return [name]
    if name == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, name]
    if name == HF_OPEN_CLIP_WEIGHTS_NAME:
        return [HF_OPEN_CLIP_SAFE_WEIGHTS_NAME, name]
    if name.endswith(".bin"):
        return [name[:-4] + ".safetensors", name]
    return [name]


def _snapshot(repo_dir: Path, revision: str) -> Path | None:
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return repo_dir / "snapshots" / revision
    ref = repo_dir / "refs" / revision
    return repo_dir / "snapshots" / ref.read_text().strip() if ref.is_file() else None


def cached_hf_file(
    repo_id: str,
    filename: str,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> Path | None:
    """Path of repo_id/filename in the hub cache (models--org--name/snapshots/<rev>/), or None."""
    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir()
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        try_to_load_from_cache = None
    if try_to_load_from_cache is not None:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache), revision=revision)
        return Path(found) if isinstance(found, str) else None
    snap = _snapshot(cache / f"models--{repo_id.replace('/', '--')}", revision or "main")
    return snap / filename if snap is not None and (snap / filename).is_file() else None


def _at(repo_id: str, filename: str, revision: str | None) -> str:
    return f"{repo_id}/{filename}" + (f" (revision {revision})" if revision else "")


def _download_cmd(repo_id: str, filename: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return f"`hf download {repo_id} {filename}{rev}`"


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _hub_error(
    e: Exception, repo_id: str, filename: str, revision: str | None, cache: Path
) -> PretrainedNotFoundError:
    """One-line error for a failed hf_hub_download: what failed and what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, LocalEntryNotFoundError) and isinstance(e.__cause__, HfHubHTTPError):
        e = e.__cause__  # the hub answered (403, 5xx): say what it answered
    at, url, status = _at(repo_id, filename, revision), f"{hub_endpoint()}/{repo_id}", _status(e)
    if status == 401 and "Invalid credentials" in str(e):
        return PretrainedAccessError(
            f"{at}: {hub_endpoint()} refused the token (HTTP 401, invalid credentials); check "
            "HF_TOKEN or log in again with `hf auth login`"
        )
    if isinstance(e, GatedRepoError):
        how = (
            f"your account has no access yet: request it at {url}"
            if status == 403
            else f"log in (`hf auth login` or HF_TOKEN=...) as one who accepted them at {url}"
        )
        return PretrainedAccessError(
            f"{at}: {repo_id} is a gated repo (HTTP {status}) whose terms must be accepted; {how}, "
            "or pass checkpoint_path=..."
        )
    if isinstance(e, RepositoryNotFoundError) or status in (401, 403):
        return PretrainedAccessError(
            f"{at}: repo {repo_id} not found at {hub_endpoint()} (HTTP {status}); check the name, "
            "or, if it is private, log in (`hf auth login` or HF_TOKEN=...) with access to it"
        )
    if isinstance(e, RevisionNotFoundError):
        return PretrainedNotFoundError(
            f"{at}: {repo_id} has no revision {revision or 'main'!r} (HTTP {status}); give an "
            "existing branch, tag or commit after '@'"
        )
    if isinstance(e, RemoteEntryNotFoundError):
        return PretrainedNotFoundError(
            f"{at}: {repo_id} has no file {filename} at revision {revision or 'main'} "
            f"(HTTP {status}); see {url}/tree/{revision or 'main'}"
        )
    if isinstance(e, LocalEntryNotFoundError):
        if hub_offline():
            return PretrainedNotFoundError(
                f"{at}: not in the hub cache {cache} and HF_HUB_OFFLINE is set; unset it to "
                f"download, fetch it once with {_download_cmd(repo_id, filename, revision)}, or "
                "pass checkpoint_path=..."
            )
        cause = e.__cause__ or e.__context__
        why = _first_line(cause) if cause is not None else _first_line(e)
        return PretrainedNotFoundError(
            f"{at}: not in the hub cache {cache} and {hub_endpoint()} cannot be reached ({why}); "
            "check the network (or HF_ENDPOINT), or pass checkpoint_path=..."
        )
    if isinstance(e, HFValidationError):
        return PretrainedNotFoundError(f"{at}: not a valid hub repo id or file ({e})")
    if isinstance(e, HfHubHTTPError):
        return PretrainedNotFoundError(
            f"{at}: the hub at {hub_endpoint()} answered HTTP {status} ({_first_line(e)}); retry "
            "later, or pass checkpoint_path=..."
        )
    return PretrainedNotFoundError(
        f"{at}: the download from {hub_endpoint()} failed ({_first_line(e)}); retry, or fetch it "
        f"with {_download_cmd(repo_id, filename, revision)}"
    )


def hub_file(
    repo_id: str,
    filename: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    cached_only: bool = False,
) -> Path:
    """Local path of one file of a hub repo: the cached copy, else downloaded into the cache."""
    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir()
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        found = cached_hf_file(repo_id, filename, cache, revision)
        if found is None:
            raise PretrainedNotFoundError(
                f"{_at(repo_id, filename, revision)}: not in the hub cache {cache}; pip install "
                "huggingface_hub to download it, or pass checkpoint_path=..."
            ) from None
        return found
    from vitjax import __version__

    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=str(cache),
            endpoint=os.environ.get("HF_ENDPOINT", "").rstrip("/") or None,
            local_files_only=cached_only or hub_offline(),
            library_name="vitjax",
            library_version=__version__,
        )
    except Exception as e:  # every hub, HTTP and file error becomes one clear message
        raise _hub_error(e, repo_id, filename, revision, cache) from e
    return Path(path)


def _check_download(path: Path, repo_id: str, revision: str | None) -> Path:
    """path, after checking that a safetensors file is whole (a truncated one is refused)."""
    if path.suffix != ".safetensors":
        return path  # .bin/.pth are checked when read (torch.load, weights_only=True)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np"):
            pass
    except (SafetensorError, OSError, ValueError) as e:
        again = _download_cmd(repo_id, path.name, revision).rstrip("`") + " --force-download`"
        raise CorruptDownloadError(
            f"{repo_id}: the downloaded file {path} is corrupt ({_first_line(e)}); delete "
            f"{path.resolve()} and retry, or run {again}"
        ) from e
    return path


def _entry_missing(e: PretrainedNotFoundError) -> bool:
    """Whether a failed hub_file means only 'this file is absent' (timm then tries the next)."""
    cause = e.__cause__
    if cause is None:  # no huggingface_hub: the cache lacks it
        return True
    from huggingface_hub.errors import EntryNotFoundError

    return isinstance(cause, EntryNotFoundError)  # absent on the hub, or not cached offline


def hub_weights(
    hub_id: str,
    hf_hub_filename: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The weight file timm would load from hub repo 'org/repo[@rev]', cached or downloaded.

    As timm's ``load_state_dict_from_hf``: the safetensors alternative of the named file first
    (model.safetensors for pytorch_model.bin), then the file itself when that one is absent.
    """
    repo_id, revision = split_hub_id(hub_id)
    *alternatives, last = _weight_filenames({"hf_hub_filename": hf_hub_filename})
    first_error, cached_only = None, False
    for filename in alternatives:
        try:
            path = hub_file(repo_id, filename, revision, cache_dir)
        except PretrainedNotFoundError as e:
            if not _entry_missing(e):
                raise
            first_error = first_error or e
            # Not found locally (offline or unreachable hub): the rest can only be cached copies.
            cached_only = not isinstance(e.__cause__, _remote_missing())
            continue
        return _check_download(path, repo_id, revision)
    try:
        path = hub_file(repo_id, last, revision, cache_dir, cached_only=cached_only)
    except PretrainedNotFoundError as e:
        if first_error is None or not _entry_missing(e):
            raise
        if isinstance(first_error.__cause__, _remote_missing()):  # the hub has neither file
            raise type(e)(f"{e}; nor has it {', '.join(alternatives)}") from e.__cause__
        raise type(first_error)(f"{first_error} (nor is {last} cached)") from first_error.__cause__
    return _check_download(path, repo_id, revision)


def _remote_missing() -> type | tuple[type, ...]:
    try:
        from huggingface_hub.errors import RemoteEntryNotFoundError
    except ImportError:
        return ()
    return RemoteEntryNotFoundError


def _torch_hub_dir() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch"
    )
    return Path(home) / "hub" / "checkpoints"


def _url_file(url: str) -> Path:
    """A checkpoint URL's file in torch's hub cache (as timm's url source), downloaded if needed."""
    path = _torch_hub_dir() / os.path.basename(url.split("?")[0])
    if path.is_file():
        return path
    if hub_offline():
        raise PretrainedNotFoundError(
            f"{url}: not in torch's hub cache {path.parent} and HF_HUB_OFFLINE is set; unset it to "
            "download, or pass checkpoint_path=..."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:
            shutil.copyfileobj(r, f)
        os.replace(tmp, path)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise PretrainedNotFoundError(
            f"{url}: download into {path.parent} failed ({_first_line(e)}); check the network, "
            "or download it there yourself, or pass checkpoint_path=..."
        ) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def pretrained_checkpoint(
    name: str | Mapping[str, Any], cache_dir: str | os.PathLike | None = None
) -> Path:
    """Local file holding timm's pretrained weights for a name or pretrained cfg; downloads it.

    Where timm's ``_resolve_pretrained_source`` looks: an hf-hub source's repo; else the cfg's
    ``file``, its ``hf_hub_id`` (through the hub cache), or its ``url`` (torch's hub cache).
    """
    cfg = resolve_pretrained_cfg(name, cache_dir) if isinstance(name, str) else dict(name)
    label = name if isinstance(name, str) else cfg.get("architecture", "pretrained_cfg")
    hub_id = cfg.get("hf_hub_id")
    if cfg.get("source") != "hf-hub":
        if cfg.get("file"):
            return Path(cfg["file"])
        if not hub_id and cfg.get("url"):
            return _url_file(cfg["url"])
    if not hub_id:
        raise PretrainedNotFoundError(
            f"{label}: timm lists no pretrained weights for it; use pretrained=False or pass "
            "checkpoint_path=..."
        )
    return hub_weights(hub_id, cfg.get("hf_hub_filename"), cache_dir)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise CheckpointError(f"{what}: over {_MAX_CONFIG_BYTES:,} bytes, not a config")
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptDownloadError(
            f"{what}: the downloaded {path} is not valid JSON ({_first_line(e)}); delete "
            f"{path.resolve()} and retry"
        ) from e
    if not isinstance(config, dict) or "architecture" not in config:
        raise CheckpointError(f"{what}: not a timm config.json (no 'architecture')")
    return config


def parse_timm_config(
    config: Mapping[str, Any], hub_id: str
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, model kwargs, pretrained_cfg) of a timm-format config.json, as timm reads it.

    timm's ``_parse_model_cfg`` (legacy single-dict configs, top-level num_classes and labels,
    model_args) then ``_update_default_model_kwargs``: the pretrained cfg's num_classes,
    global_pool, in_chans and (for a fixed input size) img_size fill what model_args leave unset.
    """
    cfg = json.loads(json.dumps(dict(config)))  # a deep copy
    if "pretrained_cfg" not in cfg:  # legacy: one dict holding the pretrained cfg
        pretrained = cfg
        cfg = {"architecture": pretrained.pop("architecture"), "pretrained_cfg": pretrained}
        if "labels" in pretrained:
            pretrained["label_names"] = pretrained.pop("labels")
    pretrained = dict(cfg["pretrained_cfg"] or {}, hf_hub_id=hub_id, source="hf-hub")
    for key in ("num_classes", "label_names", "label_descriptions"):
        if key in cfg:
            pretrained[key] = cfg[key]
    args = dict(cfg.get("model_args") or {})
    dynamic = args.get("dynamic_img_size") or args.get("use_naflex")
    if dynamic or args.get("strict_img_size") is False:
        pretrained["fixed_input_size"] = False
    if args.get("in_chans") is not None:
        for key in ("input_size", "test_input_size", "min_input_size"):
            if pretrained.get(key) or key == "input_size":
                size = pretrained.get(key) or (3, 224, 224)
                pretrained[key] = [args["in_chans"], *size[1:]]
    if args.get("img_size") is not None and pretrained.get("fixed_input_size", False):
        size = args["img_size"]
        size = [size, size] if isinstance(size, int) else list(size)
        pretrained["input_size"] = [pretrained["input_size"][0], *size]
    kwargs = dict(args)
    if isinstance(pretrained.get("num_classes"), int) and pretrained["num_classes"] >= 0:
        kwargs.setdefault("num_classes", pretrained["num_classes"])
    if pretrained.get("global_pool") is not None:
        kwargs.setdefault("global_pool", pretrained["global_pool"])
    input_size = pretrained.get("input_size")
    if input_size:
        kwargs.setdefault("in_chans", input_size[0])
        if pretrained.get("fixed_input_size", False):
            kwargs.setdefault("img_size", list(input_size[-2:]))
    if isinstance(kwargs.get("img_size"), (list, tuple)):
        h, w = kwargs["img_size"]
        kwargs["img_size"] = h if h == w else [h, w]
    return str(cfg["architecture"]), kwargs, pretrained


def hub_model_config(
    name: str, cache_dir: str | os.PathLike | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(family, config fields, pretrained_cfg) of 'hf-hub:org/repo[@rev]', from its config.json.

    The fields are the architecture's registry entry updated as timm builds the repo's model
    (``parse_timm_config``), or the exact ``model_config`` a vitjax ``save_pretrained`` wrote.
    """
    from vitjax import registry

    hub_id = name.partition(":")[2] if is_hub_name(name) else name
    repo_id, revision = split_hub_id(hub_id)
    where = f"hf-hub:{hub_id} ({CONFIG_NAME})"
    config = _read_json(hub_file(repo_id, CONFIG_NAME, revision, cache_dir), where)
    arch, kwargs, pretrained = parse_timm_config(config, hub_id)
    if isinstance(config.get("model_config"), dict) and config.get("family") in registry.FAMILIES:
        return str(config["family"]), dict(config["model_config"]), pretrained
    try:
        family, arch, _ = registry.resolve(arch)
    except ValueError as e:
        raise CheckpointError(f"{where}: vitjax does not build architecture {arch!r}: {e}") from e
    return family, {**registry.config_module(family).VARIANTS[arch], **kwargs}, pretrained


def _labels(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """ImageNet label names/descriptions for cfg's class count, when timm knows the subset."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:
        return {}
    subset = infer_imagenet_subset(cfg)
    if not subset:
        return {}
    info = ImageNetInfo(subset)
    names = info.label_names()
    if len(names) != cfg.get("num_classes"):
        return {}
    return {"label_names": list(names), "label_descriptions": list(info.label_descriptions())}


def fit_pretrained_cfg(pretrained_cfg: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """pretrained_cfg updated to a model config: input_size, num_classes; stale labels dropped."""
    out = dict(pretrained_cfg)
    h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else cfg.img_size
    out["input_size"] = [cfg.in_chans, h, w]
    if out.get("num_classes", cfg.num_classes) != cfg.num_classes:
        out.pop("label_names", None)
        out.pop("label_descriptions", None)
    out["num_classes"] = cfg.num_classes
    return out


def export_pretrained_cfg(name_or_cfg: str | dict[str, Any]) -> dict[str, Any]:
    """JSON-ready pretrained config (mean, std, interpolation, crop_pct, input_size, labels)."""
    cfg = resolve_pretrained_cfg(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    out = {k: cfg[k] for k in _EXPORTED if cfg.get(k) is not None}
    if "label_names" not in out:
        out.update(_labels(cfg))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def save_timm_dir(
    directory: str | os.PathLike,
    name: str,
    model_args: dict[str, Any],
    cfg: Any,
    state_dict: dict[str, Any],
    pretrained_cfg: dict[str, Any] | None = None,
) -> Path:
    """Write timm's hub layout (config.json + model.safetensors), for timm's 'local-dir:DIR'."""
    from vitjax.weights.files import write_pretrained_dir

    pretrained = {k: v for k, v in (pretrained_cfg or {}).items() if k != "hf_hub_id"}
    pretrained = fit_pretrained_cfg(pretrained, cfg)
    pretrained["architecture"] = split_tag(name)[0]
    config = {
        "architecture": split_tag(name)[0],
        "num_classes": cfg.num_classes,
        "num_features": cfg.embed_dim,
        "global_pool": cfg.global_pool,
        "pretrained_cfg": pretrained,
        "model_args": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in {**model_args, "img_size": cfg.img_size}.items()
        },
    }
    return write_pretrained_dir(directory, config, state_dict)
