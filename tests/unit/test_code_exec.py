"""The sandboxed code executor (divlab.metrics.code_exec): a correct program passes, a wrong one fails, a
write outside the temp dir is refused (and the file never appears), an endless loop is killed by the timeout,
and sockets, process spawning and file removal outside the temp dir are refused."""

import pytest

from divlab.metrics.code_exec import check_program, run_check, run_program

PROMPT = 'def add_three(x):\n    """>>> add_three(1)\n    4\n    """\n'
TEST = "def check(candidate):\n    assert candidate(1) == 4\n    assert candidate(-3) == 0\n"


def test_a_correct_completion_passes_and_a_wrong_one_fails():
    assert run_check(PROMPT, "    return x + 3\n", TEST, "add_three").status == "passed"
    wrong = run_check(PROMPT, "    return x + 2\n", TEST, "add_three")
    assert wrong.status == "failed" and "AssertionError" in wrong.detail


def test_a_completion_that_raises_fails_with_its_exception():
    result = run_check(PROMPT, "    return y\n", TEST, "add_three")
    assert result.status == "failed" and "NameError" in result.detail


@pytest.mark.parametrize("how", ["open", "pathlib", "os_open", "caught"])
def test_writing_outside_the_temp_dir_is_refused_and_leaves_no_file(tmp_path, how):
    target = tmp_path / "escaped.txt"
    body = {
        "open": f"    open({str(target)!r}, 'w').write('x')\n",
        "pathlib": f"    import pathlib; pathlib.Path({str(target)!r}).write_text('x')\n",
        "os_open": f"    import os; os.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))\n",
        # the candidate swallows the refusal: the run still fails (the refusal is recorded)
        "caught": f"    try:\n        open({str(target)!r}, 'w')\n    except Exception:\n        pass\n",
    }[how]
    result = run_check(PROMPT, body + "    return x + 3\n", TEST, "add_three")
    assert result.status == "failed"
    assert "outside the temp dir" in result.detail
    assert not target.exists()


def test_files_inside_the_temp_dir_can_be_written_and_read():
    body = "    open('scratch.txt', 'w').write(str(x))\n    return int(open('scratch.txt').read()) + 3\n"
    assert run_check(PROMPT, body, TEST, "add_three").status == "passed"


def test_removing_or_renaming_outside_the_temp_dir_is_refused(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("data")
    for op in (
        f"os.remove({str(keep)!r})",
        f"os.rename({str(keep)!r}, 'moved.txt')",
        f"os.mkdir({str(tmp_path / 'd')!r})",
    ):
        result = run_program(f"import os\n{op}\n")
        assert result.status == "failed" and "outside the temp dir" in result.detail, op
    assert keep.read_text() == "data" and not (tmp_path / "d").exists()


def test_an_endless_loop_is_killed_by_the_timeout():
    result = run_check(PROMPT, "    while True:\n        pass\n", TEST, "add_three", timeout=1.0)
    assert result.status == "timeout"


@pytest.mark.parametrize(
    "source",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', 9))\n",
        "import socket\nsocket.socket()\n",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9')\n",
    ],
)
def test_network_use_fails(source):
    result = run_program(source)
    assert result.status == "failed" and "network" in result.detail


@pytest.mark.parametrize(
    "source",
    [
        "import subprocess\nsubprocess.run(['true'])\n",
        "import os\nos.system('true')\n",
        "import os\nos.execv('/bin/true', ['true'])\n",
        "import os\nos.fork()\n",
    ],
)
def test_spawning_processes_fails(source):
    result = run_program(source)
    assert result.status == "failed" and "spawning" in result.detail


def test_an_early_exit_zero_is_not_a_pass():
    assert run_program("import os\nos._exit(0)\n").status == "error"
    assert run_program("raise SystemExit(0)\n").status == "failed"


def test_check_program_runs_check_on_the_entry_point():
    program = check_program(PROMPT, "    return x + 3\n", TEST, "add_three")
    assert program.rstrip().endswith("check(add_three)") and program.startswith(PROMPT)


def test_a_completion_that_does_not_parse_fails():
    result = run_check(PROMPT, "    return (x +\n", TEST, "add_three")
    assert result.status == "failed" and "SyntaxError" in result.detail
