"""TensorFlow-free harness for kbm's CUDA launchers (ctypes + PyTorch)."""
