"""The discriminator of one-step diffusion distillation (divlab.tasks.one_step): a logit on noised samples
x_t whose sigmoid separates data (real) from generator samples (fake); r = p_t / q_t = exp(logit)
(divlab.objectives.fdistill.density_ratio)."""

from torch import Tensor, nn


class Discriminator(nn.Module):
    """logit(x_t, sigma) = head(features(x_t, sigma)); features are the frozen teacher's (no parameters
    here) or an own DenoiserMLP trunk when the teacher has none."""

    def __init__(self, *, feature_dim: int, width: int = 128, own_features: nn.Module | None = None):
        super().__init__()
        self.own_features = own_features
        self.head = nn.Sequential(nn.Linear(feature_dim, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(
        self, x: Tensor, sigma: Tensor, teacher: nn.Module, class_labels: Tensor | None = None
    ) -> Tensor:
        """class_labels (class-conditional teacher only) condition the teacher's features."""
        network = self.own_features if self.own_features is not None else teacher
        return self.head(network.features(x, sigma, class_labels))
