"""``minidark bench``: images/s and memory against PyTorch (internals in minidark/tools/bench/)."""

from ..tools.bench import add_arguments, run
from .base import add_command

add_command(
    "bench", "training/inference images/s and peak memory, against PyTorch", add_arguments, run
)
