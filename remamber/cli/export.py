"""``remamber export``: a Hub-ready model folder (and its upload), or an ONNX folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from remamber.utils.errors import InputError

HELP = """Export a model folder for others: --format hub (clean folder + model card, optionally pushed to the Hugging Face Hub) or --format onnx (model.onnx for onnxruntime); or convert an official ReMamber checkpoint (--from-official); or start a model from VMamba's ImageNet weights (--backbone-weights).

hub: OUT gets config.json, model.safetensors, the tokenizer files, training.json (when the source is a `remamber train` checkpoint) and a README.md model card with usage, training data and settings, and the evaluation tables of any --metrics files (`remamber eval --json > m.json`). --push-to-hub owner/name uploads OUT (HF_TOKEN or `hf auth login`); with --dry-run it only lists what would be uploaded.

--from-official CKPT.pth: convert a checkpoint released by the ReMamber authors (ReMamber_Conv or ReMamber_Mamba, told apart by the file's tensor names; --variant conv|mamba insists on one) into a model folder at OUT (hub format; no WEIGHTS argument). It is read weights-only (no code in the file runs), the architecture is read off the tensor shapes, and every tensor must fit. The tokenizer defaults to openai/clip-vit-large-patch14 from the Hugging Face cache; --tokenizer names another (Hub id or folder).

--backbone-weights FILE: a model folder at OUT (hub format; no WEIGHTS argument) whose visual backbone comes from a VMamba ImageNet-1K classification checkpoint (vssm_tiny_0230 -> --preset small, vssm_small_0229 -> medium, vssm_base_0229 -> base; default: the preset the file fits), with a random Twister and decoder and the preset's pretrained text encoder (from the Hugging Face cache): a starting point to inspect or fine-tune (`remamber train --init OUT`). FILE is a local path or a Hub file (owner/name/file.pth or hf://owner/name/file.pth). It is read without running code from it; --backbone-key picks its 'model' or 'model_ema' weights (auto: 'model', what VMamba and the official ReMamber training load; 'model_ema' when there is no 'model'). It prints what was loaded, dropped (the ImageNet classifier) and left new.

onnx: OUT gets model.onnx (inputs image (n, 3, S, S) float32, input_ids and attention_mask (n, T) int64; output logits (n, 1, S, S), and presence_logits (n,) for a model with a presence head; dynamic batch), config.json, the tokenizer files and a card. The selective scan is exported loop-free (chunked segment sums), so the graph stays small. --verify runs onnxruntime on sample inputs and reports the largest difference to PyTorch (of each output). `remamber segment --weights OUT` then runs it with onnxruntime.

Examples:

  remamber export runs/tiny/checkpoints/best --format hub --out export/my-model --metrics test.json

  remamber export export/my-model --format hub --out export/my-model --push-to-hub me/remamber-tiny --dry-run

  remamber export --format onnx --out export/tiny-onnx --verify      (the shipped default model)

  remamber export --from-official ReMamber_Conv.pth --out export/remamber-conv-official

  remamber export --backbone-weights vssm_base_0229_ckpt_epoch_237.pth --preset base --out models/base-imagenet
  remamber export --from-official ReMamber_Mamba.pth --variant mamba --out export/remamber-mamba-official
"""

FORMATS = ("hub", "onnx")
VARIANTS = ("conv", "mamba")


def export(
    weights: str | None = typer.Argument(
        None,
        metavar="WEIGHTS",
        help="Model folder or Hub id to export. Default: the shipped default model.",
        show_default=False,
    ),
    fmt: str = typer.Option("hub", "--format", "-f", metavar="NAME", help="hub or onnx."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        metavar="FOLDER",
        help="Output folder: new, empty, or a model folder of the same format, which is replaced atomically.",
        show_default=False,
    ),
    metrics: list[Path] = typer.Option(
        [],
        "--metrics",
        metavar="FILE",
        help="`remamber eval --json` output to show in the model card (repeatable).",
        show_default=False,
    ),
    notes: Path | None = typer.Option(
        None,
        "--notes",
        metavar="FILE",
        help="Markdown file appended to the model card (limits, intended use, ...).",
        show_default=False,
    ),
    push_to_hub: str | None = typer.Option(
        None,
        "--push-to-hub",
        metavar="REPO",
        help="Upload the exported folder to this Hub repository (owner/name).",
        show_default=False,
    ),
    private: bool = typer.Option(False, "--private", help="Create the Hub repository as private."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="With --push-to-hub: list what would be uploaded, send nothing."
    ),
    verify: bool = typer.Option(False, "--verify", help="onnx: compare onnxruntime with PyTorch on sample inputs."),
    opset: int = typer.Option(17, "--opset", metavar="N", help="onnx: ONNX opset version, 14 to 20."),
    json_out: bool = typer.Option(
        False, "--json", help="Print one JSON object: format, out, files, bytes, and the verify/push results."
    ),
    from_official: Path | None = typer.Option(
        None,
        "--from-official",
        metavar="FILE",
        help="Convert this official ReMamber .pth checkpoint into a model folder at --out.",
        show_default=False,
    ),
    variant: str | None = typer.Option(
        None,
        "--variant",
        metavar="NAME",
        help="--from-official: the official model the file must be, conv (ReMamber_Conv) or mamba (ReMamber_Mamba). "
        "Default: read off the file.",
        show_default=False,
    ),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        metavar="MODEL",
        help="--from-official: tokenizer (Hub id or folder). Default: openai/clip-vit-large-patch14.",
        show_default=False,
    ),
    backbone_weights: str | None = typer.Option(
        None,
        "--backbone-weights",
        metavar="PATH_OR_HUB_FILE",
        help="Start a model folder at --out from this VMamba ImageNet checkpoint (local path or owner/name/file).",
        show_default=False,
    ),
    backbone_key: str = typer.Option(
        "auto", "--backbone-key", metavar="KEY", help="--backbone-weights: auto, model or model_ema."
    ),
    preset: str | None = typer.Option(
        None,
        "--preset",
        metavar="NAME",
        help="--backbone-weights: the model preset. Default: the one whose backbone the file fits.",
        show_default=False,
    ),
) -> None:
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: choose hub or onnx")
    if (dry_run or private) and push_to_hub is None:
        raise InputError("--dry-run and --private go with --push-to-hub owner/name")
    if variant is not None and variant not in VARIANTS:
        raise InputError(f"--variant {variant!r}: choose conv or mamba")
    if from_official is None and (variant is not None or tokenizer is not None):
        raise InputError("--variant and --tokenizer go with --from-official CKPT.pth")
    if backbone_weights is None and (backbone_key != "auto" or preset is not None):
        raise InputError("--backbone-key and --preset go with --backbone-weights FILE")
    if backbone_weights is not None and (weights is not None or from_official is not None):
        raise InputError("give one of WEIGHTS, --from-official FILE or --backbone-weights FILE")
    if backbone_weights is not None and fmt != "hub":
        raise InputError(
            "--backbone-weights writes a model folder (--format hub); export that folder with --format onnx afterwards"
        )
    if fmt == "onnx" and from_official is None and (metrics or notes is not None):
        raise InputError("--metrics and --notes go with --format hub")
    from remamber.cli.weights import weights_or_default
    from remamber.hub.folders import ONNX_NAME, WEIGHTS_NAME, check_replaceable
    from remamber.hub.publish import read_metrics, read_notes

    # before any work: --out may only be new, empty, or a model folder of the same kind and files
    out = check_replaceable(out, ONNX_NAME if fmt == "onnx" else WEIGHTS_NAME)
    if fmt == "onnx":
        from remamber.export.onnx import check_opset

        check_opset(opset)

    card_metrics, card_notes = read_metrics(list(metrics)), read_notes(notes)
    report_lines: list[str] = []
    if backbone_weights is not None:
        from remamber.hub.vmamba import export_from_vmamba

        folder, report = export_from_vmamba(
            backbone_weights, out, preset=preset, key=backbone_key, metrics=card_metrics, notes=card_notes
        )
        result: dict = {"format": fmt, "source": backbone_weights, "backbone": report.to_dict()}
        report_lines = report.lines()
    elif from_official is not None:
        if weights is not None:
            raise InputError("give either WEIGHTS (a model folder to export) or --from-official CKPT.pth, not both")
        if fmt != "hub":
            raise InputError(
                "--from-official writes a model folder (--format hub); export that folder with --format onnx afterwards"
            )
        from remamber.export.official import convert_official
        from remamber.hub.folders import read_config

        folder = convert_official(
            from_official, variant, out, tokenizer=tokenizer, metrics=card_metrics, notes=card_notes
        )
        result: dict = {"format": fmt, "source": str(from_official), "variant": read_config(folder).decoder}
    else:
        source = weights_or_default(weights)
        result = {"format": fmt, "source": source}
        folder = _export(source, fmt, out, card_metrics, card_notes, opset, verify, result)
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    result.update(out=str(folder), files=files, bytes=sum((folder / f).stat().st_size for f in files))
    if push_to_hub is not None:
        from remamber.hub.publish import push_to_hub as push

        upload = push(folder, push_to_hub, private=private, dry_run=dry_run)
        result["push"] = {
            "repo": upload.repo_id,
            "files": upload.files,
            "bytes": upload.bytes,
            "dry_run": dry_run,
            "url": upload.url,
        }
    if json_out:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    _print(result)
    for line in report_lines:
        typer.echo(line)


def _export(
    source: str, fmt: str, out: Path, metrics: list[dict], notes: str, opset: int, verify: bool, result: dict
) -> Path:
    """Export a model folder as hub or onnx; onnx adds its verification report to ``result``."""
    if fmt == "hub":
        from remamber.hub.publish import export_hub

        folder = export_hub(source, out, metrics, notes)
    else:
        from remamber.export.onnx import export_onnx

        folder, report = export_onnx(source, out, opset=opset, verify=verify)
        result.update(report)
    return folder


def _print(result: dict) -> None:
    typer.echo(
        f"wrote {result['out']} ({result['format']}): {len(result['files'])} files, {result['bytes'] / 1e6:.2f} MB"
    )
    if "max_abs_diff" in result:
        typer.echo(
            f"verify: onnxruntime vs PyTorch max |diff| {result['max_abs_diff']:.2e} on logits up to "
            f"{result['max_abs_logit']:.3g} in size ({result['max_rel_diff']:.1e} of it; {result['verify_samples']} samples)"
        )
    if "presence_max_abs_diff" in result:
        typer.echo(
            f"verify: presence logits max |diff| {result['presence_max_abs_diff']:.2e} on logits up to "
            f"{result['presence_max_abs_logit']:.3g} in size ({result['presence_max_rel_diff']:.1e} of it)"
        )
    if "onnx_nodes" in result:
        typer.echo(f"graph: {result['onnx_nodes']} nodes, model.onnx {result['onnx_bytes'] / 1e6:.2f} MB")
    push = result.get("push")
    if push:
        verb = "would upload" if push["dry_run"] else "uploaded"
        typer.echo(f"{verb} to {push['repo']}: {', '.join(push['files'])} ({push['bytes'] / 1e6:.2f} MB)")
        if push["url"]:
            typer.echo(push["url"])
