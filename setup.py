"""setuptools hook for what pyproject.toml cannot say: the repository's top-level conf/ ships inside the
package as divlab.conf (every folder of it, its *.yaml as package data), so a non-editable install finds its
configs (divlab/cli/conf_dir.py). Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

CONF = ["divlab.conf", *(f"divlab.conf.{p}" for p in find_namespace_packages("conf"))]

setup(packages=[*find_namespace_packages("src", include=["divlab", "divlab.*"]), *CONF],
      package_dir={"": "src", "divlab.conf": "conf"})
