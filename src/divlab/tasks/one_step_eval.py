"""Evaluation half of task=one_step (mixed into divlab.tasks.one_step.OneStepTask): samples of the EMA
generator, the validation sliced Wasserstein distance, the test metrics and samples.png.

Test metrics: with `image_metrics` set (experiment=onestep/digits) a cached classifier scores the samples
(divlab.metrics.image); otherwise the sample metrics of divlab.metrics.generative compare them with the test
split (on pixel vectors for images: the CPU smoke runs of the paper-scale recipes; their FID, Inception Score
and precision/recall on 50k samples are task=evaluate's, over the saved generator). A class-conditional
generator is sampled with classes 0, 1, ..., label_dim - 1 in turn (a balanced set).

Reference images: a data module that holds its data in memory (2-D mixtures, digits, CIFAR) gives whole splits
as `points(split)`; one that cannot (data=image_folder, e.g. ImageNet 64x64) gives the first `eval_samples`
images of its val/test loader (divlab.data.loaders.split_images), read once per run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from divlab.data.loaders import split_images
from divlab.metrics.image import evaluate_image_sampler, image_grid, log_figure
from divlab.models.edm import sample, sampler_nfe

GRID_IMAGES = 100  # images per panel of the samples.png grid (image data)
EVAL_CHUNK = 500  # samples per network call when scoring (bounds memory at paper-scale eval_samples)


class OneStepEvaluation:
    """Needs: generate(z, net, labels), denoise, generator_ema, teacher, label_dim, eval_samples, seed, run_dir."""

    def reference(self, split: str) -> Tensor:
        """Real images of a split: all of `points(split)`, or the first eval_samples from the loader (cached)."""
        dm = self.trainer.datamodule
        if hasattr(dm, "points"):
            return dm.points(split)
        cache = self.__dict__.setdefault("_reference_images", {})
        if split not in cache:
            cache[split] = split_images(dm, split, limit=self.eval_samples)
        return cache[split]

    def balanced_labels(self, n: int) -> Tensor | None:
        """Classes 0, 1, ..., label_dim - 1 in turn for n samples (None when unconditional)."""
        return torch.arange(n, device=self.device) % self.label_dim if self.label_dim else None

    @torch.no_grad()
    def ema_generate(self, z: Tensor) -> Tensor:
        """EMA-generator samples from latents z, in chunks, balanced over classes when conditional."""
        labels = self.balanced_labels(len(z))
        chunks = [
            self.generate(c, self.generator_ema.module, None if labels is None else labels[i : i + len(c)])
            for i, c in zip(range(0, len(z), EVAL_CHUNK), z.split(EVAL_CHUNK))
        ]
        return torch.cat(chunks)

    def ema_samples(self, n: int, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        shape = self.trainer.datamodule.input_shape
        return self.ema_generate(torch.randn(n, *shape, generator=gen).to(self.device))

    def validation_step(self, batch, batch_idx):
        pass  # scored on the whole validation set at epoch end

    def on_validation_epoch_end(self) -> None:
        from divlab.divergences import get_divergence

        ref = self.reference("val").to(self.device).flatten(1)  # images: pixel vectors
        sw = get_divergence("sliced_wasserstein", num_projections=64, seed=0)(
            ref.double(), self.ema_samples(len(ref), 1).flatten(1).double()
        )
        self.log("val/sliced_w", float(sw))
        self.update_best(float(sw))

    def test_step(self, batch, batch_idx):
        pass  # the metrics compare sample sets at epoch end

    def on_test_epoch_end(self) -> None:
        from divlab.metrics.generative import evaluate_sampler

        dm = self.trainer.datamodule
        scorer = self.frozen("image_scorer")
        if scorer is not None:
            metrics = evaluate_image_sampler(
                self.ema_generate, scorer, n=self.eval_samples, nfe=1, seed=self.seed, device=self.device
            )
        else:
            metrics = evaluate_sampler(
                self.ema_generate,
                reference=self.reference("test"),
                mixture=getattr(dm, "mixture", None),
                n=self.eval_samples,
                nfe=1,
                seed=self.seed,
                device=self.device,
            )
        for k, v in metrics.items():
            self.log(f"test/{k}", v)
        if self.run_dir is not None and self.global_rank == 0:
            self.plot_samples(dm, images=len(dm.input_shape) > 1)

    @torch.no_grad()
    def plot_samples(self, dm, *, images: bool) -> None:
        """samples.png: data, the teacher's Heun and one-step samplers, the EMA generator, on shared latents."""
        from divlab.metrics.generative import scatter_plot

        gen = torch.Generator().manual_seed(10_000 + self.seed)
        n = min(GRID_IMAGES, self.eval_samples) if images else self.eval_samples
        z = torch.randn(n, *dm.input_shape, generator=gen).to(self.device)
        labels = self.balanced_labels(n)
        teacher = lambda x, sigma: self.denoise(self.teacher, x, sigma, labels)  # noqa: E731
        steps = self.teacher_sample_steps
        panels = {
            "data (test)": self.reference("test")[:n],
            f"teacher Heun NFE {sampler_nfe('heun', steps)}": sample(
                teacher, z, method="heun", num_steps=steps
            ).cpu(),
            "teacher NFE 1": sample(teacher, z, method="euler", num_steps=1).cpu(),
            f"student NFE 1 ({self.objective}, {self.divergence.name})": self.ema_generate(z).cpu(),
        }
        path = Path(self.run_dir) / "samples.png"
        if images:
            image_grid(path, panels)
            log_figure(self.loggers, "samples", path, step=int(self.generator_steps))
        else:
            scatter_plot(path, panels)
