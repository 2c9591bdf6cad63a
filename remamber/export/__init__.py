"""``remamber export``: model folders for the Hub and ONNX folders for onnxruntime."""
