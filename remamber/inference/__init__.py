"""Image + phrase -> mask: pre- and post-processing, tokens, the PyTorch and onnxruntime predictors."""
