"""Packaging for verl-restrain, the RESTRAIN plugin for verl."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = (ROOT / "verl_restrain" / "VERSION").read_text().strip()

# verl 0.9.1 bounds transformers to >=5.5.3,<5.11 and tensordict to <=0.10.0. torch is a range that
# admits the 2.13.0 CPU wheel so that pip never replaces an installed torch with a newer CUDA build.
# hydra-core needs antlr4 4.9.*, so math-verify's LaTeX parser is pinned to the matching runtime.
INSTALL_REQUIRES = [
    "verl[verl-core]==0.9.1",
    "torch>=2.6,<2.14",
    "transformers>=5.5.3,<5.11,!=5.6.0",
    "math-verify[antlr4_9_3]==0.9.0",
    "latex2sympy2_extended==1.11.0",
    "hydra-core>=1.3.2,<1.4",
    "omegaconf>=2.3,<2.4",
    "numpy>=2.0,<3",
    "pandas>=2.2,<4",
    "pyarrow>=19.0.0,<27",
    "tqdm>=4.66,<5",
    "matplotlib>=3.8,<4",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8,<10",
        "hypothesis>=6.100,<7",
    ],
    # GPU machines: verl's own vLLM extra pins the vLLM/torch pair it was released with.
    "vllm": ["verl[vllm]==0.9.1"],
}

setup(
    name="verl-restrain",
    version=VERSION,
    description="RESTRAIN (self-training RL with self-penalization) as a verl plugin",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["verl_restrain", "verl_restrain.*"]),
    include_package_data=True,
    package_data={"verl_restrain": ["VERSION", "config/*.yaml", "config/**/*.yaml", "data/*", "data/**/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        # verl imports every module of this group on `import verl`, in every process.
        "verl.plugins": ["restrain = verl_restrain.adapters.plugin"],
        "console_scripts": [
            "restrain-sandbox = verl_restrain.sandbox.cli:main",
            "restrain-score-prompts = verl_restrain.jobs.scoring.cli:main",
            "restrain-filter-samples = verl_restrain.jobs.filter_samples:main",
            "restrain-prepare-data = verl_restrain.data.prepare:main",
            "restrain-evaluate = verl_restrain.jobs.evaluation:main",
            "restrain-make-tables = verl_restrain.jobs.tables:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "License :: OSI Approved :: Apache Software License",
    ],
)
