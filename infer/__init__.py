"""Inference CLIs: parse flags, build models from converted (or raw torch) checkpoints, call wanjax."""
