"""``remamber segment``: the mask of the object a phrase names, for one image or a batch."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import typer

from remamber.cli.options import device_option, presence_threshold_option, threshold_option, weights_option
from remamber.utils.errors import EXIT_FAILURE, InputError, RemamberError, UsageError, first_line

HELP = """Segment the object that each TEXT names in IMAGE.

Writes OUT/<image-stem>.<text-slug>.mask.png (0/255, original image size) and, unless --no-overlay, OUT/<image-stem>.<text-slug>.overlay.jpg (the image with the mask tinted and outlined). In a batch, a name another job of the batch already wrote gets -2, -3, ... added.

Examples:

  remamber segment photo.jpg "man in red shirt"

  remamber segment photo.jpg "the dog on the left" "the ball"     (several phrases: one batched forward pass)

  remamber segment photo.jpg "the dog on the left" --weights owner/name --json

  remamber segment --batch jobs.jsonl --out masks/     (one {"image": ..., "text": ...} per line; - reads stdin)

A model with a presence head also says how likely it is that the phrase names anything in the image: below --presence-threshold the line says "not found" and the mask is empty.

In a batch the model loads once; relative image paths are relative to the batch file's folder (the current folder for stdin); a bad line or image is reported and skipped, the rest are written, and the exit code is 1 if any failed. Bad input exits with code 2.
"""


def _batch_lines(batch: str) -> Iterator[bytes]:
    """The raw lines of the batch file (or of stdin for ``-``): bytes, so that one line that is
    not UTF-8 fails alone."""
    if batch == "-":
        return iter(sys.stdin.buffer)
    try:
        return iter(Path(batch).read_bytes().splitlines())
    except OSError as e:
        raise InputError(f"--batch {batch}: cannot read it ({e.strerror or e})") from None


def _jobs_from(batch: str) -> Iterator[tuple[int, tuple[str, str] | None, str | None]]:
    """Yield (line number, (image, text) or None, error or None) for each non-blank line.

    A relative image path is relative to the batch file's folder (stdin: the current folder)."""
    base = None if batch == "-" else Path(batch).parent
    for n, raw in enumerate(_batch_lines(batch), 1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            yield n, None, "not valid UTF-8"
            continue
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            image, text = item["image"], item["text"]
            if not isinstance(image, str) or not isinstance(text, str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            yield n, None, 'not a JSON object with string fields "image" and "text"'
            continue
        if base is not None and not Path(image).is_absolute():
            image = str(base / image)
        yield n, (image, text), None


def _check_text(text: str) -> None:
    """Refuse an empty text or one that is not valid Unicode, before any model is loaded."""
    from remamber.inference.processing import check_text

    check_text(text)


@contextlib.contextmanager
def _output_dir(out: Path) -> Iterator[Path]:
    """``out``, created if needed and checked writable; the folders this made are removed again
    if they are still empty at the end (a failed run leaves no empty new --out behind)."""
    created = None  # the topmost folder this call creates
    probe = out
    while not probe.exists() and probe != probe.parent:
        created, probe = probe, probe.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        test_file = out / ".remamber-write-test"
        test_file.write_bytes(b"")
        test_file.unlink()
    except OSError as e:
        _remove_empty(out, created)
        raise InputError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    try:
        yield out
    finally:
        _remove_empty(out, created)


def _remove_empty(folder: Path, up_to: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` while they are empty."""
    if up_to is None:
        return
    while True:
        try:
            folder.rmdir()  # only ever removes an empty folder
        except OSError:
            return
        if folder == up_to:
            return
        folder = folder.parent


def segment(
    image: Path | None = typer.Argument(
        None, metavar="IMAGE", help="Image file (JPEG, PNG, WebP, TIFF, ...).", show_default=False
    ),
    text: list[str] | None = typer.Argument(
        None,
        metavar="TEXT",
        help='Phrase naming one object, e.g. "man in red shirt"; several phrases run as one batched forward pass.',
        show_default=False,
    ),
    weights: str | None = weights_option(),
    out: Path = typer.Option(
        Path("."), "--out", "-o", metavar="FOLDER", help="Folder for the mask and overlay files (made if needed)."
    ),
    device: str = device_option(),
    threshold: float = threshold_option(),
    presence_threshold: float = presence_threshold_option(),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print one JSON object per result on stdout: image, text, mask, overlay, area (pixels), "
        "mean_prob (inside the mask), rle (COCO RLE), presence (probability that the phrase names anything; "
        "null for a model without a presence head), found, width, height, seconds. In a batch, a failed line "
        "prints {line, error, image, text} instead.",
    ),
    no_overlay: bool = typer.Option(False, "--no-overlay", help="Do not write the overlay picture."),
    batch: str | None = typer.Option(
        None,
        "--batch",
        metavar="FILE",
        help='JSON Lines file of {"image": ..., "text": ...} jobs, or - for stdin. Relative image paths are '
        "relative to the file's folder (to the current folder for stdin).",
        show_default=False,
    ),
    allow_large: bool = typer.Option(
        False, "--allow-large", help="Read images over Pillow's decompression-bomb limit (~89 Mpx)."
    ),
) -> None:
    if batch is not None and (image is not None or text):
        raise UsageError("give either IMAGE TEXT or --batch FILE, not both")
    if batch is None and (image is None or not text):
        raise UsageError(f"missing {'IMAGE and TEXT' if image is None else 'TEXT'} (or --batch FILE)")
    for phrase in text or []:
        _check_text(phrase)
    if batch is not None and batch != "-" and not Path(batch).is_file():
        raise InputError(f"--batch {batch}: no such file")
    with _output_dir(out) as out_dir:
        from remamber.inference.images import load_image

        first = None if batch is not None else load_image(image, allow_large=allow_large)  # before loading a model
        from remamber.cli.weights import load_predictor

        predictor = load_predictor(weights, device, threshold, presence_threshold)
        if first is not None:
            taken: set[str] = set()  # one image, several phrases: names kept apart as in a batch
            for result in _run_one(predictor, str(image), text, out_dir, not no_overlay, allow_large, first, taken):
                _emit(result, json_out)
            return
        failures = _run_batch(predictor, batch, out_dir, not no_overlay, allow_large, json_out)
    if failures:
        sys.stderr.write(f"error: {failures} item(s) failed (see above)\n")
        raise typer.Exit(EXIT_FAILURE)


def _run_one(
    predictor,
    image_path: str,
    texts: list[str],
    out_dir: Path,
    write_overlay: bool,
    allow_large: bool,
    img=None,
    taken: set[str] | None = None,
) -> list[dict]:
    """Segment the phrases of one image in one forward pass and write their files; ``taken`` (the
    output names so far) gets the new names, made unique with -2, -3, ... when another phrase or
    job already wrote that name."""
    from remamber.inference.images import load_image, output_stem, save_mask, save_overlay
    from remamber.inference.results import prediction_fields

    start = time.perf_counter()
    for text in texts:
        _check_text(text)
    if img is None:
        img = load_image(image_path, allow_large=allow_large)
    preds = predictor.predict_many([img] * len(texts), texts)
    results = []
    for text, pred in zip(texts, preds):
        if pred.truncated:
            sys.stderr.write(
                f"warning: text longer than {predictor.config.max_text_len} tokens was truncated: {text!r}\n"
            )
        stem = output_stem(image_path, text)
        if taken is not None:
            base, k = stem, 1
            while _fold(stem) in taken:
                k += 1
                stem = f"{base}-{k}"
            taken.add(_fold(stem))
        mask_path = out_dir / f"{stem}.mask.png"
        save_mask(mask_path, pred.mask)
        overlay_path = None
        if write_overlay:
            overlay_path = out_dir / f"{stem}.overlay.jpg"
            save_overlay(overlay_path, img, pred.mask)
        results.append(
            {
                "image": image_path,
                "text": text,
                "mask": str(mask_path),
                "overlay": str(overlay_path) if overlay_path else None,
                **prediction_fields(pred),
                "width": img.size[0],
                "height": img.size[1],
                "seconds": round(time.perf_counter() - start, 4),
            }
        )
    return results


def _printable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) escaped as \\udcff, for output."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _fold(name: str) -> str:
    """A file name as case-insensitive, normalising file systems (macOS) compare it."""
    return unicodedata.normalize("NFC", name).casefold()


def _emit(result: dict, json_out: bool) -> None:
    if json_out:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    extra = f" and overlay {result['overlay']}" if result["overlay"] else ""
    head = f'{result["image"]} "{result["text"]}": '
    if not result["found"]:
        head += f"not found (presence {result['presence']:.3f}); wrote empty mask {result['mask']}{extra}"
    else:
        head += f"wrote mask {result['mask']}{extra} ({result['area']} px)"
    typer.echo(f"{head} in {result['seconds']:.2f} s")


def _run_batch(predictor, batch: str, out_dir: Path, write_overlay: bool, allow_large: bool, json_out: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    jobs = list(_jobs_from(batch))
    if not jobs:
        sys.stderr.write(f"warning: --batch {batch} has no jobs\n")
    if len(jobs) > 1 and hasattr(predictor, "device"):  # a PyTorch model (not ONNX), many calls ahead
        from remamber.inference.predictor import prefer_fused_scan

        prefer_fused_scan(predictor.device, predictor.config.d_state)
    failures = 0
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("segment"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    taken: set[str] = set()
    with progress:
        task = progress.add_task("segment", total=len(jobs))
        for n, job, problem in jobs:
            if job is not None:
                result = None
                try:
                    (result,) = _run_one(predictor, job[0], [job[1]], out_dir, write_overlay, allow_large, taken=taken)
                except RemamberError as e:
                    problem = str(e)
                except Exception as e:  # noqa: BLE001 - one bad item must not stop the batch
                    problem = f"{type(e).__name__}: {first_line(e)}"
                if result is not None:
                    _emit(result, json_out)  # outside the try: a closed stdout is not an item's failure
            if problem is not None:
                failures += 1
                progress.console.print(f"error: line {n}: {problem}", markup=False, highlight=False, soft_wrap=True)
                if json_out:
                    failed = {"line": n, "error": problem}
                    if job is not None:
                        failed.update(image=_printable(job[0]), text=_printable(job[1]))
                    sys.stdout.write(json.dumps(failed, ensure_ascii=False) + "\n")
            progress.advance(task)
    return failures
