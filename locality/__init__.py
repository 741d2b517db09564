"""locality: a memory-locality profiler for massive populations of sparsely activated workers."""

__version__ = "0.1.0"
