"""segrt's export stage: PyTorch models to self-describing ONNX bundles. Imports torch only on use."""
