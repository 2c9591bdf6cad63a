"""Image + phrase -> mask: pre- and post-processing, tokens, the inference-only fused modules, the
PyTorch and onnxruntime predictors."""
