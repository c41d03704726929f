"""Print the package folders that pyproject.toml names, one a line.

The images install dependencies in a layer of their own, before the project code is copied: an
editable install only needs these folders to exist, and the code arrives later at the same paths.
"""

import tomllib
from pathlib import Path

setuptools = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]
roots = setuptools["package-dir"]
for package in setuptools["packages"]:
    root = max((r for r in roots if package == r or package.startswith(r + ".")), key=len)
    print(Path(roots[root], *package[len(root) :].split(".")))
