"""Packaging for histopath-tfx.

The design card keeps `data/`, `models/`, `evaluation/`, `components/`, `pipeline/` and
`serving/` at the top of the repository; they are installed as sub-packages of one `histopath` namespace so that nothing
generic (`data`, `pipeline`) lands at the top level of site-packages.
"""

import pathlib
import re

from setuptools import find_packages, setup

ROOT = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "histopath" / "__init__.py").read_text()
).group(1)

# folder at the repository root -> package name
SUBPACKAGE_DIRS = {
    "data": "histopath.data",
    "models": "histopath.models",
    "evaluation": "histopath.evaluation",
    "components": "histopath.components",
    "pipeline": "histopath.pipeline",
    "serving": "histopath.serving",
}

packages = ["histopath"]
package_dir = {"histopath": "histopath"}
for folder, package in SUBPACKAGE_DIRS.items():
    package_dir[package] = folder
    packages.append(package)
    for sub in find_packages(where=folder):
        packages.append(f"{package}.{sub}")
        package_dir[f"{package}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(
    name="histopath-tfx",
    version=VERSION,
    description="TFX pipeline classifying breast histopathology images (BreakHis, IDC).",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    include_package_data=True,
    package_data={"histopath.serving": ["webapp/templates/**/*", "webapp/static/**/*"]},
    # The exact versions live in requirements/lock.txt (installed with --no-deps); these are
    # the direct dependencies, for tools that read them.
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "apache-beam[gcp]==2.59.0",
        "pillow",
        "openslide-python",
        "openslide-bin",
        "tiffslide==3.0.1",
        "tifffile",
        "imagecodecs",
        "tqdm",
        "matplotlib",
        "django",
        "gunicorn",
        "fastapi",
        "uvicorn",
        "orjson",
        "psutil",
        "grpcio",
        "dj-database-url",
        "tensorflow-serving-api==2.16.1",
    ],
    entry_points={"console_scripts": ["histopath=histopath.cli:main"]},
)
