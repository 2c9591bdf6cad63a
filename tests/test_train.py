"""Training: exact resume after SIGKILL, Ctrl-C, DDP == single process, NaN stop, and the parts."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from model_fixtures import assert_one_line_error, run_cli
from safetensors.torch import load_file

from remamber.engine.losses import dice_loss, segmentation_loss
from remamber.engine.sampling import epoch_batches, micro_batches_per_epoch
from remamber.engine.train import Trainer, lr_factor
from remamber.engine.train_config import TrainConfig

FAST = ["--preset", "tiny", "--image-size", "64", "--batch-size", "4", "--log-every", "1", "--val-split", ""]


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), *FAST, *extra]


def _weights(run: Path) -> dict:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=1e-5), k


def _assert_same_step(two: dict, one: dict, start: dict, params: set[str]) -> None:
    """Two runs took the same optimizer step from ``start``: buffers (BatchNorm running statistics,
    which the forward pass alone sets) to rounding, each parameter to 1% of its step's norm.

    Why not to rounding: the two runs round differently (batch-size dependent kernels, the synced
    BatchNorm's sums; ~1e-6 relative in the forward pass), and a pre-activation that lies that close
    to a ReLU kink passes its gradient in one run and not in the other. One such pixel moves every
    gradient upstream of it by ~1e-3 of its norm (up to 2.5e-5 per weight here), though nothing is
    wrong; a real fault moves it by far more (BatchNorm statistics not synced over processes: ~0.9).
    """
    assert two.keys() == one.keys() == start.keys()
    for k in one:
        a, b = two[k].float(), one[k].float()
        if k not in params:
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), k
            continue
        gap, step = (a - b).norm().item(), (b - start[k].float()).norm().item()
        assert gap <= 1e-2 * step + 1e-5, f"{k}: the steps differ by {gap:.3g}, the step is {step:.3g}"


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "remamber", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    log = run / "log.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        if log.exists():
            steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step and (run / "checkpoints" / "last" / "trainer_state.pt").exists():
                return
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


def _logged_steps(run: Path) -> list[int]:
    """The steps of the training records in ``log.jsonl``, in order (validation records left out)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if "loss" in r]


