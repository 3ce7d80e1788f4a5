import os

from setuptools import find_packages, setup

with open(os.path.join("sb3_iql", "version.txt")) as file_handler:
    __version__ = file_handler.read().strip()

with open("README.md", encoding="utf-8") as file_handler:
    long_description = file_handler.read()

setup(
    name="sb3_iql",
    version=__version__,
    description="Implicit Q-Learning (IQL) for Stable-Baselines3, trained offline on Minari datasets",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks", "examples"]),
    package_data={"sb3_iql": ["version.txt", "py.typed", "hyperparams/*.yml", "datasets/data/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "stable-baselines3>=2.9,<3",
        "sb3-contrib>=2.9,<3",
        # Not pinned to a CPU build: users with CUDA get their CUDA wheel.
        "torch>=2.3",
        "gymnasium>=1.0",
        "minari[hdf5]>=0.5.4",
        # the maze environments of the dataset generators (sb3_iql.datasets) and of Minari's D4RL mazes
        "gymnasium-robotics>=1.4",
        "mujoco>=3.0",
        "numpy>=1.24",
        "tqdm",
        "rich",
        # tensorboard_log=... and rl-zoo's -tb, as SB3's [extra] provides
        "tensorboard",
        "pyyaml",
    ],
    extras_require={
        # pytest-xdist: the suite's tests run in one process per core (each test keeps torch on one thread)
        "tests": ["pytest", "pytest-xdist", "ruff", "matplotlib", "psycopg2-binary"],
        "docs": ["sphinx", "myst-parser", "sphinx-rtd-theme"],
        # rl_zoo3's train/enjoy modules import requests without declaring it
        "zoo": ["rl_zoo3>=2.9,<3", "requests", "optuna>=4.9"],
        "plots": ["matplotlib"],
    },
    license="MIT",
)
