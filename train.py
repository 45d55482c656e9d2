#!/usr/bin/env python3
"""Train a network, darknet style. The main entry of minidark.

    python train.py                      # cfg/mnist_lenet.cfg (else cfg/mnist_mlp.cfg) on MNIST
    python train.py CFG                  # CFG on MNIST (cfg/mnist.data)
    python train.py DATA CFG [WEIGHTS]   # = minidark classifier train DATA CFG [WEIGHTS]

Options as for ``minidark classifier train`` (--clear, --seed N, --strict,
--verbose, --no-progress, --plugin SPEC); ``python train.py --help``.
"""

import sys

from minidark.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
