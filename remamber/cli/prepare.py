"""``remamber prepare``: make a prepared dataset (RefCOCO family and gRefCOCO from REFER files, or shapes).

Thin: options, help and printing; the work is in :mod:`remamber.data.prepare` and
:mod:`remamber.data.shapes`, imported inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click
import typer

from remamber.cli.options import Command, Group
from remamber.data.catalog import (
    COCO_TRAIN2014_URL,
    GREFCOCO_URL,
    KNOWN_DATASETS,
    LAVT_REFER_URL,
    MIX_DEFAULT_SOURCES,
    MIX_ID_STRIDE,
    MIX_NAME,
    MIX_SOURCE_CODES,
    REFER_ARCHIVE_URL,
    REFER_DATA_URL,
    REFER_PROJECT_URL,
    SHAPES_DEFAULT_IMAGES,
    SHAPES_DEFAULT_MULTI_TARGET_SHARE,
    SHAPES_DEFAULT_NO_TARGET_SHARE,
    SHAPES_DEFAULT_SEED,
    SHAPES_DEFAULT_SIZE,
    SHAPES_NAME,
    check_split_by,
    default_out,
)
from remamber.utils import paths
from remamber.utils.errors import InputError

_HOME = f"${paths.DATA_HOME_ENV} (now {paths.data_home()})"

SOURCES_HELP = f"""Where RefCOCO and gRefCOCO files come from:

* REFER annotations -- the refer project ({REFER_PROJECT_URL}), as the LAVT instructions say ({LAVT_REFER_URL}): unzip {", ".join(d.url for d in KNOWN_DATASETS.values() if not d.generalized)}; each holds instances.json and refs(unc).p / refs(google).p / refs(umd).p. These are the web archive's copies ({REFER_ARCHIVE_URL}) of the zips first published at {REFER_DATA_URL}/, a host that has been down since 2022.

* gRefCOCO annotations -- the release linked from {GREFCOCO_URL}: grefs(unc).json and instances.json.

* COCO train2014 images -- from cocodataset.org: {COCO_TRAIN2014_URL}.
"""

LAYOUT_HELP = f"""Expected layout in the data home, {_HOME}; every path flag overrides its part:

* refer/refcoco/  instances.json, refs(unc).p, refs(google).p

* refer/refcoco+/  instances.json, refs(unc).p

* refer/refcocog/  instances.json, refs(umd).p, refs(google).p

* refer/grefcoco/  instances.json, grefs(unc).json

* coco/train2014/  COCO_train2014_000000000009.jpg, ...

* datasets/<name>/  the output: dataset.json (written last) and <split>.jsonl, one record per sentence

With the files in place, `remamber prepare refcoco` needs no flag. A second run with the same inputs does nothing.
"""

PREPARE_HELP = f"""Make a prepared dataset for training and evaluation.

refcoco, refcoco+ and refcocog convert REFER annotations + COCO train2014 images; refcoco-mix builds one leak-free training set from the three; grefcoco converts gRefCOCO (generalized: a sentence names zero, one or several objects) + the same images; shapes generates a synthetic dataset with referring expressions.

{SOURCES_HELP}
{LAYOUT_HELP}"""


class _DatasetGroup(Group):
    """The ``prepare`` group: an unknown dataset name is a one-line input error."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            known = ", ".join(self.list_commands(ctx))
            raise InputError(f"unknown dataset {name!r}; choose from: {known}")
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_DatasetGroup,
    help=PREPARE_HELP,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


