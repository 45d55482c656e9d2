"""``python -m minidark.tools.bench``: the benchmark, and how the parent starts a worker."""
import sys

from .command import main

sys.exit(main())
