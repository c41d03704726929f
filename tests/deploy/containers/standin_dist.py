"""Install a stand-in distribution into the system's site-packages: its metadata (name, version, no
dependencies) and an empty package that says what it is. pip counts it as installed, importlib finds
it; it runs nothing.

    python3 standin_dist.py NAME VERSION
"""

import site
import sys
from pathlib import Path

name, version = sys.argv[1:]
root = Path(site.getsitepackages()[0])
package = root / name
info = root / f"{name}-{version}.dist-info"
package.mkdir(parents=True)
info.mkdir()
(package / "__init__.py").write_text(f'"""Stand-in for {name} {version}: metadata and this file only."""\n\n'
                                     f'__version__ = "{version}"\n')
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
(info / "INSTALLER").write_text("standin_dist.py\n")
files = [package / "__init__.py", info / "METADATA", info / "INSTALLER", info / "RECORD"]
(info / "RECORD").write_text("".join(f"{f.relative_to(root)},,\n" for f in files))
