"""flan-builder: FLAN-style instruction datasets, held-out-cluster training and zero-shot evaluation.

The builder (this package without extras) never imports torch; training and
evaluation live behind the ``[train]`` and ``[eval]`` extras.
"""

__version__ = "0.1.0"
