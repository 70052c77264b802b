"""Started by tests/test_ddp.py under torchrun: one training run from a JSON TrainConfig given as argv[1]."""
import json
import sys

from llmft.config import TrainConfig
from llmft.train import train

if __name__ == "__main__":
    train(TrainConfig(**json.loads(sys.argv[1])))
