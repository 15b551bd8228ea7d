"""Read and write weight files without running code: safetensors, safe .pth/.bin, npz, dirs.

Everything returns timm-key state_dicts of numpy arrays; torch is imported only to read .pth/.bin.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vitjax.weights import lazy as lazy_io
from vitjax.weights import validate
from vitjax.weights.errors import CheckpointError
from vitjax.weights.lazy import LazySafetensors
from vitjax.weights.npz_hybrid import load_npz  # the vit_jax / big_vision layouts, hybrids too

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_OUTPUTS = (WEIGHTS_NAME, CONFIG_NAME)  # the only files write_pretrained_dir writes
# timm's load_checkpoint order (EMA weights first); "encoder" holds I-JEPA's ViT.
_CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module", "encoder")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_orig_mod.")  # torch.compile / DDP, as timm strips
# Marks the files vitjax wrote, so a rewrite replaces them and nothing else; timm ignores it.
_METADATA = {"format": "pt", "writer": "vitjax"}
# torch.load refuses a pickle for one of these reasons when it would build arbitrary objects.
_CODE_REFUSALS = (
    "Unsupported global",
    "is blocked",
    "unrecognized function",
    "Can only create new object",
    "Can only build",
    "must be imported to load",
)
# Globals of torch's own pickles (storages, tensor rebuilders), which weights_only=True allows.
_TORCH_GLOBALS = re.compile(
    r"^(torch\.\w*Storage|torch\._utils\._rebuild_\w+|collections\.OrderedDict)$"
)


def load_safetensors(path: str | os.PathLike, lazy: bool = False) -> dict[str, Any]:
    """The tensors of a .safetensors file as numpy arrays (numpy only); lazy: read on access."""
    return dict(LazySafetensors(path)) if lazy else lazy_io.load(path)


def load_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A .pth/.bin checkpoint through torch.load(weights_only=True), containers unwrapped."""
    what = validate.describe_torch_file(path)
    if what is not None:  # only zips holding data.pkl and pickle streams reach torch.load
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: it is {what}")
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path}: reading .pth/.bin needs PyTorch (pip install 'vitjax[torch]'), "
            "or convert the file to .safetensors"
        ) from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        if any(reason in str(e) for reason in _CODE_REFUSALS):
            raise CheckpointError(
                f"{path}: refused: unpickling it would run code or build objects other than "
                "tensors (torch.load weights_only=True). Load it only if you trust it, and prefer "
                ".safetensors files"
            ) from e
        imports = sorted({n for n in validate.pickle_imports(path) if not _TORCH_GLOBALS.match(n)})
        if imports:  # torch stopped before it met them (e.g. at a protocol-4 FRAME)
            raise CheckpointError(
                f"{path}: refused: unpickling it would import {', '.join(imports[:5])} (code or "
                "objects other than tensors). Load it only if you trust it, and prefer "
                ".safetensors files"
            ) from e
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint: a corrupt or unsupported pickle "
            f"({_torch_reason(e)})"
        ) from e
    return _unwrap(obj, path)


def _torch_reason(e: Exception) -> str:
    """The line of a torch.load error that says what went wrong (its message is a page)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _unwrap(obj: Any, path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state_dict inside {'state_dict': ...} / {'model': ...} containers, as numpy."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: holds no state_dict (found {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "shape"):
            continue  # counters and other metadata
        if hasattr(v, "detach"):
            v = _tensor_to_numpy(v)
        out[str(k)] = np.asarray(v)
    return out


def _tensor_to_numpy(t: Any) -> np.ndarray:
    """A torch tensor as numpy, bfloat16 / float8 bit-exact as ml_dtypes arrays."""
    import ml_dtypes

    t = t.detach().cpu()
    name = str(t.dtype).removeprefix("torch.")
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import torch

        bits = torch.int16 if name == "bfloat16" else torch.uint8
        return t.contiguous().view(bits).numpy().view(getattr(ml_dtypes, name))
    return t.numpy()


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Strip DDP / torch.compile wrapper prefixes from keys, as timm's clean_state_dict."""
    out = {}
    for k, v in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            k = k[len(prefix) :] if k.startswith(prefix) else k
        out[k] = v
    return out


def load_state_dict(path: str | os.PathLike, lazy: bool = False) -> dict[str, Any]:
    """timm-key state_dict from a .safetensors, .pth/.bin or .npz file, or a save_pretrained dir.

    lazy=True: a .safetensors file's tensors are LazyTensors (shape and dtype now, values read
    by np.asarray), so a loader can convert them one at a time.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{path}: directory has no {WEIGHTS_NAME}")
        return load_safetensors(path / WEIGHTS_NAME, lazy)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: is {validate.file_kind(path.stat().st_mode)}, not a file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return clean_state_dict(load_safetensors(path, lazy))
    if suffix in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        return clean_state_dict(load_torch_file(path))
    if suffix == ".npz":
        return load_npz(path)
    raise CheckpointError(
        f"{path}: unknown weight file type {suffix!r} (expected .safetensors, .pth, .bin, .npz)"
    )


def config_family(cfg: Mapping[str, Any]) -> str:
    """The vitjax family of a config.json: its "family" entry, else (older folders) its
    "architecture" when that is a family name, else the family of the timm architecture."""
    from vitjax import registry

    if "family" in cfg:
        return str(cfg["family"])
    arch = str(cfg.get("architecture", "vit"))
    if arch in registry.FAMILIES:
        return arch
    return registry.resolve(arch)[0]


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a save_pretrained (or timm hub-layout) dir, its model config checked.

    vitjax's folders hold the exact ``model_config``; a folder in timm's hub layout only
    (``architecture`` + ``model_args``, as timm's ``push_to_hf_hub`` writes) gets one made from
    the architecture's registry entry. Types, ranges and size are checked either way.
    """
    path = Path(directory) / CONFIG_NAME
    try:
        cfg = json.loads(validate.read_regular_file(path))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing (not a save_pretrained directory?)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e})") from e
    if not isinstance(cfg, dict) or not ("model_config" in cfg or "architecture" in cfg):
        raise CheckpointError(f"{path}: has neither 'model_config' nor 'architecture'")
    try:
        family = config_family(cfg)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if "model_config" not in cfg:
        cfg = {**cfg, "model_config": _timm_model_config(family, cfg, path)}
    cfg["family"] = family
    validate.model_config(family, cfg["model_config"], str(path))
    return cfg


