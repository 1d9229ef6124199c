"""axolab: study memorization in large language models with 4D hybrid parallelism."""

__version__ = "0.1.0"
