"""OFA-KD stage heads and the distillation warm-up of the distill task: hooks, optimiser, checkpoint, losses."""

import functools

import pytest
import torch
import torch.nn.functional as F
from scipy.special import rel_entr, softmax

from divlab.divergences import get_divergence
from divlab.errors import ConfigError
from divlab.models import MLP, SmallCNN, build_model
from divlab.models.features import build_stage_heads, default_stages, feature_shapes, head_key
from divlab.tasks import DistillTask
from divlab.tasks.distill import stage_settings

SGD = functools.partial(torch.optim.SGD, lr=0.1)


def test_default_stages_are_every_stage_but_the_last():
    assert default_stages(build_model("resnet8x4", num_classes=100)) == ("stage1", "stage2")
    assert default_stages(build_model("vgg8", num_classes=100)) == ("stage1", "stage2", "stage3", "stage4")
    assert default_stages(SmallCNN(in_channels=1, num_classes=10, width=4)) == ("stage1", "stage2")
    assert default_stages(MLP(input_shape=[1, 8, 8], num_classes=10, hidden=[16, 8])) == ("net.2",)
    assert default_stages(MLP(input_shape=[1, 8, 8], num_classes=10, hidden=[16])) == ()


def test_stage_heads_read_the_named_features_and_map_them_to_logits():
    model = build_model("resnet8x4", num_classes=100)
    shapes = feature_shapes(model, ["stage1", "stage2", "stage3"], input_shape=(3, 32, 32))
    # widths (32, 64, 128, 256): stage k has widths[k] channels, side 32 / 2^(k-1)
    assert shapes == {"stage1": (64, 32, 32), "stage2": (128, 16, 16), "stage3": (256, 8, 8)}
    heads = build_stage_heads(model, ["stage1", "stage2"], input_shape=(3, 32, 32))
    assert list(heads) == ["stage1", "stage2"]
    strided = [m for m in heads["stage1"].modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 2  # 32 -> 16 -> 8, the side of the last stage
    x = torch.randn(2, 64, 32, 32)
    assert heads["stage1"](x).shape == (2, 100)
    mlp = MLP(input_shape=[1, 8, 8], num_classes=10, hidden=[16, 8])
    head = build_stage_heads(mlp, ["net.2"], input_shape=(1, 8, 8))[head_key("net.2")]
    assert head(torch.randn(3, 16)).shape == (3, 10)


def test_a_wrong_stage_name_fails_in_one_sentence_listing_the_names():
    model = build_model("resnet8x4", num_classes=100)
    with pytest.raises(ConfigError) as err:
        build_stage_heads(model, ["stage1", "stage9"], input_shape=(3, 32, 32))
    text = str(err.value)
    assert "stage9" in text and "stage1, stage2, stage3, pool" in text and "\n" not in text


def test_stage_settings_check_the_weights():
    cnn = SmallCNN(in_channels=1, num_classes=10, width=4)
    assert stage_settings({"stages": "auto", "stage_weights": None}, cnn) == (
        ["stage1", "stage2"],
        [1.0, 1.0],
    )
    assert stage_settings({"stages": ["stage2"], "stage_weights": 0.5}, cnn) == (["stage2"], [0.5])
    assert stage_settings({"stages": [], "stage_weights": None}, cnn) == ([], [])
    with pytest.raises(ConfigError, match="distill.stage_weights"):
        stage_settings({"stages": ["stage1", "stage2"], "stage_weights": [1.0]}, cnn)


def _task(**kwargs):
    torch.manual_seed(0)
    student = SmallCNN(in_channels=1, num_classes=10, width=4)
    teacher = SmallCNN(in_channels=1, num_classes=10, width=8)
    stages = kwargs.pop("stages", ["stage1", "stage2"])
    heads = build_stage_heads(student, stages, input_shape=(1, 8, 8)) if stages else None
    weights = kwargs.pop("stage_weights", [0.5, 2.0][: len(stages)])
    task = DistillTask(
        model=student,
        teacher=teacher,
        divergence=get_divergence("forward_kl"),
        optimizer=SGD,
        stage_heads=heads,
        stage_names=stages,
        stage_weights=weights,
        **kwargs,
    )
    return task, student, teacher


def test_heads_are_trained_and_saved_with_the_student_and_the_teacher_is_not():
    task, student, teacher = _task()
    optimised = {id(p) for group in task.configure_optimizers().param_groups for p in group["params"]}
    heads = {id(p) for p in task.stage_heads.parameters()}
    assert heads and heads <= optimised
    assert {id(p) for p in student.parameters()} <= optimised
    assert not optimised & {id(p) for p in teacher.parameters()}
    keys = task.state_dict().keys()
    assert any(k.startswith("stage_heads.stage1.") for k in keys) and any(
        k.startswith("model.") for k in keys
    )
    assert all(k.startswith(("model.", "stage_heads.")) for k in keys)
    assert sum(task.state_dict()[k].numel() for k in keys if k.startswith("stage_heads.")) == sum(
        v.numel() for v in task.stage_heads.state_dict().values()
    )


def _kl_t2(teacher_logits, student_logits, T):
    p = softmax(teacher_logits.double().numpy() / T, -1)
    q = softmax(student_logits.detach().double().numpy() / T, -1)
    return T**2 * rel_entr(p, q).sum(-1).mean()


@pytest.mark.parametrize("epoch,warmup", [(0, 0), (0, 20), (9, 20), (19, 20), (30, 20)])
def test_loss_is_ce_plus_warmed_up_final_and_stage_terms(monkeypatch, epoch, warmup):
    """loss = CE + min((epoch+1)/w, 1) T^2 [kd_weight KL(t||s) + sum_k w_k KL(t||head_k)], by hand in float64."""
    monkeypatch.setattr(DistillTask, "current_epoch", property(lambda self: epoch))
    T = 2.0
    task, student, teacher = _task(temperature=T, kd_weight=0.7, warmup_epochs=warmup)
    x, y = torch.randn(5, 1, 8, 8), torch.arange(5)
    task.eval()  # BatchNorm on running statistics: the same outputs twice
    loss = task.training_step((x, y), 0)
    with torch.no_grad():
        t = teacher(x)
        f1 = student.stage1(x)
        f2 = student.stage2(f1)
        s = student(x)
        h1, h2 = task.stage_heads["stage1"](f1), task.stage_heads["stage2"](f2)
    factor = 1.0 if warmup == 0 else min((epoch + 1) / warmup, 1.0)
    assert factor == {(0, 0): 1.0, (0, 20): 0.05, (9, 20): 0.5, (19, 20): 1.0, (30, 20): 1.0}[(epoch, warmup)]
    expected = F.cross_entropy(s, y).item() + factor * (
        0.7 * _kl_t2(t, s, T) + 0.5 * _kl_t2(t, h1, T) + 2.0 * _kl_t2(t, h2, T)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_warmup_must_be_a_non_negative_integer(compose_cfg):
    from divlab.tasks.distill import build

    cfg = compose_cfg(
        "experiment=kd/digits", "distill.warmup_epochs=-1", "distill.cache_teacher_logits=false"
    )
    with pytest.raises(ConfigError, match="distill.warmup_epochs"):
        build(cfg)
