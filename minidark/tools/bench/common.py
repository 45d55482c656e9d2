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


def add_arguments(parser):
    """The bench options (shared by ``python -m minidark.tools.bench`` and ``minidark bench``)."""
    parser.add_argument(
        "cfgs", nargs="*", metavar="CFG", help=f"cfg files (default: {' '.join(DEFAULT_CFGS)})"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="BLAS / PyTorch threads (default 1; >1 is noisy)"
    )
    parser.add_argument(
        "--steps", type=int, default=50, help="timed training steps per measurement (default 50)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed training steps first (default 5)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved (minidark, PyTorch) pairs (default 3)"
    )
    parser.add_argument(
        "--train-batches",
        type=int,
        default=8,
        help="distinct training batches cycled through (default 8)",
    )
    parser.add_argument(
        "--eval-rows",
        type=int,
        default=10000,
        help="rows per inference pass (default 10000: MNIST test set)",
    )
    parser.add_argument(
        "--eval-passes",
        type=int,
        default=3,
        help="timed inference passes per measurement (default 3)",
    )
    parser.add_argument(
        "--gemm-size",
        type=int,
        default=1024,
        help="square float32 GEMM size for the GFLOP/s reference",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights/data seed")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--keep-blas-kernel",
        dest="native_blas",
        action="store_false",
        help="keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE from the environment "
        "in the workers (by default they are dropped, so OpenBLAS runs "
        "the CPU's own kernel; the table names the kernel used)",
    )
    parser.add_argument(
        "--suite",
        action="store_true",
        help="the speed table in one command: inference against OpenCV's dnn on darknet's "
        "tiny.cfg, darknet19.cfg (224x224, batch 8) and yolov3-tiny.cfg (416x416), "
        "training and inference against PyTorch on cifar.cfg (batch 32) and the MNIST "
        "nets, peak RSS of each; every row with its target (takes ~15 minutes)",
    )
    parser.add_argument(
        "--no-torch",
        action="store_true",
        help="measure minidark only, even if PyTorch is installed",
    )
    group = parser.add_argument_group(
        "accuracy mode",
        "train minidark and its PyTorch twin on MNIST from the same weights, "
        "batch order and per-iteration learning rates; print both test top-1 accuracies",
    )
    group.add_argument(
        "--accuracy",
        type=int,
        metavar="EPOCHS",
        help="train for EPOCHS epochs in each engine instead of timing steps",
    )
    group.add_argument(
        "--seeds",
        metavar="S,S,...",
        help="comma-separated seeds, one run per engine each (default: --seed)",
    )
    group.add_argument(
        "--train-rows",
        type=int,
        metavar="N",
        help="train on the first N MNIST training rows only (quick checks)",
    )
    group = parser.add_argument_group(
        "recurrent mode",
        "train an [lstm] character cfg (e.g. cfg/char_lstm.cfg) and torch.nn.LSTM from the "
        "same weights, text streams and learning rates; print both validation bits/char "
        "and training characters/s",
    )
    group.add_argument(
        "--rnn",
        type=int,
        metavar="BATCHES",
        help="train BATCHES batches in each engine (--repeats interleaved pairs per seed; "
        "--seeds S,S,... as in accuracy mode)",
    )
    group.add_argument(
        "--text",
        metavar="TEXT",
        help="training text, the held-out one beside it as <stem>_valid<ext> "
        "(default: the Python standard-library corpus, written to a temporary folder)",
    )
    group.add_argument(
        "--valid-bytes",
        type=int,
        default=65536,
        metavar="N",
        help="validate on the first N bytes of the held-out text (default 65536)",
    )
    return parser
