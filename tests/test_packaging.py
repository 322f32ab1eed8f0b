"""pyproject.toml: installing pxpo prints no deprecation warning."""

import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_reads_without_deprecation_warnings(monkeypatch):
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), "pyproject.toml")
    deprecations = [str(w.message).splitlines()[0] for w in caught if "deprecat" in str(w.message).lower()]
    assert deprecations == []
    assert dist.metadata.license_expression == "Apache-2.0"  # an SPDX expression, not a {text = ...} table
