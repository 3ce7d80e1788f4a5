from sb3_iql.iql.iql import IQL
from sb3_iql.iql.policies import IQLPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["IQL", "IQLPolicy", "MlpPolicy", "MultiInputPolicy"]
