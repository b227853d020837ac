"""tensorgrade: a graded course on PyTorch for scientific computing, and its grader."""

__version__ = "0.1.0"
