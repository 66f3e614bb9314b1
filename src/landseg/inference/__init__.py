"""Inference on whole scenes and evaluation of predictions."""
