"""Hub-ready model folders and their upload with huggingface_hub."""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path

from remamber.hub.card import metrics_table, model_card, training_section
from remamber.hub.folders import (
    CONFIG_NAME,
    HUB_PATTERNS,
    TRAINING_NAME,
    load_pretrained,
    resolve_weights,
    save_pretrained,
)
from remamber.utils.errors import EXIT_FAILURE, InputError, WeightsError, first_line
from remamber.utils.io import write_json


def read_metrics(paths: list[Path]) -> list[dict]:
    """``remamber eval --json`` outputs (one JSON object per file; a ``--split all`` object gives
    its result per split)."""
    results = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"metrics file {path}: not a readable JSON file ({e})") from None
        found = data.get("results") if isinstance(data, dict) and "results" in data else [data]
        if not isinstance(found, list) or not all(
            isinstance(r, dict) and {"samples", "mIoU", "oIoU"} <= set(r) for r in found
        ):
            raise InputError(f"metrics file {path}: not the output of `remamber eval --json`")
        results.extend(found)
    return results


def read_notes(path: Path | None) -> str:
    """The markdown of ``--notes`` ("" when not given)."""
    if path is None:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"notes file {path}: cannot read it ({e})") from None


def export_card(config, first: str, metrics: list[dict], notes: str = "") -> str:
    """The model card: usage, model, ``first`` (where the weights come from: training or source,
    markdown, may be empty), evaluation (when given), notes."""
    parts = [first] if first else []
    if metrics:
        parts.append(
            "## Evaluation\n\nWith `remamber eval` (percent; oIoU = sum I / sum U):\n\n" + metrics_table(metrics) + "\n"
        )
    if notes.strip():
        parts.append(notes.strip() + "\n")
    return model_card(config, "\n".join(parts))


def export_hub(weights: str, out: Path, metrics: list[dict] = (), notes: str = "") -> Path:
    """Write a clean model folder (config, safetensors, tokenizer, card, training record) to ``out``;
    ``metrics`` (``remamber eval --json`` objects) and ``notes`` (markdown) go into the card."""
    source = resolve_weights(weights)
    model = load_pretrained(source)
    training = None
    if (source / TRAINING_NAME).is_file():
        training = json.loads((source / TRAINING_NAME).read_text(encoding="utf-8"))
    card = export_card(model.config, training_section(training) if training else "", list(metrics), notes)
    extra = {TRAINING_NAME: lambda p: write_json(p, training)} if training is not None else {}
    return save_pretrained(model, out, card=card, extra_files=extra)


@dataclass
class Upload:
    """What a push sends: files (relative paths) and their total size in bytes."""

    repo_id: str
    files: list[str]
    bytes: int
    url: str | None = None  # the commit URL after a real push


def upload_plan(folder: Path, repo_id: str) -> Upload:
    """The files of ``folder`` that a push uploads (the Hub patterns; no trainer state)."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise WeightsError(f"{folder} is not a model folder (no {CONFIG_NAME})")
    files = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in HUB_PATTERNS)
    )
    return Upload(repo_id, files, sum((folder / f).stat().st_size for f in files))


def push_to_hub(
    folder: Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str = "Upload remamber model",
) -> Upload:
    """Upload a model folder to ``repo_id`` (created if needed); ``dry_run`` only lists the files.
    Without ``token``, huggingface_hub's own (``HF_TOKEN``, or the one ``hf auth login`` saved)."""
    plan = upload_plan(folder, repo_id)
    if dry_run:
        return plan
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            allow_patterns=plan.files,
            commit_message=commit_message,
        )
    except HfHubHTTPError as e:
        raise WeightsError(f"push to {repo_id} failed: {first_line(e)}", exit_code=EXIT_FAILURE) from None
    except Exception as e:  # no network: httpx / requests connection errors
        raise WeightsError(
            f"push to {repo_id} failed: cannot reach the Hub ({type(e).__name__}: {e})", exit_code=EXIT_FAILURE
        ) from None
    plan.url = str(getattr(info, "commit_url", info))
    return plan
