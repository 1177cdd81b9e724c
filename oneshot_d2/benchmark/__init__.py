"""The speed benchmarks behind ``tools/benchmark.py``, one module per ``--task``
(as Detectron2's ``tools/benchmark.py`` has one function per task):

* :mod:`.models`: the cost of the one-shot machinery against plain Mask R-CNN;
* :mod:`.paper`: the paper configs against the original code;
* :mod:`.throughput`: batched inference through ``OneShotPredictor``;
* :mod:`.study`: a CT study through ``tools/predict.py``'s pipeline end to end.

:mod:`.common` holds what they share: the model builder, the phantom inputs, the timing and
FLOP count, the mixed-precision switch. Config paths are resolved against a ``repo`` argument
(the tool passes the repository root): the benchmarks need the checkout's configs.
"""
from typing import Dict

# task (``--task``) -> what it measures (the tool's help text)
TASKS: Dict[str, str] = {
    "models": "one-shot overhead vs plain Mask R-CNN (default)",
    "paper": "the paper configs vs the original code",
    "throughput": "batched inference",
    "study": "a CT study end to end",
}

__all__ = ["TASKS"]