# --------------------------------------------------------------------------- output


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[Iterable, int, str], Iterable]]:
    """A ``track(items, total, description)`` with rich progress bars on stderr (terminals only)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:

        def track(items: Iterable, total: int, description: str) -> Iterator:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)

        yield track


def _report(result: Any, json_out: bool) -> None:
    """Print what was done: one JSON object with --json, else a few lines."""
    if json_out:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    title = f"{result.name} ({result.split_by})"
    if result.up_to_date:
        typer.echo(f"{title} in {result.out} is up to date: nothing to do (--force rebuilds it)")
        return
    typer.echo(f"{title} prepared in {result.out}")
    for split, s in result.splits.items():
        counts = f"{s['samples']:>8} samples {s['refs']:>8} refs {s['images']:>7} images"
        kinds = s.get("target_kinds")
        if kinds:
            counts += f" ({kinds['none']} name no object, {kinds['multi']} several)"
        typer.echo(f"  {split:<8} {counts}")
    if result.missing_images:
        typer.echo(f"  left out {result.skipped_samples} samples of {result.missing_images} missing images")


# --------------------------------------------------------------------------- REFER datasets

_JSON_HELP = "Print the result as one JSON object on stdout (status, out, splits with counts)."
_FORCE_HELP = "Rebuild even when the output is up to date."


def _download_option(hidden: bool = False) -> Any:
    """``--download``; ``hidden`` where nothing can be fetched (gRefCOCO has no archived zip: its
    refusal still names where to get the files)."""
    return typer.Option(
        False,
        "--download",
        hidden=hidden,
        help="First download the REFER zip of each dataset whose files are missing (the web archive's copy, "
        "or --refer-url) and unpack it into --refer-root; a cut download resumes on the next run. "
        "COCO images are not downloaded.",
    )


def _refer_url_option(hidden: bool = False) -> Any:
    return typer.Option(
        None,
        "--refer-url",
        hidden=hidden,
        metavar="URL",
        help="With --download: fetch <URL>/<name>.zip (a mirror) instead of the web archive's snapshot.",
        show_default=False,
    )


def _fetch_missing(datasets: list[tuple[str, str]], refer_root: Path, download: bool, refer_url: str | None) -> None:
    """With --download, fetch the REFER files of each (dataset, split_by) that lacks them."""
    if refer_url is not None and not download:
        raise InputError("--refer-url says where --download fetches from; add --download")
    if not download:
        return
    from remamber.data.download import fetch_refer
    from remamber.data.refer import ReferFiles

    for dataset, split_by in datasets:
        check_split_by(dataset, split_by)
    with _progress() as track:
        for dataset, split_by in datasets:
            if ReferFiles(refer_root, dataset, split_by).missing():
                written = fetch_refer(dataset, refer_root, refer_url, track)
                names = ", ".join(path.name for path in written)
                typer.echo(f"downloaded {dataset}: {names} in {refer_root / dataset}", err=True)


def _run_refer(
    dataset: str,
    refer_root: Path | None,
    images_root: Path | None,
    out: Path | None,
    split_by: str | None,
    limit: int | None,
    skip_missing: bool,
    force: bool,
    json_out: bool,
) -> None:
    from remamber.data.prepare import prepare_refer

    split_by = split_by or KNOWN_DATASETS[dataset].default_split_by
    with _progress() as track:
        result = prepare_refer(
            refer_root or paths.refer_root(),
            dataset,
            images_root or paths.coco_images(),
            out or default_out(dataset, split_by),
            split_by,
            limit=limit,
            skip_missing=skip_missing,
            force=force,
            track=track,
        )
    _report(result, json_out)


def _refer_root_option(holds: str) -> Any:
    """``--refer-root``: the folder of the REFER files (``holds`` says which)."""
    return typer.Option(
        None, "--refer-root", metavar="FOLDER", help=f"Folder holding {holds}.", show_default=f"{paths.refer_root()}"
    )


def _coco_images_option() -> Any:
    """``--coco-images``: the folder of the COCO train2014 images."""
    return typer.Option(
        None,
        "--coco-images",
        metavar="FOLDER",
        help="Folder of the COCO train2014 images (COCO_train2014_*.jpg).",
        show_default=f"{paths.coco_images()}",
    )


def _refer_command(dataset: str) -> Callable[..., None]:
    """The command for one REFER dataset; its options show that dataset's defaults."""
    known = KNOWN_DATASETS[dataset]

    def command(
        refer_root: Path | None = _refer_root_option(
            f"{dataset}/instances.json and {dataset}/{known.refs_file('<split-by>')}"
        ),
        images_root: Path | None = _coco_images_option(),
        out: Path | None = typer.Option(
            None,
            "--out",
            "-o",
            metavar="FOLDER",
            help="Output folder (a non-default --split-by adds _<split-by> to the default name).",
            show_default=f"{default_out(dataset)}",
        ),
        split_by: str | None = typer.Option(
            None,
            "--split-by",
            metavar="NAME",
            help=f"Partition of {dataset}: {', '.join(known.split_bys)}.",
            show_default=known.default_split_by,
        ),
        limit: int | None = typer.Option(
            None,
            "--limit",
            metavar="N",
            help="Keep only the first N refs of each split (quick experiments).",
            show_default="all",
        ),
        skip_missing: bool = typer.Option(
            False,
            "--skip-missing",
            help="Leave out samples whose image is missing instead of failing.",
        ),
        force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
        json_out: bool = typer.Option(False, "--json", help=_JSON_HELP),
        download: bool = _download_option(hidden=known.generalized),
        refer_url: str | None = _refer_url_option(hidden=known.generalized),
    ) -> None:
        refer_root = refer_root or paths.refer_root()
        _fetch_missing([(dataset, split_by or known.default_split_by)], refer_root, download, refer_url)
        _run_refer(dataset, refer_root, images_root, out, split_by, limit, skip_missing, force, json_out)

    command.__doc__ = _refer_help(dataset)
    return command


