"""pytest set-up for gpu_harness: the repository root on sys.path, so that
check and test modules can `from gpu_harness import kbm_gpu` wherever pytest
is started."""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
