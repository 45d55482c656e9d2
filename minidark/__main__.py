"""``python -m minidark ...`` is the ``minidark`` command."""

import sys

from .cli import main

sys.exit(main())