def _refer_help(dataset: str) -> str:
    known = KNOWN_DATASETS[dataset]
    refs = f"<refer-root>/{dataset}/{known.refs_file('<split-by>')}"
    if known.generalized:
        what = "gRefCOCO annotations (generalized referring expressions)"
        reads = (
            f"Reads {refs} (JSON) and instances.json. A sentence names zero, one or several objects: "
            "each record carries ann_ids (empty for none), no_target and the union of the named "
            "objects' masks (all zeros for none; crowd regions left out, as GRES does)"
        )
    else:
        what = "REFER annotations"
        reads = f"Reads {refs} (a pickle of plain data; anything else is refused) and instances.json"
    return (
        f"Prepare {dataset} from {what} and COCO train2014 images.\n\n"
        f"{reads}; masks come from polygons or RLE. Every missing input and every missing image "
        f"is reported before any work.\n\n{SOURCES_HELP}\n{LAYOUT_HELP}"
    )


for _name in KNOWN_DATASETS:
    app.command(_name, cls=Command)(_refer_command(_name))


# --------------------------------------------------------------------------- the mixed training set

_MIX_DEFAULT = ", ".join(f"{name}:{split_by}" for name, split_by in MIX_DEFAULT_SOURCES)


def _report_mix(result: Any, json_out: bool) -> None:
    """Print what ``prepare refcoco-mix`` did: per source, what went into train and what was removed."""
    if json_out or result.up_to_date:
        _report(result, json_out)
        return
    typer.echo(f"{result.name} prepared in {result.out}")
    typer.echo(
        f"  {'':<16} {'train samples':>13} {'refs':>7} {'images':>7}   {'removed samples':>15} {'refs':>7} {'images':>7}"
    )
    train = result.splits["train"]
    for name, source in result.sources.items():
        kept, gone = train["by_source"][name], source["removed"]
        label = f"{name} ({source['split_by']})"
        typer.echo(
            f"  {label:<16} {kept['samples']:>13} {kept['refs']:>7} {kept['images']:>7}"
            f"   {gone['samples']:>15} {gone['refs']:>7} {gone['images']:>7}"
        )
    gone = result.removed
    typer.echo(
        f"  {'train (all)':<16} {train['samples']:>13} {train['refs']:>7} {train['images']:>7}"
        f"   {gone['samples']:>15} {gone['refs']:>7} {gone['images']:>7}"
    )
    val = result.splits["val"]
    typer.echo(f"  {'val (all)':<16} {val['samples']:>13} {val['refs']:>7} {val['images']:>7}")
    if result.missing_images:
        typer.echo(f"  left out {result.skipped_samples} samples of {result.missing_images} missing images")
    names = ", ".join(result.sources)
    typer.echo(
        f"  removed: train images that appear in a val/test split of {names}; evaluate on each dataset's "
        "own folder (remamber eval --dataset NAME --split SPLIT)"
    )


_MIX_HELP = f"""Build one training set from the train splits of RefCOCO, RefCOCO+ and G-Ref, leak-free.

The authors' released checkpoints are trained on the three together. RefCOCO and RefCOCO+ share their images and G-Ref's overlap both, so every train image that appears in a val or test split of any of the sources is removed; the counts removed per source are printed (and in --json and dataset.json).

The output is a training set: train (the cleaned union) and val (the sources' val splits together, to pick checkpoints while training: remamber train --dataset {MIX_NAME}). Evaluate on the standard splits of each dataset's own folder (remamber prepare refcoco, ...; remamber eval --dataset refcoco --split testA).

Each record names its source; sent_id and ref_id, which collide between the datasets, become code * {MIX_ID_STRIDE} + id ({", ".join(f"{name} {code}" for name, code in MIX_SOURCE_CODES.items())}). The same inputs give the same bytes.

{SOURCES_HELP}
{LAYOUT_HELP}"""


