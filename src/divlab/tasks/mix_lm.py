"""Language modelling on a mixture of k text groups whose proportions a mixer sets (`task=mix_lm`).

The model is the small GPT of `divlab.models.gpt` on bytes (mix_lm.model), or with mix_lm.model=null the
student, a Hugging Face LM on its tokenizer's tokens (conf/experiment/mixing/smollm2.yaml); the loss is the mean next-byte
cross-entropy of the batch (DoReMi's proxy run instead weights the per-group means, see
`divlab.mixing.doremi`). The budget is `trainer.max_steps` optimiser steps; every step a mixer
spends on probing (Aioli) is one of them.

Logged: val/loss/<group>, val/ppl/<group> (perplexity = exp(mean per-byte loss) of the group's
validation windows), val/avg_loss, val/avg_ppl (mean over groups), the same under test/, and
train/p/<group> (the current proportions). In the run directory: proportions.json (every change
of p with its step and reason), proportions.png, group_losses.json (per-group validation loss at
every evaluation, step 0 included) and whatever the mixer writes (e.g. aioli_A.json).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from divlab.errors import ConfigError
from divlab.mixing.base import Mixer
from divlab.objectives.lm import lm_loss
from divlab.tasks.base import DivlabTask, epoch_seed
from divlab.utils.io import atomic_write_json


def build(cfg: DictConfig, *, datamodule=None) -> MixLMTask:
    """task.builder of task=mix_lm: the GPT, the mixer (after the runs it learns from), the task."""
    from hydra.utils import instantiate

    from divlab.data.mixture import MixtureDataModule
    from divlab.utils.checks import build as build_spec

    if not isinstance(datamodule, MixtureDataModule):
        raise ConfigError("task=mix_lm needs data=mixture (a MixtureDataModule).")
    if not cfg.trainer.get("max_steps") or int(cfg.trainer.max_steps) < 1:
        raise ConfigError(
            "task=mix_lm counts its budget in steps; set trainer.max_steps to a positive integer."
        )
    datamodule.prepare_splits()  # a missing corpus fails here
    if cfg.mix_lm.get("threads"):  # a tiny model: extra intra-op threads only wait
        torch.set_num_threads(int(cfg.mix_lm.threads))
    mixer = build_spec(cfg.mixer)
    if not isinstance(mixer, Mixer):
        raise ConfigError(f"mixer._target_={cfg.mixer.get('_target_')!r} is not a divlab.mixing Mixer.")
    mixer.prepare(cfg)  # runs it learns from (grid, DoReMi, ...)
    torch.manual_seed(cfg.seed)  # same initial model for every mixer
    if cfg.mix_lm.get("model") is not None:
        model = instantiate(
            cfg.mix_lm.model, vocab_size=datamodule.vocab_size, context_length=datamodule.context_length
        )
    else:  # mix_lm.model=null: the student (a Hugging Face LM; conf/experiment/mixing/smollm2.yaml)
        from divlab.tasks.lm import build_hf_student

        if cfg.get("student") is None:
            raise ConfigError(
                "mix_lm.model=null trains cfg.student.model; add student to task.uses "
                "(see conf/experiment/mixing/smollm2.yaml)"
            )
        model = build_hf_student(cfg.student.model, tokenizer=datamodule.tokenizer)
        if model.context_length < datamodule.context_length + 1:
            raise ConfigError(
                f"student.model.context_length={model.context_length} is shorter than "
                f"data.datamodule.context_length={datamodule.context_length}; lower it"
            )
    return MixLMTask(
        model=model,
        mixer=mixer,
        groups=list(datamodule.groups),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        seed=cfg.seed,
        run_dir=cfg.get("run_dir"),
    )


def per_group_mean(values: torch.Tensor, groups: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of `values` per group (0 where absent), count per group)."""
    sums = torch.zeros(k, dtype=values.dtype, device=values.device).index_add(0, groups, values)
    counts = torch.bincount(groups, minlength=k).to(values.dtype)
    return sums / counts.clamp(min=1), counts


