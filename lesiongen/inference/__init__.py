"""Inference-time tools: moving scans between their own geometry and the model space."""