@app.command(MIX_NAME, cls=Command, help=_MIX_HELP)
def refcoco_mix(
    sources: list[str] | None = typer.Option(
        None,
        "--source",
        metavar="NAME[:SPLIT-BY]",
        help="A dataset of the mix, with its partition (repeat the option; giving any replaces the default "
        f"list): {', '.join(MIX_SOURCE_CODES)}.",
        show_default=_MIX_DEFAULT,
    ),
    refer_root: Path | None = _refer_root_option("<name>/instances.json and <name>/refs(<split-by>).p of every source"),
    images_root: Path | None = _coco_images_option(),
    out: Path | None = typer.Option(
        None, "--out", "-o", metavar="FOLDER", help="Output folder.", show_default=f"{default_out(MIX_NAME)}"
    ),
    limit: int | None = typer.Option(
        None,
        "--limit",
        metavar="N",
        help="Keep only the first N refs of each source's train and val (the removal still sees every eval split).",
        show_default="all",
    ),
    skip_missing: bool = typer.Option(
        False, "--skip-missing", help="Leave out samples whose image is missing instead of failing."
    ),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print the result as one JSON object on stdout (status, out, per-source removed counts, splits).",
    ),
    download: bool = _download_option(),
    refer_url: str | None = _refer_url_option(),
) -> None:
    from remamber.data.mix import parse_sources, prepare_mix

    refer_root = refer_root or paths.refer_root()
    chosen = [(s.dataset, s.split_by) for s in parse_sources(sources)]
    _fetch_missing(chosen, refer_root, download, refer_url)
    with _progress() as track:
        result = prepare_mix(
            refer_root,
            images_root or paths.coco_images(),
            out or default_out(MIX_NAME),
            sources,
            limit=limit,
            skip_missing=skip_missing,
            force=force,
            track=track,
        )
    _report_mix(result, json_out)


# --------------------------------------------------------------------------- shapes


@app.command(SHAPES_NAME, cls=Command)
def shapes(
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="FOLDER",
        help="Output folder.",
        show_default=f"{default_out(SHAPES_NAME)}",
    ),
    train: int = typer.Option(SHAPES_DEFAULT_IMAGES["train"], "--train", metavar="N", help="Training images."),
    val: int = typer.Option(SHAPES_DEFAULT_IMAGES["val"], "--val", metavar="N", help="Validation images."),
    test: int = typer.Option(SHAPES_DEFAULT_IMAGES["test"], "--test", metavar="N", help="Test images."),
    seed: int = typer.Option(
        SHAPES_DEFAULT_SEED,
        "--seed",
        metavar="N",
        help="Random seed; the same seed gives the same bytes.",
    ),
    size: int = typer.Option(SHAPES_DEFAULT_SIZE, "--size", metavar="N", help="Image side in pixels (64 to 2048)."),
    no_target_share: float = typer.Option(
        SHAPES_DEFAULT_NO_TARGET_SHARE,
        "--no-target-share",
        metavar="X",
        help="About this share of the sentences name no object (0 to 0.5; with --multi-target-share at most 0.5 together).",
    ),
    multi_target_share: float = typer.Option(
        SHAPES_DEFAULT_MULTI_TARGET_SHARE,
        "--multi-target-share",
        metavar="X",
        help="About this share of the sentences name several objects. --no-target-share 0 --multi-target-share 0 gives the single-target dataset of the shipped default model, byte for byte.",
    ),
    workers: int = typer.Option(
        1,
        "--workers",
        "-j",
        metavar="N",
        min=1,
        help="Processes generating images (the output is the same for any number).",
    ),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
    json_out: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Generate the synthetic shapes dataset: coloured shapes on noisy or textured backgrounds.

    Each image has 4-7 shapes; up to 3 are referred to, each by up to 3 expressions of
    different types -- attribute ("the big red circle"), position ("the star on the left"),
    ordinal ("the second square from the right") and relation ("the circle left of the blue
    star", "next to", "between") -- each checked by a resolver to name exactly one object,
    with distractors sharing its attributes. About 7 sentences per image.

    Some sentences name no object or several (--no-target-share, --multi-target-share):
    "all the red objects", "the two circles on the left", and objects that are not there but
    close to one that is ("the green circle" beside a red circle and a green square, "the red
    circle at the top" when it is at the bottom), each checked by the resolver to name exactly
    that set. Their records carry ann_ids and no_target, as gRefCOCO's do. They are added to
    the same images and single-target sentences (a random stream of their own).

    The output folder holds the REFER form (refer/shapes/refs(synthetic).p, instances.json,
    images/*.png) and the prepared form made from it by the RefCOCO code path
    (dataset.json, train/val/test.jsonl with an expr_type per record).
    """
    from remamber.data.shapes import prepare_shapes

    counts = {"train": train, "val": val, "test": test}
    with _progress() as track:
        result = prepare_shapes(
            out or default_out(SHAPES_NAME),
            counts,
            seed,
            size,
            no_target_share=no_target_share,
            multi_target_share=multi_target_share,
            force=force,
            track=track,
            workers=workers,
        )
    _report(result, json_out)
