"""Package layout that ``pyproject.toml`` cannot express on its own.

The prompt banks (``prompts/``) and studies (``studies/``) are top-level folders
of the repository, where people edit them, but an installed wheel has no
repository: each is mapped into the package as ``fmeval/_shipped/<folder>/``
(``package_dir``) and its files ship as package data. Protocols already live
inside the package (``fmeval/protocols/``). ``fmeval.resources`` finds all
three in an installed package and, in a source checkout, falls back to the
top-level folders, so editable and wheel installs behave the same.
"""

from setuptools import find_packages, setup

#: top-level folder -> package it becomes inside the wheel
SHIPPED_FOLDERS = {"prompts": "fmeval._shipped.prompts", "studies": "fmeval._shipped.studies"}
DATA_PATTERNS = ["*.yaml", "*.md"]

setup(
    packages=find_packages(include=["fmeval", "fmeval.*"]) + list(SHIPPED_FOLDERS.values()),
    package_dir={pkg: folder for folder, pkg in SHIPPED_FOLDERS.items()},
    package_data={
        "fmeval": ["protocols/*.yaml"],
        "fmeval.protocols": ["*.yaml"],
        "fmeval.server": ["templates/*.html"],
        **{pkg: DATA_PATTERNS for pkg in SHIPPED_FOLDERS.values()},
    },
)
