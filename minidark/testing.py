"""Test helpers for your own layers and plugins: the numerical gradient check
and the darknet reference-vector replay.

    from minidark.testing import gradcheck, format_results
    results = gradcheck("cfg/my_layer.cfg")
    assert all(r.passed for r in results), format_results(results)

The implementations live in :mod:`minidark.tools`; this module is their
stable public name.
"""

from .tools.gradcheck import (  # noqa: F401
    KNOWN_GAPS,
    GradResult,
    KnownGap,
    format_results,
    gradcheck,
    gradcheck_layer,
    known_gap,
    learned_arrays,
    summarize,
    to_float64,
)
from .tools.reference import (  # noqa: F401
    ArrayCheck,
    ReplayReport,
    check_darknet_predictions,
    compare_arrays,
    refdata_root,
    replay_vectors,
    vector_dirs,
)
