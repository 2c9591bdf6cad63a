"""Model folders: save and load them locally or through the Hugging Face Hub.

A model folder is Hugging Face style: ``config.json`` (our :class:`ModelConfig`),
``model.safetensors``, the tokenizer files and a ``README.md`` model card.  ``--weights``
accepts a local folder, the name of a shipped model (:mod:`remamber.hub.shipped`),
``owner/name``, ``owner/name@revision`` or ``hf://owner/name``, in that order of precedence;
Hub models go through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE`` and tokens apply).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from remamber import __version__
from remamber.hub.shipped import DEFAULT_MODEL, SHIPPED_MODELS, shipped_folder
from remamber.modeling.config import ModelConfig
from remamber.utils.errors import ConfigError, InputError, WeightsError
from remamber.utils.io import umask

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"  # the weights of an ONNX export (remamber.inference.onnx_predictor runs it)
CARD_NAME = "README.md"
TRAINING_NAME = "training.json"
HUB_PATTERNS = [
    CONFIG_NAME,
    WEIGHTS_NAME,
    CARD_NAME,
    TRAINING_NAME,
    "tokenizer*",
    "special_tokens_map.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "*.onnx",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_hub_spec(spec: str) -> tuple[str, str | None] | None:
    """``owner/name[@rev]`` or ``hf://owner/name[@rev]`` -> ``(repo_id, revision)``; else None."""
    explicit = spec.startswith("hf://")
    body = spec[5:] if explicit else spec
    repo_id, _, revision = body.partition("@")
    if _REPO_ID.match(repo_id) and (explicit or not repo_id.startswith(".")):
        return repo_id, revision or None
    if explicit:
        raise WeightsError(f"weights {spec!r}: expected hf://owner/name or hf://owner/name@revision")
    return None


def resolve_weights(spec: str | os.PathLike, **download_options) -> Path:
    """Turn a ``--weights`` value into a local model folder, downloading from the Hub if needed.

    Precedence: an existing local path, then a shipped model's name, then a Hub id.
    ``download_options`` (``cache_dir``, ``token``, ``force_download``, ``local_files_only``, and
    ``revision`` when the id names none) go to :func:`huggingface_hub.snapshot_download`.
    """
    text = str(spec)
    local = Path(text).expanduser()
    if not text.startswith("hf://") and local.exists():
        if not local.is_dir():
            raise WeightsError(
                f"weights {text!r}: not a folder (a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME})"
            )
        return local
    shipped = None if text.startswith("hf://") else shipped_folder(text)
    if shipped is not None:
        return shipped
    hub = parse_hub_spec(text)
    if hub is None:
        raise WeightsError(
            f"weights {text!r}: no such model folder, shipped model name ({', '.join(SHIPPED_MODELS)}) "
            "or Hub id (owner/name)"
        )
    return _download(*hub, **download_options)


def _download(repo_id: str, id_revision: str | None, revision: str | None = None, **options) -> Path:
    """Download (or find in the Hub cache) the model files of ``repo_id``; a revision named in the
    id (``owner/name@rev``) wins over a ``revision`` option."""
    from huggingface_hub import snapshot_download

    revision = id_revision or revision
    name = repo_id + (f"@{revision}" if revision else "")
    with _hub_errors(f"model {name}", revision, f"hf download {repo_id}", "a local folder"):
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS, **options))


