"""f-DPO (divlab.objectives.fdpo) against DPO by hand, autograd of the library's generators and closed forms;
the preference rows of divlab.data.preference."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from divlab.data.preference import offline_rows, pair_batch, read_rows, wrong_answer
from divlab.divergences import get_divergence
from divlab.errors import ConfigError
from divlab.objectives.fdpo import SCALE, FDPOLoss, dpo_f_prime

MEMBERS = [
    ("reverse_kl", {}),
    ("forward_kl", {}),
    ("js", {}),
    ("alpha", {"alpha": 0.3}),
    ("alpha", {"alpha": 0.7}),
]


def first_integer(text: str) -> int | None:
    found = re.search(r"-?\d+", text)
    return int(found.group()) if found else None


def logps(seed: int, n: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [-30 * torch.rand(n, generator=g, dtype=torch.float64) for _ in range(4)]


def test_reverse_kl_is_dpo_by_hand():
    pw, pl, rw, rl = logps(0)
    beta = 0.25
    out = FDPOLoss(divergence=get_divergence("reverse_kl"), beta=beta)(
        policy_chosen=pw, policy_rejected=pl, ref_chosen=rw, ref_rejected=rl
    )
    logits = beta * ((pw - rw) - (pl - rl))  # Rafailov et al. 2023, the DPO loss
    hand = -F.logsigmoid(logits).mean()
    assert out["loss"].dtype == torch.float64
    torch.testing.assert_close(out["loss"], hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["margin"], logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["chosen_reward"], beta * (pw - rw + 1), rtol=1e-12, atol=1e-12)
    assert out["accuracy"] == pytest.approx(float((logits > 0).double().mean()))


@pytest.mark.parametrize("name,kwargs", MEMBERS)
def test_f_prime_is_autograd_of_the_library_generator(name, kwargs):
    """The paper's f(u) is the perspective u f_lib(1/u) of the library member (times SCALE); its autograd
    derivative must equal the closed form dpo_f_prime evaluates in log u."""
    d = get_divergence(name, **kwargs)
    logu = torch.linspace(-6, 6, 49, dtype=torch.float64)
    u = logu.exp().requires_grad_(True)
    g = SCALE[name] * u * d.f(1 / u)
    (grad,) = torch.autograd.grad(g.sum(), u)
    torch.testing.assert_close(dpo_f_prime(d)(logu), grad, rtol=1e-9, atol=1e-9)


def test_closed_forms_of_the_paper():
    logu = torch.linspace(-5, 5, 41, dtype=torch.float64)
    u = logu.exp()
    js = dpo_f_prime(get_divergence("js"))(logu)
    torch.testing.assert_close(js, torch.log(2 * u / (1 + u)))
    assert js[20].item() == 0.0 and js[-1] < math.log(2)  # f'(1) = 0, bounded by log 2
    for a in (0.3, 0.5, 0.7):
        torch.testing.assert_close(dpo_f_prime(get_divergence("alpha", alpha=a))(logu), (1 - u ** (-a)) / a)
    torch.testing.assert_close(dpo_f_prime(get_divergence("forward_kl"))(logu), -1 / u)
    # alpha -> 0 approaches log u (reverse KL up to the constant 1, which cancels in the margin)
    torch.testing.assert_close(
        dpo_f_prime(get_divergence("alpha", alpha=1e-7))(logu), logu, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name,kwargs", MEMBERS)
def test_float32_is_finite_at_large_log_ratios(name, kwargs):
    d = get_divergence(name, **kwargs)
    logu = torch.tensor([-80.0, -30.0, 0.0, 30.0, 80.0], requires_grad=True)
    value = dpo_f_prime(d)(logu)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(logu.grad).all()
    assert (value.diff() >= 0).all() and (value[1:4].diff() > 0).all()  # f' increasing (saturates in float32)


@pytest.mark.parametrize(
    "name,kwargs,needle",
    [
        ("total_variation", {}, "divergence=total_variation"),
        ("jeffreys", {}, "jeffreys"),
        ("alpha", {"alpha": 1.5}, "alpha=1.5"),
    ],
)
def test_divergence_without_f_prime_for_dpo(name, kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        FDPOLoss(divergence=get_divergence(name, **kwargs), beta=0.1)


@pytest.mark.parametrize("beta", [0, -0.5, math.inf, True])
def test_beta_must_be_positive(beta):
    with pytest.raises(ConfigError, match="dpo.beta"):
        FDPOLoss(divergence=get_divergence("reverse_kl"), beta=beta)


# ------------------------------------------------------------------ data
def write(tmp_path, rows) -> str:
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_missing_field_names_its_line(tmp_path):
    good = {"prompt": "1+1?", "chosen": "2", "rejected": "3"}
    path = write(tmp_path, [good, good, {"prompt": "2+2?", "chosen": "4"}])
    with pytest.raises(ConfigError, match=r"line 3 has no usable 'rejected' field \(it is missing\)"):
        read_rows(path)


def test_chosen_equal_to_rejected_names_its_line(tmp_path):
    path = write(
        tmp_path,
        [{"prompt": "1+1?", "chosen": "2", "rejected": "3"}, {"prompt": "p", "chosen": "x", "rejected": "x"}],
    )
    with pytest.raises(ConfigError, match="line 2 has chosen == rejected"):
        read_rows(path)


def test_offline_preferences_are_verifiable():
    rows = offline_rows(200, data_seed=0)
    assert len({r["prompt"] for r in rows}) == 200
    for r in rows:
        assert first_integer(r["chosen"]) == int(r["answer"])
        wrong = first_integer(r["rejected"])
        assert wrong is not None and wrong != int(r["answer"]) and wrong >= 0
        assert r["rejected"].replace(str(wrong), "#") == r["chosen"].replace(r["answer"], "#")
    assert offline_rows(20, data_seed=1) != offline_rows(20, data_seed=0)


def test_wrong_answer_is_near_or_swapped():
    import numpy as np

    rng = np.random.default_rng(0)
    seen = {wrong_answer(47, rng) for _ in range(200)}
    assert seen <= {44, 45, 46, 48, 49, 50, 74} and 74 in seen and 46 in seen
    assert all(wrong_answer(1, rng) in (0, 2, 3, 4) for _ in range(50))


def test_pair_batch_layout():
    items = [([1, 2], [5, 6, 9], [7, 9], 0), ([3], [8, 9], [4, 4, 4, 9], 3)]
    b = pair_batch(items, pad_id=0)
    assert b["tokens"].tolist() == [[1, 2, 5, 6, 9], [3, 8, 9, 0, 0], [1, 2, 7, 9, 0], [3, 4, 4, 4, 9]]
    assert b["prompt_len"].tolist() == [2, 1, 2, 1] and b["length"].tolist() == [5, 3, 4, 5]
    assert b["index"].tolist() == [0, 3]
