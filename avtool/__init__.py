"""avtool: one command line for five audio<->video generation systems."""

__version__ = "0.1.0"
