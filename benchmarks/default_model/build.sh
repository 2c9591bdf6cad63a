#!/usr/bin/env bash
# How weights/remamber-tiny-shapes was made, step by step (2 CPU cores; about 80 minutes of training).
# Each step is what was run; rerunning gives the same data and, up to thread scheduling, the
# same weights. Run from the repository root: bash benchmarks/default_model/build.sh
set -euo pipefail
R=runs/default-model

# 1. Stage 1 is the learning check: tiny from scratch at 96 px on 2,000 synthetic images (seed 0),
#    1,600 steps of batch 16, lr 1e-3, text encoder at 0.1 x lr (about 27 minutes); it also writes
#    benchmarks/results/learning_check.json and leaves its run in runs/learning-check/run.
python benchmarks/learning_check.py

# 2. Training data of stage 2: 3,000 images with seed 0 (the first 2,000 are stage 1's images), 100 validation images.
remamber prepare shapes --out $R/shapes --train 3000 --val 100 --test 0 --seed 0

# 3. Stage 2: continue from stage 1 at a lower rate with an EMA of the weights (about 55 minutes).
remamber train --data $R/shapes --out $R/run3 --init runs/learning-check/run/checkpoints/last --epochs 100 \
  --max-steps 3000 --time-limit 55 --batch-size 16 --lr 5e-4 --min-lr 5e-6 --warmup-steps 50 --clip-grad 1.0 \
  --ema 0.999 --val-every 400 --val-limit 300 --ckpt-every 200 --log-every 25 --seed 1

# 4. Test data from a seed not used in training (seed 1; its test split only).
remamber prepare shapes --out $R/test-seed1 --train 0 --val 0 --test 300 --seed 1

# 5. Evaluate the last stage-2 checkpoint per expression type; keep the JSON.
remamber eval --weights $R/run3/checkpoints/last --data $R/test-seed1 --split test --json \
  > benchmarks/results/default_model_eval.json

# 6. The shipped folder: weights, tokenizer, training record, card with the evaluation and notes.
remamber export $R/run3/checkpoints/last --format hub --out weights/remamber-tiny-shapes \
  --metrics benchmarks/results/default_model_eval.json --notes benchmarks/default_model/notes.md
