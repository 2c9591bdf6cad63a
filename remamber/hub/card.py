"""Model cards: the README.md of a model folder, with its settings, training and evaluation tables."""

from __future__ import annotations

from remamber.modeling.config import ModelConfig


def model_card(config: ModelConfig, body: str = "") -> str:
    """A Hugging Face model card for a remamber model folder; ``body`` (markdown) is appended."""
    return (
        "---\nlibrary_name: remamber\ntags:\n- referring-image-segmentation\n- mamba\n- remamber\n---\n\n"
        f"# ReMamber ({config.preset})\n\n"
        "Referring image segmentation with ReMamber (VMamba + Mamba Twister): give an image and a phrase, "
        "get the mask of the object it names. Use it with [remamber](https://pypi.org/project/remamber/):\n\n"
        '```bash\nremamber segment image.jpg "man in red shirt" --weights <this folder or owner/name>\n'
        "remamber eval --weights <this folder or owner/name> --data <prepared dataset> --split test\n```\n\n"
        "```python\nfrom PIL import Image\nfrom remamber import Predictor, load_pretrained\n\n"
        'predictor = Predictor(load_pretrained("<this folder or owner/name>"))\n'
        'mask = predictor.predict(Image.open("image.jpg"), "man in red shirt").mask  # (H, W) bool\n```\n\n'
        "## Model\n\n"
        f"- input size: {config.image_size}x{config.image_size}\n- text encoder: {config.text_encoder}\n"
        f"- stage dims {config.dims}, depths {config.depths}, Twister depths {config.twister_depths}, "
        f"d_state {config.d_state}\n"
        + _variant_line(config)
        + _presence_line(config)
        + (f"\n{body.strip()}\n" if body else "")
    )


def _variant_line(config: ModelConfig) -> str:
    """``- variant: ...`` naming the settings that differ from the default model (empty if none)."""
    default = ModelConfig()
    changed = [
        f"{k} {getattr(config, k)}"
        for k in ("fusion", "scan", "interaction", "backbone", "decoder")
        if getattr(config, k) != getattr(default, k)
    ]
    if config.fusion == "hmnet":
        changed.append(f"recap_every {config.recap_every}")
    if config.decoder == "mamba":
        changed.append(f"decoder_depths {config.decoder_depths}")
    return f"- variant: {', '.join(changed)}\n" if changed else ""


def _presence_line(config: ModelConfig) -> str:
    """``- presence head: ...`` for a model that has one (empty otherwise)."""
    if not config.presence_head:
        return ""
    return (
        "- presence head: each result also says how likely it is that the phrase names anything in the image "
        "(`presence`); below the presence threshold (0.5) the mask is empty and `segment` says not found\n"
    )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def metrics_table(results: list[dict]) -> str:
    """A markdown table of ``remamber eval --json`` objects (one row per result, per target kind of a
    generalized split and per type; gIoU and cIoU columns when a split is generalized)."""
    cols = ["mIoU", "oIoU", "P@50", "P@70", "P@90"] + (["gIoU", "cIoU"] if any("gIoU" in r for r in results) else [])
    lines = ["| data | split | samples | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
    for r in results:
        groups = [*r.get("by_kind", {}).items(), *r.get("by_type", {}).items()]
        rows = [(r.get("split", "?"), r)] + [(f"{r.get('split', '?')}: {t}", v) for t, v in groups]
        for name, m in rows:
            vals = " | ".join(_pct(m.get(c)) for c in cols)
            lines.append(f"| {r.get('dataset', '?')} | {name} | {m['samples']} | {vals} |")
    return "\n".join(lines)


def training_section(training: dict) -> str:
    """Markdown for a ``training.json`` record (written by ``remamber train`` in checkpoints)."""
    settings = training.get("settings", {})
    keys = (
        "preset",
        "init",
        "recipe",
        "epochs",
        "max_steps",
        "batch_size",
        "lr",
        "backbone_lr",
        "text_lr",
        "min_lr",
        "warmup_steps",
        "weight_decay",
        "ema",
        "seed",
    )
    shown = ", ".join(f"{k}={settings[k]}" for k in keys if settings.get(k) not in (None, ""))
    text = (
        f"## Training\n\nTrained with `remamber train` on {training.get('dataset', '?')} "
        f"({training.get('train_samples', '?')} training samples) for {training.get('step', '?')} steps "
        f"({shown}).\n"
    )
    val = training.get("val")
    if val:
        text += (
            f"\nValidation at step {val.get('step')} (percent):\n\n"
            + metrics_table([{**val, "dataset": training.get("dataset", "?")}])
            + "\n"
        )
    return text
