"""Structure-shaping losses for deep embeddings: a literate book and a PyTorch library

Modules:

- `structloss.core`: The few rules every chapter of structloss relies on: which *profile* a notebook runs in, how results are stamped with their provenance, and how every loss and metric rejects bad input.
- `structloss.geometry`: Distances between embeddings, masks of which pairs share a label, and per-class sums and means: the four pieces every structure-shaping loss and diagnostic is built from."""

__version__ = "0.1.0"

from .core import *
from .geometry import *
