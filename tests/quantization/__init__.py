"""Tests of kbm.quantization."""
