"""The packages, beside setup.cfg's metadata: the repository's configs/ ships as memjax.configs.

The repository keeps launch.py and configs/ at its top level (`python launch.py
--config=configs/audit.py`); an installed memjax finds the same files as memjax/configs
(`memjax --config=audit`), mapped here rather than copied.
"""

from setuptools import find_packages
from setuptools import setup

setup(
    packages=find_packages(include=["memjax", "memjax.*"]) + ["memjax.configs"],
    package_dir={"memjax.configs": "configs"},
)
