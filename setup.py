"""ebsr-basicsr: binary super-resolution networks for BasicSR and a bitwise CPU runtime.

The two fixed top-level folders ``kernels/`` and ``cli/`` are installed as
``ebsr_basicsr.kernels`` and ``ebsr_basicsr.cli`` so that nothing is put into the
global namespace (PyPI already has a package called ``kernels``).
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "ebsr_basicsr" / "__init__.py").read_text()).group(1)

# The runtime and the CLI need no torch: keep install_requires light.
RUNTIME = ["numpy>=1.24,<2.6", "numba>=0.59", "opencv-python>=4.7", "click>=8.1", "tqdm>=4.60"]
# basicsr-volta is the maintained wheel of basicsr 1.4.x (the PyPI 1.4.2 sdist fails to import
# with current torchvision). Both provide the `basicsr` import package: install only one.
TRAIN = ["torch>=2.1", "torchvision>=0.16", "basicsr-volta>=1.4.4", "lmdb>=1.4", "pyyaml>=6", "scikit-image>=0.21"]
TEST = ["pytest>=7", "ruff>=0.4"]
# `ebsr-upscale --ray`: Ray core and its client (ray://); no dashboard, no torch.
CLUSTER = ["ray[client]>=2.9"]

setup(
    name="ebsr-basicsr",
    version=VERSION,
    description="Binary neural networks for image super-resolution: BasicSR plugin and bitwise runtime",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["ebsr_basicsr", "ebsr_basicsr.*"]) + ["ebsr_basicsr.kernels", "ebsr_basicsr.cli"],
    package_dir={"ebsr_basicsr.kernels": "kernels", "ebsr_basicsr.cli": "cli"},
    package_data={"ebsr_basicsr.weights": ["*.ebsr"]},
    install_requires=RUNTIME,
    extras_require={"train": TRAIN, "test": TEST, "cluster": CLUSTER, "all": TRAIN + TEST + CLUSTER},
    entry_points={
        "console_scripts": [
            "ebsr-upscale = ebsr_basicsr.cli.upscale:main",
            "ebsr-export = ebsr_basicsr.cli.export:main",
            "ebsr-prepare = ebsr_basicsr.cli.prepare:main",
            "basicsr = ebsr_basicsr.cli.basicsr_cli:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
)