def test_sigkill_then_resume_reaches_the_same_weights(small_shapes, tmp_path):
    extra = [
        "--epochs",
        "2",
        "--ckpt-every",
        "1",
        "--seed",
        "3",
        "--limit",
        "16",
        "--grad-accum",
        "1",
        "--device",
        "cpu",
    ]
    straight = tmp_path / "straight"
    res = run_cli(*_train_args(small_shapes, straight, *extra))
    assert res.code == 0, res.stderr
    killed = tmp_path / "killed"
    proc = _start(_train_args(small_shapes, killed, *extra))
    _wait_for_step(killed, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(killed / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)
    assert 1 <= state["position"]["step"] < 8  # killed mid-run
    logged = len(_logged_steps(killed))
    res = run_cli("train", "--out", str(killed), "--resume")
    assert res.code == 0, res.stderr
    # it went on from the checkpoint (a run restarted from step 0 would reach the same weights too)
    assert _logged_steps(killed)[logged:] == list(range(state["position"]["step"] + 1, 9))
    _assert_same_weights(_weights(killed), _weights(straight))
    final = torch.load(killed / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)
    assert final["position"] == {"step": 8, "epoch": 2, "micro": 0}


def test_ctrl_c_saves_and_resume_continues(small_shapes, tmp_path):
    run = tmp_path / "run"
    proc = _start(_train_args(small_shapes, run, "--epochs", "50", "--limit", "8", "--ckpt-every", "1"))
    # Step 3 logged: the boundary after step 2 is recorded (a SIGINT inside a step saves the
    # boundary before it, so right after step 2's log line it may still save step 1's).
    _wait_for_step(run, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    state = torch.load(run / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)
    assert state["position"]["step"] >= 2
    record = json.loads((run / "checkpoints" / "last" / "training.json").read_text())
    assert record["dataset"] == "shapes" and record["step"] == state["position"]["step"]
    assert record["settings"]["limit"] == 8 and record["train_samples"] == 8
    card = (run / "checkpoints" / "last" / "README.md").read_text()
    assert "## Training" in card and "on shapes (8 training samples)" in card
    res = run_cli(
        "eval", "--weights", str(run / "checkpoints" / "last"), "--data", str(small_shapes), "--split", "val", "--json"
    )
    assert res.code == 0, res.stderr  # a checkpoint is a model folder eval loads directly
    saved, logged = state["position"]["step"], len(_logged_steps(run))
    proc = _start(["train", "--out", str(run), "--resume"])  # goes on from the saved step
    _wait_for_step(run, saved + 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _logged_steps(run)[logged : logged + 2] == [saved + 1, saved + 2]


def test_train_never_starts_over_an_existing_run_or_a_file(small_shapes, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text("{}")
    assert_one_line_error(
        run_cli(*_train_args(small_shapes, run, "--max-steps", "1")), "already holds a training run", "--resume"
    )
    (tmp_path / "afile").write_text("")
    assert_one_line_error(run_cli(*_train_args(small_shapes, tmp_path / "afile", "--max-steps", "1")), "is a file")
    assert sorted(p.name for p in run.iterdir()) == ["train_config.json"]


def test_ddp_two_processes_equal_one_process_with_the_global_batch(small_shapes, tmp_path):
    """SGD with lr 1 makes the parameter change the gradient itself (AdamW's first step is
    ~lr*sign(g), which turns rounding noise of zero gradients into +-lr); see
    :func:`_assert_same_step` for how close the two steps must be."""
    step = [
        "--max-steps",
        "1",
        "--device",
        "cpu",
        "--optimizer",
        "sgd",
        "--lr",
        "1.0",
        "--min-lr",
        "1.0",
        "--weight-decay",
        "0",
    ]
    one = tmp_path / "one"
    res = run_cli(*_train_args(small_shapes, one, *step))
    assert res.code == 0, res.stderr
    two = tmp_path / "two"
    args = [a if a != "4" else "2" for a in _train_args(small_shapes, two, *step)]
    assert "--batch-size" in args and args[args.index("--batch-size") + 1] == "2"
    res = run_cli(*args, "--nproc", "2", env={"OMP_NUM_THREADS": "1"})
    assert res.code == 0, res.stderr
    # The starting weights: a trainer of the same architecture and seed, built here.
    model = Trainer(
        TrainConfig(data=str(small_shapes), out=str(tmp_path / "start"), preset="tiny", image_size=64, val_split="")
    ).model
    start = {k: v.detach() for k, v in model.state_dict().items()}
    _assert_same_step(_weights(two), _weights(one), start, {k for k, _ in model.named_parameters()})
    logs = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert len([r for r in logs if r.get("step") == 1]) == 1  # only rank 0 logs


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(small_shapes, tmp_path):
    run = tmp_path / "nan"
    res = run_cli(
        *_train_args(
            small_shapes, run, "--lr", "1e30", "--min-lr", "1e30", "--epochs", "20", "--limit", "4", "--ckpt-every", "1"
        )
    )
    assert_one_line_error(res, "loss became", code=1)
    assert (run / "checkpoints" / "last" / "model.safetensors").exists()


def test_bad_training_inputs(small_shapes, tmp_path):
    assert_one_line_error(run_cli(*_train_args(small_shapes, tmp_path / "r", "--preset", "huge")), "unknown preset")
    assert_one_line_error(run_cli(*_train_args(small_shapes, tmp_path / "r", "--epochs", "0")), "--epochs")
    assert_one_line_error(run_cli(*_train_args(small_shapes, tmp_path / "r", "--text-lr", "0")), "--text-lr")
    assert_one_line_error(run_cli("train", "--out", str(tmp_path / "none"), "--resume"), "--resume")
    assert_one_line_error(
        run_cli("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")), "missing"
    )


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, total=10, warmup=2, min_ratio=0.1) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0) and all(a >= b for a, b in zip(f[2:], f[3:]))
    assert lr_factor(10, 10, 2, 0.1) == pytest.approx(0.1)


def test_epoch_batches_cover_each_sample_once_and_shard():
    single = epoch_batches(10, 4, seed=1, epoch=0)
    assert sorted(i for b in single for i in b) == list(range(10))
    assert single == epoch_batches(10, 4, seed=1, epoch=0) and single != epoch_batches(10, 4, seed=1, epoch=1)
    shards = [epoch_batches(10, 2, seed=1, epoch=0, rank=r, world=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # same number of batches per rank
    assert micro_batches_per_epoch(10, 2, world=3) == len(shards[0]) and micro_batches_per_epoch(10, 4) == len(single)
    assert set(i for s in shards for b in s for i in b) == set(range(10))


def test_losses_on_known_values():
    logits = torch.tensor([[[[10.0, -10.0], [10.0, -10.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-4)
    assert dice_loss(-logits, target).item() == pytest.approx(1 - 1 / 5, abs=1e-4)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.zeros(1, 1, 2, 2), target)
    assert segmentation_loss(torch.zeros(1, 1, 2, 2), target).item() == pytest.approx(
        (1 - (2 * 1.0 + 1) / (2.0 + 2.0 + 1)) + bce.item(), abs=1e-6
    )
    assert math.isclose(bce.item(), math.log(2), rel_tol=1e-6)


_HEAP_PROBE = """
import ctypes, ctypes.util, json
from remamber.engine.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print(json.dumps(None))
    raise SystemExit
libc.malloc.restype, libc.free.argtypes, libc.mallinfo2.restype = ctypes.c_void_p, [ctypes.c_void_p], MallInfo2

def free_in_heap_after_a_block():
    libc.free(libc.malloc(64 << 20))
    return libc.mallinfo2().fordblks

before = free_in_heap_after_a_block()
kept = keep_freed_memory()
print(json.dumps([before, kept, free_in_heap_after_a_block()]))
"""


def _heap_probe(keep_setting: str):
    """[free bytes before, keep_freed_memory(), free bytes after] in a fresh process, or None."""
    env = {**os.environ, "REMAMBER_KEEP_FREED_MEMORY": keep_setting}
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def test_cpu_training_keeps_freed_memory_in_the_heap():
    """In a fresh process a freed 64 MiB block goes back to the kernel; after keep_freed_memory
    (what `remamber train` calls on a CPU) it stays in the heap."""
    probe = _heap_probe("1")
    if probe is None:
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    before, kept, after = probe
    assert before < 64 << 20 and kept and after >= 64 << 20
    before, kept, after = _heap_probe("0")
    assert not kept and after < 64 << 20  # the opt-out leaves glibc's defaults


@pytest.mark.parametrize("device, keeps", [("cpu", True), ("cuda", False)])
def test_train_command_keeps_freed_memory_on_a_cpu_only(monkeypatch, device, keeps):
    """`remamber train` sets the allocator for a CPU run; the library's Trainer leaves it alone."""
    from types import SimpleNamespace

    import remamber.engine.allocator as allocator
    import remamber.engine.train as engine_train
    from remamber.cli.train import _run

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(device) or True)

    class FakeTrainer:
        def __init__(self, cfg, resume, console):
            self.device, self.main, self.total_steps, self.step, self.epoch = torch.device(device), True, 1, 0, 0
            self.notes, self.backbone_report = [], None

        def fit(self, on_step):
            on_step({"step": 1, "epoch": 0, "loss": 0.5, "lr": 1e-3})
            return SimpleNamespace(steps=1, last="run/checkpoints/last", best_score=None, best=None)

    monkeypatch.setattr(engine_train, "Trainer", FakeTrainer)
    _run(SimpleNamespace(lr=1e-3), resume=False)
    assert calls == ([device] if keeps else [])
    assert "keep_freed_memory" not in engine_train.__dict__


def test_best_checkpoint_is_picked_on_giou_for_generalized_splits():
    """A generalized split ranks checkpoints by gIoU (its oIoU counts target sentences only, and
    is None when the split has none); a classic split by oIoU."""
    from remamber.engine.train import selection_metric

    assert selection_metric({"oIoU": 0.7, "mIoU": 0.6}) == ("oIoU", 0.7)
    assert selection_metric({"oIoU": 0.7, "mIoU": 0.6, "gIoU": 0.8}) == ("gIoU", 0.8)
    assert selection_metric({"oIoU": None, "mIoU": None, "gIoU": 0.9}) == ("gIoU", 0.9)
