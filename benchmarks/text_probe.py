"""Text probe: does `tiny` learn to read the sentence? A short in-process training run that
reports validation mIoU / oIoU / P@50 and how much the masks change when the sentences are
swapped between images ("sens", mean |p - p'| over pixels), every 100 steps.

It found why the old scratch text encoder was ignored (BENCHMARKS.md, learning check).
Each line of its output is appended to benchmarks/results/text_probe.jsonl:

    python benchmarks/text_probe.py base --embed-std 0.02            # CLIP's embedding init (before the fix)
    python benchmarks/text_probe.py lr5 --embed-std 0.02 --text-lr-scale 5
    python benchmarks/text_probe.py lr01 --embed-std 0.02 --text-lr-scale 0.1
    python benchmarks/text_probe.py gru --text gru                    # a bidirectional GRU instead
    python benchmarks/text_probe.py std1                              # N(0, 1) embeddings (the default now)

Data: runs/ablation/shapes (`remamber prepare shapes --out runs/ablation/shapes --train 2000
--val 150 --test 150 --size 128 --seed 0 --no-target-share 0 --multi-target-share 0`). About 7 minutes per 400-step run on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from remamber.data.dataset import ReferringDataset, collate_fn
from remamber.engine.losses import segmentation_loss
from remamber.engine.metrics import MetricAccumulator, sample_iou
from remamber.engine.train import TrainConfig, build_training_model, lr_factor, param_groups

REPO = Path(__file__).resolve().parents[1]


class GRUText(nn.Module):
    """Word + position embeddings and a bidirectional GRU; sentence = masked mean (a non-HF control)."""

    def __init__(self, vocab: int, dim: int, max_len: int) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.gru = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.gru(self.emb(input_ids) + self.pos.weight[: input_ids.shape[1]])
        m = attention_mask.float().unsqueeze(-1)
        return x * m, (x * m).sum(1) / m.sum(1)


def evaluate(model: nn.Module, val: ReferringDataset, n: int) -> dict:
    model.eval()
    acc, sens = MetricAccumulator(), []
    with torch.no_grad():
        for i in range(0, min(n, len(val)), 32):
            batch = collate_fn([val[j] for j in range(i, min(i + 32, n, len(val)))])
            texts = batch["text"]
            out = model(batch["image"], *model.tokenize(texts)[:2])
            other = model(batch["image"], *model.tokenize(texts[-1:] + texts[:-1])[:2])
            sens.append((out.sigmoid() - other.sigmoid()).abs().mean().item())
            for p, g in zip(out > 0, batch["mask"] > 0.5):
                acc.add(*sample_iou(p[0], g[0]))
    model.train()
    s = acc.summary()
    return {
        "mIoU": round(s["mIoU"], 4),
        "oIoU": round(s["oIoU"], 4),
        "P@50": round(s["P@50"], 4),
        "sens": round(sum(sens) / len(sens), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--data", default="runs/ablation/shapes")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--text-lr-scale", type=float, default=1.0)
    ap.add_argument("--embed-std", type=float, default=None, help="redraw the word embeddings with this std")
    ap.add_argument("--text", choices=("scratch", "gru"), default="scratch")
    ap.add_argument("--val", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    cfg = TrainConfig(data=args.data, out="unused", preset="tiny", image_size=args.image_size, lr=args.lr)
    train = ReferringDataset(args.data, "train", args.image_size, train=True)
    val = ReferringDataset(args.data, "val", args.image_size)
    model = build_training_model(cfg, train.records)
    if args.text == "gru":
        model.text_encoder = GRUText(len(model.tokenizer), model.config.text_dim, model.config.max_text_len)
    elif args.embed_std is not None:
        nn.init.normal_(model.text_encoder.model.get_input_embeddings().weight, 0.0, args.embed_std)
    rates = {"new": args.lr, "backbone": args.lr, "text": args.lr * args.text_lr_scale}
    opt = torch.optim.AdamW(param_groups(model, rates, 0.01), lr=args.lr)
    base = [g["lr"] for g in opt.param_groups]
    loader = torch.utils.data.DataLoader(
        train, batch_size=args.batch_size, shuffle=True, collate_fn=collate_fn, drop_last=True
    )

    step, losses, start, history = 0, [], time.time(), []
    while step < args.steps:
        for batch in loader:
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * lr_factor(step, args.steps, 50, 0.01)
            loss = segmentation_loss(model(batch["image"], *model.tokenize(batch["text"])[:2]), batch["mask"])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0 or step == args.steps:
                row = {
                    "step": step,
                    **evaluate(model, val, args.val),
                    "loss": round(sum(losses[-100:]) / len(losses[-100:]), 4),
                    "minutes": round((time.time() - start) / 60, 1),
                }
                history.append(row)
                print(args.name, row, flush=True)
            if step >= args.steps:
                break
    record = {"name": args.name, "args": vars(args), "history": history}
    with open(REPO / "benchmarks" / "results" / "text_probe.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
