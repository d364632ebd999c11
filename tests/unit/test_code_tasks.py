"""Code problems for task=code_eval (divlab.data.code_tasks): every generated few-shot problem's reference
solution passes its own tests through the sandboxed executor (and a wrong one does not), problems are fixed by
the seed, lame prompts drop exactly the examples, and HumanEval loads offline with its canonical solutions
passing."""

import pytest

from divlab.data.code_tasks import (
    FAMILIES,
    CodeProblemsDataModule,
    fewshot_problems,
    humaneval_problems,
    lame_prompt,
    stop_completion,
)
from divlab.errors import ConfigError
from divlab.metrics.code_exec import run_check


def test_every_reference_solution_passes_its_tests_and_a_constant_does_not():
    problems = fewshot_problems(len(FAMILIES), seed=3)
    assert sorted(p["family"] for p in problems) == sorted(FAMILIES)  # one of each family
    for p in problems:
        assert run_check(p["prompt"], p["solution"], p["test"], p["entry_point"]).status == "passed", p
        assert run_check(p["prompt"], " None\n", p["test"], p["entry_point"]).status == "failed", p


def test_problems_are_fixed_by_the_seed_and_the_lame_prompt_has_no_examples():
    a, b, c = fewshot_problems(8, seed=1), fewshot_problems(8, seed=1), fewshot_problems(8, seed=2)
    assert a == b and a != c
    for p in a:
        shown = p["prompt"].count(">>>")
        assert shown == 5 and p["test"].count("assert") == 5 + 4
        assert ">>>" not in p["lame_prompt"] and p["lame_prompt"].endswith("    return")
        kept = [line for line in p["prompt"].splitlines() if ">>>" not in line]
        assert len(p["lame_prompt"].splitlines()) == len(kept) - shown  # each example's output line went too


def test_lame_prompt_of_a_humaneval_style_docstring():
    prompt = (
        "def f(xs):\n"
        '    """ Sum of xs.\n'
        "    For example:\n"
        "    >>> f([1, 2])\n"
        "    3\n"
        "    >>> f([])\n"
        "    0\n"
        '    """\n'
    )
    assert lame_prompt(prompt) == 'def f(xs):\n    """ Sum of xs.\n    """\n'
    assert lame_prompt("def g():\n    pass\n") == "def g():\n    pass\n"


def test_stop_completion_keeps_the_body_only():
    text = "    return x\n\n    # done\ndef other():\n    pass\n"
    assert stop_completion(text) == "    return x\n\n    # done\n"
    assert stop_completion("x + 1\n```\nText") == ""
    assert stop_completion("x + 1\n```\nText", continues_line=True) == "x + 1\n"


def test_humaneval_loads_offline_and_canonical_solutions_pass():
    problems = humaneval_problems()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert sum(">>>" in p["prompt"] for p in problems) >= 70  # 76 of 164 use >>> examples
    assert all(">>>" not in p["lame_prompt"] for p in problems)
    for p in problems[:3]:
        assert run_check(p["prompt"], p["solution"], p["test"], p["entry_point"]).status == "passed"
        assert run_check(p["prompt"], "    return None\n", p["test"], p["entry_point"]).status == "failed"


def test_data_module_limit_suffix_and_bad_settings():
    dm = CodeProblemsDataModule(source="humaneval", limit=3, prompt_suffix="    ", batch_size=2)
    batches = list(dm.test_dataloader())
    assert [len(b) for b in batches] == [2, 1]
    assert all(
        p["prompt"].endswith('"""\n    ') and p["lame_prompt"].endswith("    ") for b in batches for p in b
    )
    with pytest.raises(ConfigError, match="data.datamodule.source"):
        CodeProblemsDataModule(source="mbpp")
    with pytest.raises(ConfigError, match="families"):
        CodeProblemsDataModule(families=["nope"]).setup()
