"""task=dpo's held-out metrics: ECE and distinct-n against hand computations, and the generation metrics of
divlab.tasks.dpo_eval on a tiny random Llama (kl_seq is 0 when the policy is the reference)."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from divlab.metrics.calibration import expected_calibration_error
from divlab.tasks.dpo_eval import diversity, response_terms


def test_ece_by_hand():
    # bins of width 0.1: 0.05 -> bin 0; 0.3 -> (0.2, 0.3]; 0.35, 0.38 -> (0.3, 0.4]; 0.95, 1.0 -> (0.9, 1.0]
    conf = [0.05, 0.3, 0.35, 0.38, 0.95, 1.0]
    correct = [0, 1, 1, 0, 1, 1]
    # bin 0: |0 - 0.05| = 0.05 (1 row); bin 2: |1 - 0.3| = 0.7 (1 row); bin 3: acc 0.5, conf 0.365 -> 0.135
    # (2 rows); bin 9: acc 1, conf 0.975 -> 0.025 (2 rows)
    expected = (1 * 0.05 + 1 * 0.7 + 2 * 0.135 + 2 * 0.025) / 6
    assert expected_calibration_error(conf, correct) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0  # confident and right: calibrated
    assert expected_calibration_error([0.0, 0.0], [1, 1]) == 1.0
    # one bin: |mean accuracy - mean confidence|
    assert expected_calibration_error([0.2, 0.9], [1, 0], bins=1) == pytest.approx(abs(0.5 - 0.55))
    assert math.isnan(expected_calibration_error([], []))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        expected_calibration_error([1.5], [1])


def test_distinct_n_by_hand():
    eos = 9
    samples = [[1, 2, 3, eos], [1, 2, 4, eos], [5, eos]]
    # unigrams (eos dropped): 1 2 3 1 2 4 5 -> 5 unique of 7; bigrams: 12 23 12 24 -> 3 unique of 4
    assert diversity(samples, eos_id=eos) == {"distinct_1": 5 / 7, "distinct_2": 3 / 4}


@pytest.fixture
def tiny(compose_cfg, tiny_llama_dir):
    from hydra.utils import instantiate

    from divlab.utils.checks import build

    cfg = compose_cfg(
        "task=dpo",
        "student.model.source=local",
        f"+student.model.path={tiny_llama_dir}",
        "data.datamodule.n_train=4",
        "data.datamodule.n_val=2",
        "data.datamodule.n_test=3",
        "data.datamodule.batch_size=2",
        "data.datamodule.max_prompt_tokens=48",
        "data.datamodule.max_response_tokens=8",
    )
    return build(cfg.student.model), instantiate(cfg.data.datamodule)


def test_response_terms_by_hand(tiny):
    model, dm = tiny
    from divlab.tasks.dpo_eval import response_batch

    prompt, response = dm.dataset("val").rows[0][0], [5, 7, model.eos_id]
    batch = response_batch([prompt], [response], pad_id=model.pad_id)
    logp, entropy = response_terms(model, batch)
    with torch.no_grad():
        logits = model(batch["tokens"]).float()[0]
    p = len(prompt)
    steps = torch.log_softmax(logits[p - 1 : p - 1 + len(response)], dim=-1)
    assert logp.item() == pytest.approx(steps[torch.arange(3), torch.tensor(response)].sum().item(), abs=1e-4)
    assert entropy.item() == pytest.approx(-(steps.exp() * steps).sum().item(), abs=1e-4)


def test_generation_metrics_kl_zero_when_policy_is_reference(tiny):
    from divlab.divergences import get_divergence
    from divlab.errors import ConfigError
    from divlab.objectives.fdpo import FDPOLoss
    from divlab.tasks.dpo import DPOTask

    model, dm = tiny
    task = DPOTask(
        model=model,
        reference=copy.deepcopy(model),
        loss=FDPOLoss(divergence=get_divergence("reverse_kl"), beta=0.1),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        samples=3,
        max_new_tokens=dm.max_response_tokens,
        eval_batch_size=4,
    )
    task._trainer = SimpleNamespace(datamodule=dm, sanity_checking=False)
    m = task.generation_metrics("test")
    assert set(m) == {
        "exact_match",
        "ece",
        "confidence",
        "distinct_1",
        "distinct_2",
        "distinct_samples",
        "entropy",
        "kl_seq",
    }
    assert abs(m["kl_seq"]) < 1e-4  # log pi_theta(y) - log pi_ref(y) = 0 on every sample
    assert 0 <= m["exact_match"] <= 100 and 0 <= m["ece"] <= 100 and 0 < m["confidence"] <= 1
    assert 0 < m["distinct_1"] <= 1 and 0 <= m["distinct_2"] <= 1 and m["entropy"] > 0
    # every prompt is wrong (random model): ECE = the mean confidence (one-sided gap, x 100)
    if m["exact_match"] == 0:
        assert m["ece"] == pytest.approx(100 * m["confidence"], rel=1e-6)
    assert task.generation_metrics("test") == m  # the samples are seeded: reproducible
    with torch.no_grad():
        next(task.model.parameters()).add_(0.5)
    assert task.generation_metrics("test")["kl_seq"] != pytest.approx(0, abs=1e-4)
    with pytest.raises(ConfigError, match=r"dpo\.samples must be an integer >= 0"):
        from divlab.tasks.dpo import check_settings

        check_settings({"beta": 0.1, "samples": -1})
