# CPU image of rl4lms. For GPUs, start FROM an image with CUDA and install the matching torch wheel.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/work/.hf \
    RL4LMS_CACHE=/work/.rl4lms_cache

# WordNet for METEOR (see docs/guide/grue.md, "Rewards and metrics").
RUN apt-get update && apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/rl4lms
COPY setup.py README.md ./
COPY rl4lms ./rl4lms
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install -e ".[test,wandb]"
COPY scripts ./scripts
COPY task_configs ./task_configs
COPY tests ./tests
COPY pytest.ini ./

WORKDIR /work
ENTRYPOINT ["python", "/opt/rl4lms/scripts/training/train_text_generation.py"]
CMD ["--config_path", "/opt/rl4lms/task_configs/synthetic_increasing_numbers/tiny_gpt2_ppo.yml", \
     "--base_path_to_store_results", "/work/rl4lms_exps"]
