"""Thin shim: pyproject.toml is the source of truth."""

from setuptools import setup

setup()
