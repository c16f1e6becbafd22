"""Only the optional C part: everything else is in pyproject.toml.

p2pwall._capwalk speeds up `p2pwall replay` on big captures; without a C compiler the
install goes on without it and replay walks captures in Python (same results, slower)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("p2pwall._capwalk", ["p2pwall/_capwalk.c"], optional=True)])
