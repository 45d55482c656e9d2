"""What every part of the benchmark shares: default cfgs, engine names, the
thread variables a worker's environment sets, and the error for a network the
PyTorch twin cannot reproduce.

torch and threadpoolctl are optional (the ``bench`` extra) and importing torch
takes about a second: every module of this package imports them inside the
functions that use them, so that ``minidark --help`` and a ``--no-torch`` run
never load them.
"""

import os

from ...errors import MinidarkError

DEFAULT_CFGS = ("cfg/mnist_mlp.cfg", "cfg/mnist_lenet.cfg")
THREAD_VARIABLES = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
TORCH_ACTIVATIONS = ("linear", "relu", "leaky", "logistic", "tanh")
ENGINES = ("minidark", "torch")
ENGINE_NAMES = {"minidark": "minidark", "torch": "PyTorch"}
# minidark/tools/bench/common.py -> the repository root
REPO_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)


class UnsupportedForTorch(MinidarkError):
    """A layer or option the PyTorch twin cannot reproduce."""
