"""Everything is declared in pyproject.toml; this file only lets tools that look for a setup.py find it."""

from setuptools import setup

setup()