class MixLMTask(DivlabTask):
    reseed_each_epoch = False  # reseeded per optimiser step in training_step

    def __init__(
        self,
        *,
        model: nn.Module,  # GPT: ids (B, T) -> logits (B, T, V)
        mixer: Mixer,  # callback that sets the proportions
        groups: list[str],  # group names, in sampler order
        optimizer: Callable,  # partial: params -> optimizer
        scheduler: Callable | None = None,  # partial: optimizer -> LR scheduler, stepped every step
        seed: int = 0,  # dropout stream
        run_dir: str | None = None,  # where artifacts go (rank 0); None: nowhere
    ) -> None:
        super().__init__(seed=seed, task_name="mix_lm")
        self.model, self.mixer, self.groups, self.k = model, mixer, list(groups), len(groups)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.run_dir = run_dir
        self.loss_fn = lm_loss  # what mixers score examples with (DoReMi's reference model)
        self.p_history: list[dict] = []  # {"step", "p", "reason"} at every change
        self.loss_history: list[dict] = []  # {"step", "val_loss": [k]} at every evaluation
        self._eval_sums: torch.Tensor | None = None

    # -- what mixers use -------------------------------------------------------------------------
    @property
    def datamodule(self):
        return self.trainer.datamodule

    @property
    def proportions(self) -> np.ndarray:
        return self.datamodule.sampler.proportions.copy()

    def set_proportions(self, p, *, reason: str) -> None:
        """Set the sampler's p (rank 0's value on every rank) and record the change."""
        p = torch.as_tensor(np.asarray(p, dtype=np.float64))
        if self.trainer.world_size > 1:
            p = self.trainer.strategy.broadcast(p, src=0)
        p = p.numpy()
        self.datamodule.sampler.set_proportions(p)
        step = int(self.trainer.global_step)
        if not self.p_history or not np.allclose(self.p_history[-1]["p"], p, atol=1e-12):
            self.p_history.append(
                {"step": step, "p": [float(v) for v in self.datamodule.sampler.proportions], "reason": reason}
            )

    @torch.no_grad()
    def group_losses(self, split: str = "val") -> np.ndarray:
        """Mean per-byte loss of each group on `split`, now (all ranks together); restores train mode."""
        was_training = self.model.training
        self.model.eval()
        sums = torch.zeros(self.k, 2, dtype=torch.float64, device=self.device)
        for windows, group_ids in self.datamodule.eval_loader(split):
            sums += self._loss_sums(windows.to(self.device), group_ids.to(self.device))
        self.model.train(was_training)
        sums = self._reduce(sums)
        return (sums[:, 0] / sums[:, 1]).cpu().numpy()

    def write_artifact(self, name: str, obj) -> None:
        if self.run_dir and self.trainer.is_global_zero:
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_json(Path(self.run_dir) / name, obj)

    # -- training -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def configure_callbacks(self):
        return [self.mixer]

    def on_train_start(self) -> None:
        if not self.loss_history:  # step-0 losses (Skill-It's graph uses them)
            self.loss_history.append({"step": 0, "val_loss": [float(v) for v in self.group_losses("val")]})

    def training_step(self, batch, batch_idx):
        torch.manual_seed(epoch_seed(self.seed, self.global_step, self.global_rank))  # dropout, per step
        x, y, groups = self.datamodule.train_batch(int(self.global_step), device=self.device)
        example_loss = lm_loss(self.model(x), y, reduction="none").mean(dim=1)
        group_loss, counts = per_group_mean(example_loss, groups, self.k)
        weights = self.mixer.loss_weights(self, group_loss, x, y, groups)
        loss = example_loss.mean() if weights is None else (weights.to(group_loss) * group_loss).sum()
        self.log("train/loss", example_loss.mean().detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    # -- evaluation -----------------------------------------------------------------------------
    def _loss_sums(self, windows: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        x, y = windows[:, :-1], windows[:, 1:]
        per_window = lm_loss(self.model(x), y, reduction="none").sum(dim=1).double()
        sums = torch.zeros(self.k, 2, dtype=torch.float64, device=windows.device)
        sums[:, 0].index_add_(0, group_ids, per_window)
        sums[:, 1].index_add_(0, group_ids, torch.full_like(per_window, y.shape[1]))
        return sums

    def _reduce(self, sums: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        if torch.any(sums[:, 1] == 0):
            raise ConfigError(
                "a group has no evaluation windows; raise data.datamodule.val_windows/test_windows."
            )
        return sums

    def _eval_step(self, batch) -> None:
        windows, group_ids = batch
        sums = self._loss_sums(windows, group_ids)
        self._eval_sums = sums if self._eval_sums is None else self._eval_sums + sums

    def _eval_end(self, stage: str) -> np.ndarray:
        sums, self._eval_sums = self._reduce(self._eval_sums), None
        losses = (sums[:, 0] / sums[:, 1]).float()
        ppl = torch.exp(losses)
        for g, name in enumerate(self.groups):
            self.log(f"{stage}/loss/{name}", losses[g], sync_dist=False)
            self.log(f"{stage}/ppl/{name}", ppl[g], sync_dist=False)
        self.log(f"{stage}/avg_loss", losses.mean(), sync_dist=False)
        self.log(f"{stage}/avg_ppl", ppl.mean(), sync_dist=False)
        return losses.cpu().numpy()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        losses = self._eval_end("val")
        if self.trainer.sanity_checking:
            return
        for g, name in enumerate(self.groups):
            self.log(f"train/p/{name}", float(self.datamodule.sampler.proportions[g]))
        self.loss_history.append({"step": int(self.global_step), "val_loss": [float(v) for v in losses]})

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def on_train_end(self) -> None:
        self.write_artifact(
            "proportions.json",
            {
                "groups": self.groups,
                "history": self.p_history,
                "final": [float(v) for v in self.proportions],
                "max_steps": int(self.trainer.max_steps),
            },
        )
        self.write_artifact("group_losses.json", {"groups": self.groups, "history": self.loss_history})
        if self.run_dir and self.trainer.is_global_zero:
            from divlab.mixing.plots import plot_proportions

            plot_proportions(
                self.p_history,
                self.groups,
                total_steps=int(self.trainer.global_step),
                path=Path(self.run_dir) / "proportions.png",
                title=self.mixer.name,
            )

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"},
        }

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint_meta(self) -> dict:
        return {
            "groups": self.groups,
            "p_history": self.p_history,
            "loss_history": self.loss_history,
            "proportions": [float(v) for v in self.proportions],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        meta = checkpoint.get("divlab", {})
        self.p_history = list(meta.get("p_history", []))
        self.loss_history = list(meta.get("loss_history", []))
        self._restored_p = meta.get("proportions")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        restored = getattr(self, "_restored_p", None)
        if restored is not None:  # resumed: the sampler continues with the saved p
            self.datamodule.sampler.set_proportions(restored)
