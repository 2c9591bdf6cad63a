# How benchmarks/results/default_model_eval.json was made (steps 15-16 of
# benchmarks/default_model/build.sh; the training steps before them are in that script).
# Test images from seed 1, which no training stage used (stages used seeds 0, 2, 3, 4, 5 and 6):
remamber prepare shapes --out runs/default-model/test-seed1 --train 0 --val 0 --test 300 --seed 1
# The shipped model (remamber/pretrained/remamber-tiny-shapes holds the same tensors as the last stage-8
# checkpoint), evaluated per expression type:
remamber eval --weights remamber/pretrained/remamber-tiny-shapes --data runs/default-model/test-seed1 --split test --json \
  > benchmarks/results/default_model_eval.json
# Re-run after fuse() and the one post-processing path (Pillow's bilinear upsampling in eval too),
# with the shipped model by name, on the same test images:
remamber eval --weights remamber-tiny-shapes --data runs/default-model/test-seed1 --split test --json \
  > benchmarks/results/default_model_eval_rerun.json