@contextlib.contextmanager
def _hub_errors(what: str, revision: str | None, fetch: str, instead: str) -> Iterator[None]:
    """Turn huggingface_hub's errors inside the block into one WeightsError line about ``what``
    (``model owner/name``): ``fetch`` is the command that downloads it on a connected machine,
    ``instead`` what to pass in its place (``a local folder``)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except RepositoryNotFoundError:
        raise WeightsError(
            f"{what}: no such repository on the Hugging Face Hub (or it is private: run `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise WeightsError(f"{what}: the repository has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        offline = " and HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else " and the Hub could not be reached"
        raise WeightsError(
            f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}){offline}; "
            f"download it on a connected machine (`{fetch}`) or pass {instead}"
        ) from None
    except EntryNotFoundError:
        raise WeightsError(f"{what}: the repository has no such file") from None
    except (HfHubHTTPError, OSError) as e:
        raise WeightsError(f"{what}: download failed: {e}") from None


# ``owner/name[@revision]/path/in/repo`` (optionally after ``hf://``): one file of a Hub repository.
_HUB_FILE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w.-]+))?/(?P<filename>[^@]+)$")


def resolve_file(spec: str | os.PathLike, setting: str) -> Path:
    """A local file, or a file of a Hub repository (``owner/name[@revision]/path`` or
    ``hf://owner/name[@revision]/path``, through huggingface_hub's cache); a local path wins.
    ``setting`` names the setting that gave ``spec``, for the messages."""
    text = str(spec)
    local = Path(text).expanduser()
    if not text.startswith("hf://") and local.exists():
        if not local.is_file():
            raise InputError(f"`{setting}` {text}: not a file")
        return local
    found = _HUB_FILE.match(text.removeprefix("hf://"))
    if found is None:
        where = "a Hub file is hf://owner/name/path/to/file" if text.startswith("hf://") else "no such file"
        raise InputError(f"`{setting}` {text}: {where}")
    from huggingface_hub import hf_hub_download

    repo_id, revision, filename = found.group("repo", "revision", "filename")
    what = f"`{setting}` {text}"
    if not text.startswith("hf://"):  # it could have been meant as a local path
        what += f" (no such local file; as a Hub file: {filename} of {repo_id})"
    with _hub_errors(what, revision, f"hf download {repo_id} {filename}", "a local file"):
        return Path(hf_hub_download(repo_id, filename, revision=revision))


def read_config(folder: Path) -> ModelConfig:
    """The :class:`ModelConfig` of a model folder (clear errors when missing or invalid)."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise WeightsError(f"{folder} is not a model folder: {CONFIG_NAME} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    return ModelConfig.from_dict(data)


def _check_state(model_state: dict, state: dict, source: Path) -> None:
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    shapes = sorted(k for k in set(model_state) & set(state) if tuple(model_state[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise WeightsError(f"weights in {source} do not match its config: {'; '.join(parts)}")


def load_state(path: Path) -> dict:
    """Read a safetensors file, turning a missing or corrupt file into one clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise WeightsError(f"{path.parent} is not a model folder: {path.name} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e})") from None


def load_pretrained(spec: str | os.PathLike = DEFAULT_MODEL, device: str = "cpu"):
    """Load a :class:`ReMamber` (eval mode, tokenizer attached) from a folder, a shipped model's
    name or a Hub id; without ``spec``, the shipped default model."""
    from remamber.inference.tokens import folder_tokenizer
    from remamber.modeling.remamber import ReMamber

    folder = resolve_weights(spec)
    config = read_config(folder)
    state = load_state(folder / WEIGHTS_NAME)
    tokenizer = folder_tokenizer(folder)
    model = ReMamber(config, tokenizer=tokenizer)
    _check_state(model.state_dict(), state, folder)
    model.load_state_dict(state)
    return model.to(device).eval()


def save_pretrained(
    model,
    folder: str | os.PathLike,
    card: str | None = None,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write ``model`` as a model folder, atomically (a half-written folder never appears).

    ``extra_files`` maps file names to writers called with the path to write (e.g. the
    trainer's state in a checkpoint); they land in the folder in the same atomic swap.
    """
    with staged_folder(folder) as tmp:
        write_folder(model, tmp, card)
        for name, write in (extra_files or {}).items():
            write(tmp / name)
    return Path(folder)


def write_folder(model, folder: Path, card: str | None = None) -> None:
    """Write the files of a model folder into the existing ``folder``: weights, config, tokenizer
    and card (what :func:`save_pretrained` stages, and ``ReMamber._save_pretrained`` writes)."""
    from safetensors.torch import save_file

    if model.tokenizer is None:
        raise ConfigError("cannot save a model without a tokenizer: a model folder must rebuild its text input")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "remamber_version": __version__})
    (folder / WEIGHTS_NAME).chmod(0o666 & ~umask())  # safetensors creates it 0600
    write_model_files(model, folder, card)


def write_model_files(model, folder: Path, card: str | None = None) -> None:
    """Write what every model folder has besides its weights: config, tokenizer and card."""
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    model.tokenizer.save_pretrained(str(folder))
    from remamber.hub.card import model_card

    (folder / CARD_NAME).write_text(card if card is not None else model_card(model.config), encoding="utf-8")


MODEL_FILES = (WEIGHTS_NAME, ONNX_NAME)  # a model folder has our config.json and one of these
# What an exported model folder holds besides MODEL_FILES (the tokenizer's files depend on its kind).
EXPORT_FILES = frozenset(
    {
        CONFIG_NAME,
        CARD_NAME,
        TRAINING_NAME,
        *MODEL_FILES,
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "spiece.model",
    }
)


def _is_model_folder(folder: Path) -> bool:
    """Whether ``folder`` holds one of our configs and a model file."""
    if not any((folder / f).is_file() for f in MODEL_FILES):
        return False
    try:
        read_config(folder)
    except (ConfigError, WeightsError):
        return False
    return True


def check_replaceable(folder: str | os.PathLike, model_file: str | None = None) -> Path:
    """``folder`` as an absolute path, if writing a model folder there may replace what it holds:
    nothing, an empty folder, or one of our model folders. Anything else (a file, a folder of other
    files) is an InputError: replacing it would delete the user's files. With ``model_file`` (what
    an export writes: ``model.safetensors`` or ``model.onnx``) the model folder must also be of
    that kind and hold nothing an export does not write (a training checkpoint's state, notes)."""
    folder = Path(folder).resolve()
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise InputError(f"{folder} is a file; refusing to replace it: choose a new or empty `out`")
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return folder
    refuse = f"refusing to replace {folder}: choose a new or empty `out`"
    if not _is_model_folder(folder):
        raise InputError(
            f"{folder} is not a remamber model folder ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}); {refuse}"
        )
    if model_file is not None:
        if not (folder / model_file).is_file():
            other = next(f for f in MODEL_FILES if (folder / f).is_file())
            raise InputError(f"{folder} holds a model of another kind ({other}, not {model_file}); {refuse}")
        extra = [name for name in entries if name not in EXPORT_FILES]
        if extra:
            raise InputError(f"{folder} also holds {', '.join(extra[:3])}, which an export does not write; {refuse}")
    return folder


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``folder``; on success it replaces ``folder`` at once
    (a half-written folder never appears under the final name). ``folder`` must pass
    :func:`check_replaceable`."""
    folder = check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700
    try:
        yield tmp
        _swap_into_place(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_into_place(tmp: Path, folder: Path) -> None:
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