def _timm_model_config(family: str, cfg: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Config fields for a timm hub-layout config.json: the architecture's, then model_args."""
    from vitjax import registry

    args = cfg.get("model_args") or {}
    if not isinstance(args, Mapping):
        raise CheckpointError(f"{path}: model_args is {type(args).__name__}, not an object")
    arch = registry.resolve(str(cfg["architecture"]))[1]
    fields = dict(registry.config_module(family).VARIANTS[arch])
    fields.update(args)
    if isinstance(cfg.get("num_classes"), int):
        fields["num_classes"] = cfg["num_classes"]
    return fields


def _written_by_vitjax(directory: Path) -> bool:
    """Whether the config.json / model.safetensors in directory are a pair vitjax wrote."""
    weights, config = directory / WEIGHTS_NAME, directory / CONFIG_NAME
    if weights.is_file():
        try:
            if LazySafetensors(weights).metadata.get("writer") == _METADATA["writer"]:
                return True
        except CheckpointError:
            pass
    if config.is_file():  # save_pretrained's layout, also from before the marker existed
        try:
            return "model_config" in json.loads(validate.read_regular_file(config))
        except (OSError, ValueError, TypeError):
            pass
    return False


def foreign_files(directory: str | os.PathLike) -> list[Path]:
    """Files a write into directory would replace that vitjax did not write (never replaced)."""
    directory = Path(directory)
    present = [directory / n for n in (CONFIG_NAME, WEIGHTS_NAME) if os.path.lexists(directory / n)]
    odd = [p for p in present if not _regular(p)]
    if odd or (present and not _written_by_vitjax(directory)):
        return odd or present
    return []


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:  # a dangling link
        return False


def _refuse_foreign(directory: Path, foreign: list[Path]) -> None:
    names = ", ".join(p.name for p in foreign)
    raise CheckpointError(
        f"{directory}: already holds {names}, which vitjax did not write; writing here would "
        "replace them. Choose another directory, or pass overwrite=True (CLIs: --overwrite) to "
        "replace just those files (nothing else in the directory is ever touched)"
    )


def _temp_path(directory: Path, name: str) -> Path:
    return directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_files(
    paths: Mapping[str, Path], config: dict[str, Any], state_dict: Mapping[str, np.ndarray]
) -> None:
    """Write model.safetensors and config.json to paths ({name: path}), synced to disk."""
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    save_file(tensors, str(paths[WEIGHTS_NAME]), metadata=_METADATA)
    with open(paths[CONFIG_NAME], "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    for p in paths.values():
        _fsync(p)


def install_files(
    files: Mapping[str, str | os.PathLike], directory: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Move files ({name: path}, on directory's filesystem) into directory, each atomically."""
    directory = Path(directory)
    foreign = [] if overwrite else foreign_files(directory)
    if foreign:
        _refuse_foreign(directory, foreign)
    for name in sorted(files, key=lambda n: n != WEIGHTS_NAME):  # weights first, config last
        os.replace(files[name], directory / name)
    return directory


def write_pretrained_dir(
    directory: str | os.PathLike,
    config: dict[str, Any],
    state_dict: Mapping[str, np.ndarray],
    overwrite: bool = False,
) -> Path:
    """Write config.json + model.safetensors; nothing else in directory is touched or deleted.

    A new directory appears whole or not at all. In an existing one each file is replaced
    atomically, and a failed write leaves the old files as they were. Files there that vitjax
    did not write are refused (named in the error) unless overwrite=True.
    """
    directory = Path(directory)
    if directory.is_dir():
        foreign = [] if overwrite else foreign_files(directory)
        if foreign:  # checked before the (long) write, and again just before replacing
            _refuse_foreign(directory, foreign)
        staged = {n: _temp_path(directory, n) for n in _OUTPUTS}
        try:
            _write_files(staged, config, state_dict)
            return install_files(staged, directory, overwrite)
        finally:
            for p in staged.values():  # only our temporaries (moved away when installed)
                p.unlink(missing_ok=True)
    if os.path.lexists(directory):
        raise CheckpointError(f"{directory}: exists and is not a directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(directory.parent, directory.name)
    tmp.mkdir()
    try:
        _write_files({n: tmp / n for n in _OUTPUTS}, config, state_dict)
        os.replace(tmp, directory)  # fails if another writer created a non-empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only the temporary directory made above
        raise
    return directory
