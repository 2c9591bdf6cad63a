"""Helpers shared by the benchmark scripts: the machine record of a result, best-of-N timing and the
arguments of the timing scripts."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` is often empty)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine(**extra: Any) -> dict:
    """What a result was measured on: CPUs, torch's threads, platform and torch version, plus ``extra``."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        **extra,
    }


def best_of(fn: Callable[[], Any], repeat: int, sync: Callable[[], None] = lambda: None) -> tuple[float, Any]:
    """Fewest seconds of ``repeat`` calls of ``fn`` (each between two ``sync()`` calls) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best, result


def timing_parser(doc: str, result: str, repeat: int) -> argparse.ArgumentParser:
    """A timing script's parser with ``--repeat`` (calls per timing, the fastest kept; default
    ``repeat``) and ``--out`` (default ``results/<result>``)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=repeat, help=f"calls per timing, the fastest kept (default {repeat})")
    ap.add_argument("--out", type=Path, default=RESULTS / result)
    return ap


def allocator_note(kept: bool) -> str:
    """The ``allocator`` entry of a result: whether freed memory was kept in the process."""
    return "freed memory kept in the process (mallopt)" if kept else "system default"


def write_per_forward(out: Path, command: str, kept: bool, rows: list[dict], totals: dict[str, float]) -> None:
    """Write a per-shape timing result (``rows``) with ``totals``: each path's milliseconds weighted by
    the calls of one ``base`` forward at 480 px; print the totals."""
    from remamber.utils.io import write_json

    totals = {name: round(ms, 1) for name, ms in totals.items()}
    write_json(
        out,
        {
            "command": command,
            "machine": machine(),
            "allocator": allocator_note(kept),
            "results": rows,
            "per_base_480_forward_ms": totals,
        },
    )
    print(
        "per base 480 px forward: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in totals.items()) + f"; wrote {out}"
    )
