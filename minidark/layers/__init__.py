"""Built-in layers. Each module registers its make function on import, exactly
as a user's plugin does (see docs/extending.md)."""
from . import activation, connected, cost, dropout, softmax  # noqa: F401
from . import avgpool, batchnorm, convolutional, maxpool  # noqa: F401
from . import crop, l2norm, local, logistic, normalization, reorg, route, shortcut, upsample  # noqa
from . import crnn, deconvolutional, gru, lstm, rnn  # noqa: F401
from . import detection, region, yolo  # noqa: F401
