import os

from sb3_iql.callbacks import NormalizedEvalCallback
from sb3_iql.common.torch_layers import LayerNormNatureCNN, SpatialSoftmaxCNN
from sb3_iql.data.her import HerReplayBuffer
from sb3_iql.evaluation import EvaluationResult, evaluate, normalized_score
from sb3_iql.iql import IQL

with open(os.path.join(os.path.dirname(__file__), "version.txt")) as file_handler:
    __version__ = file_handler.read().strip()

__all__ = [
    "IQL",
    "EvaluationResult",
    "HerReplayBuffer",
    "LayerNormNatureCNN",
    "NormalizedEvalCallback",
    "SpatialSoftmaxCNN",
    "__version__",
    "evaluate",
    "normalized_score",
]
