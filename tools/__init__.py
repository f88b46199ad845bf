"""Developer tools for the gemma_lab repository (run from its root, e.g. ``python -m tools.bench``).

Not part of the installed package: they sit above the library and import it, never the reverse.
"""
