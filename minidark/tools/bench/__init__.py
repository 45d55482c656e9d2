"""minidark bench: training and inference speed and peak memory, against PyTorch.

Usage (the same options through the CLI's ``minidark bench``)::

    python -m minidark.tools.bench [CFG ...] [--threads N] [--steps S] [--repeats R]
                             [--json] [--no-torch]
    python -m minidark.tools.bench [CFG ...] --accuracy EPOCHS [--seeds S,S,...]
                             [--threads N] [--train-rows N] [--json]
    python -m minidark.tools.bench [CFG] --rnn BATCHES [--repeats R] [--text TEXT]

Per cfg (default ``cfg/mnist_mlp.cfg`` and ``cfg/mnist_lenet.cfg``):

* **training images/s** = ``batch / t`` where ``t`` is the median time of one
  step after ``--warmup`` steps. A minidark step is
  ``net.forward(x, truth, train=True); net.backward(); net.update()``; a
  PyTorch step is ``zero_grad(); cross_entropy(model(x), y).backward();
  opt.step()``. Steps cycle over ``--train-batches`` distinct batches of real
  MNIST training rows (random uniform rows when the cfg is not 784 -> 10 or
  data/mnist is missing), preloaded before timing.
* **inference images/s**: ``net.predict`` over ``--eval-rows`` rows (MNIST
  test rows), which runs in chunks of ``batch``; PyTorch runs the same chunks
  under ``inference_mode`` plus a softmax. Median of ``--eval-passes``.
* **peak RSS**: ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end of each
  measurement. Every measurement (engine x training/evaluation x repeat) runs
  in its own fresh process, ``python -m minidark.tools.bench --worker ...``, so
  peaks never mix; the RSS right after the imports is reported beside it.
* **threads**: the worker's environment sets OPENBLAS/OMP/MKL/... _NUM_THREADS
  before numpy or torch load, then ``threadpoolctl.threadpool_limits(N)`` and
  ``torch.set_num_threads(N)``; the BLAS library, kernel and thread count the
  worker actually ran with are recorded.
* **GEMM**: float32 ``np.matmul`` GFLOP/s at ``--gemm-size`` (1024^3; the
  best time, a limit that noise should not lower), and
  each engine's fraction of it: ``img/s * FLOPs/image / GEMM rate``, with
  FLOPs per image the sum of ``l.flops`` (training counts 3x the forward:
  forward, input gradient, weight gradient; less layer 0's input gradient,
  which is never computed). Also the *GEMM-only limit*: the
  net's own GEMM shapes (connected, convolutional) timed alone, as img/s.

Engines alternate A/B in every repeat -- minidark, PyTorch, minidark,
PyTorch -- and each ratio is the median of the per-pair ratios (>= 3 pairs
by default), so slow drifts of a shared machine cancel.

The PyTorch twin (``build_torch_model``) is built from the *parsed* minidark
Network, not from a separate description: connected -> Linear, convolutional
-> Conv2d with the padding minidark resolved, maxpool -> MaxPool2d with
darknet's output size and window offset, avgpool -> global average,
dropout -> Dropout, activations relu/leaky(0.1)/linear/logistic/tanh, the
softmax head -> ``F.cross_entropy`` on the logits (mean). Batch norm maps to
BatchNorm (eps 1e-5, momentum .01), which is close to but not exactly
darknet's normalisation. Initial weights are copied from minidark, and the
optimiser is ``torch.optim.SGD(lr, momentum, weight_decay)`` with decay on
weights only (biases and BN parameters in a no-decay group), which is
darknet's update exactly (see minidark/optim/sgd.py). Anything else raises
``UnsupportedForTorch``; minidark is then measured alone.

**Accuracy mode** (``--accuracy EPOCHS``: accuracy after the same number of
epochs): per cfg and seed, one worker per engine trains from the
same initial weights (``load_network(cfg, seed=S)``, copied into the twin) on
the same batch order (``epoch_order``: a fresh permutation of the MNIST
training rows per epoch, back to back, ``EPOCHS * rows // (batch *
subdivisions)`` iterations), minidark through ``net.train_step`` (its policy
sets the rate), PyTorch in ``subdivisions`` accumulated micro-batches then one
step whose groups' lr is minidark's policy rate at the same ``seen``
(``rate_at``) times the layer's scale; dropout active in training, eval mode
for the test top-1 on the 10,000 MNIST test rows. Both report their rates,
a digest of their initial weights and of the order, which the parent checks
are identical. ``--seeds`` repeats this per seed: mean ± std per engine and
of the per-seed differences (points).

The package follows those parts: ``common`` (shared names), ``torch_twin``
(the PyTorch twin), ``flops`` (FLOPs and GEMM shapes), ``worker`` (one
measurement per process), ``runner`` (the parent: data, interleaved runs,
summary), ``accuracy`` (accuracy mode), ``recurrent`` (``--rnn BATCHES``: a character
LSTM against ``torch.nn.LSTM``, bits/char and chars/s), ``output`` (the tables) and
``command`` (the command line).
"""

import importlib

# public name -> the module of this package that defines it. They are imported on
# first use (PEP 562), so that a worker process (python -m minidark.tools.bench
# --worker) loads only what it measures with: its RSS after imports is a reported figure.
_EXPORTS = {
    "ACCURACY_TARGET_POINTS": "accuracy",
    "check_accuracy_net": "accuracy",
    "epoch_order": "accuracy",
    "rate_at": "accuracy",
    "run_accuracy": "accuracy",
    "summarize_accuracy": "accuracy",
    "top1_minidark": "accuracy",
    "top1_torch": "accuracy",
    "train_minidark": "accuracy",
    "train_torch": "accuracy",
    "RNN_TARGET_BITS": "recurrent",
    "RNN_TARGET_SPEED": "recurrent",
    "check_rnn_net": "recurrent",
    "format_rnn_table": "recurrent",
    "run_rnn": "recurrent",
    "summarize_rnn": "recurrent",
    "training_batches": "recurrent",
    "validation_batches": "recurrent",
    "parse_seeds": "command",
    "run": "command",
    "DEFAULT_CFGS": "common",
    "ENGINE_NAMES": "common",
    "ENGINES": "common",
    "REPO_ROOT": "common",
    "THREAD_VARIABLES": "common",
    "UnsupportedForTorch": "common",
    "add_arguments": "common",
    "forward_flops": "flops",
    "gemm_shapes": "flops",
    "training_flops": "flops",
    "format_accuracy_table": "output",
    "format_table": "output",
    "kernel_note": "output",
    "KERNEL_VARIABLES": "runner",
    "find_mnist": "runner",
    "machine_info": "runner",
    "pinned_kernel": "runner",
    "prepare_data": "runner",
    "resolve_cfg": "runner",
    "run_bench": "runner",
    "run_worker": "runner",
    "summarize": "runner",
    "torch_available": "runner",
    "worker_environment": "runner",
    "TorchNet": "torch_twin",
    "build_torch_model": "torch_twin",
    "worker_main": "worker",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
