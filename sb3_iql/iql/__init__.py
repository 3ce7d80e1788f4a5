from sb3_iql.iql.iql import IQL
from sb3_iql.iql.policies import CnnPolicy, IQLPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["IQL", "CnnPolicy", "IQLPolicy", "MlpPolicy", "MultiInputPolicy"]
