"""Cell sources of the shipped notebooks, one module per notebook (``CELLS``)."""
