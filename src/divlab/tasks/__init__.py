from divlab.tasks.classify import ClassifyTask
from divlab.tasks.distill import DistillTask

__all__ = ["ClassifyTask", "DistillTask"]
