"""The command line: rnn.py / python -m returnn, tasks, exit codes and the one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib

import pytest

from returnn.__main__ import TASK_HELP, main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_config(tmp_path, text: str, name: str = "exp.config") -> str:
    path = tmp_path / name
    path.write_text("#!rnn.py\n" + textwrap.dedent(text).lstrip("\n"))
    return str(path)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_usage_and_tasks(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    assert out.startswith("usage: rnn.py CONFIG")
    for task in TASK_HELP:
        assert f"  {task}" in out


def test_version(capsys):
    import returnn

    assert run_main(capsys, "--version") == (0, f"returnn {returnn.__version__}\n", "")


def test_no_arguments_prints_usage_and_fails(capsys):
    code, out, _ = run_main(capsys)
    assert code == 2
    assert "usage:" in out


def test_nop(tmp_path, capsys):
    code, out, err = run_main(capsys, write_config(tmp_path, 'task = "nop"\n'))
    assert code == 0, err
    assert "task=nop" in out


def test_missing_config_file(tmp_path, capsys):
    code, _, err = run_main(capsys, str(tmp_path / "missing.config"))
    assert code == 2
    assert err.strip().splitlines() == [f"returnn: error: config file not found: {str(tmp_path / 'missing.config')!r}"]


def test_syntax_error(tmp_path, capsys):
    filename = write_config(tmp_path, "x = [1,\n")
    code, _, err = run_main(capsys, filename)
    assert code == 2
    assert f"syntax error in config file {filename}:2" in err
    assert len(err.strip().splitlines()) == 1


def test_override_without_value(tmp_path, capsys):
    code, _, err = run_main(capsys, write_config(tmp_path, 'task = "nop"\n'), "++num_epochs")
    assert code == 2
    assert "'++num_epochs' needs a value" in err


def test_unknown_task(tmp_path, capsys):
    code, _, err = run_main(capsys, write_config(tmp_path, 'task = "trian"\n'))
    assert code == 2
    assert "unknown task 'trian'; choose one of: train, eval, forward" in err


def test_search_without_a_network_points_to_forward(tmp_path, capsys):
    code, _, err = run_main(capsys, write_config(tmp_path, "task = 'search'\n"))
    assert code == 2
    assert "task 'search' is for network dicts" in err and "run task 'forward'" in err


def test_compute_priors_without_a_network_points_to_forward(tmp_path, capsys):
    code, _, err = run_main(capsys, write_config(tmp_path, "task = 'compute_priors'\n"))
    assert code == 2
    assert "task 'compute_priors' is for network dicts" in err and "run task 'forward'" in err


def test_config_task_calls_function(tmp_path, capsys):
    marker = tmp_path / "called"
    filename = write_config(
        tmp_path,
        f"""
        def make_marker():
            open({str(marker)!r}, "w").close()
        """,
    )
    code, _, err = run_main(capsys, filename, "++task", "config:make_marker")
    assert code == 0, err
    assert marker.exists()


def test_optional_config_task(tmp_path, capsys):
    filename = write_config(tmp_path, "")
    assert run_main(capsys, filename, "++task", "optional-config:missing_func")[0] == 0
    code, _, err = run_main(capsys, filename, "++task", "config:missing_func")
    assert code == 2
    assert "defines no function 'missing_func'" in err


def test_internal_error_gives_exit_1_with_traceback_also_in_the_log_file(tmp_path, capsys):
    log_file = tmp_path / "returnn.log"
    filename = write_config(
        tmp_path,
        f"""
        log = [{str(log_file)!r}, "stdout"]

        def broken():
            raise RuntimeError("boom")
        """,
    )
    with pytest.raises(RuntimeError, match="boom"):
        main([filename, "++task", "config:broken"])
    text = log_file.read_text()
    assert "crashed:\nTraceback (most recent call last):" in text and text.rstrip().endswith("RuntimeError: boom")
    assert "Traceback" not in capsys.readouterr().out  # the terminal gets it once, from Python, on stderr


def test_log_file_target(tmp_path, capsys):
    log_file = tmp_path / "logs" / "returnn.log"
    filename = write_config(tmp_path, f'task = "nop"\nlog = [{str(log_file)!r}]\nlog_verbosity = 5\n')
    assert run_main(capsys, filename)[0] == 0
    assert "task=nop: nothing to do" in log_file.read_text()


# ------------------------------------------------------------------------------------------------ real processes


def run_process(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_rnn_py_process_exit_codes(tmp_path):
    ok = run_process(os.path.join(REPO_ROOT, "rnn.py"), write_config(tmp_path, 'task = "nop"\n'))
    assert ok.returncode == 0, ok.stderr
    bad = run_process(os.path.join(REPO_ROOT, "rnn.py"), write_config(tmp_path, "x = (\n", "bad.config"))
    assert bad.returncode == 2
    assert bad.stderr.startswith("returnn: error: syntax error in config file")
    assert "Traceback" not in bad.stderr
    crash = run_process(
        os.path.join(REPO_ROOT, "rnn.py"),
        write_config(tmp_path, "def f():\n    raise RuntimeError('boom')\n", "crash.config"),
        "++task",
        "config:f",
    )
    assert crash.returncode == 1
    assert "Traceback" in crash.stderr and "RuntimeError: boom" in crash.stderr


def test_python_dash_m_returnn(tmp_path):
    result = run_process("-m", "returnn", "--help", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m returnn CONFIG [CONFIG ...]")  # the program as it was started


def test_console_script_is_declared():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"]["returnn"] == "returnn.__main__:console_main"


def test_typo_in_known_key_is_an_error(tmp_path, capsys):
    filename = write_config(tmp_path, "bach_size = 5000\n")
    code, _, err = run_main(capsys, filename, "++task", "nop")
    assert code == 2
    assert "'bach_size' (did you mean 'batch_size'?)" in err
    code, out, err = run_main(capsys, filename, "++task", "nop", "++config_unknown_keys", "warn")
    assert code == 0, err
    assert "did you mean 'batch_size'?" in out


def test_custom_engine_must_subclass_engine(tmp_path, capsys):
    filename = write_config(
        tmp_path,
        """
        class CustomEngine:
            pass
        """,
    )
    code, _, err = run_main(capsys, filename)
    assert code == 2
    assert "config key 'CustomEngine': expected a subclass of returnn.torch.engine.Engine" in err


def test_custom_engine_runs_instead_of_engine(tmp_path, capsys):
    marker = tmp_path / "ran"
    filename = write_config(
        tmp_path,
        f"""
        from returnn.torch.engine import Engine

        class CustomEngine(Engine):
            def cleanup_old_models(self):
                open({str(marker)!r}, "w").close()
        """,
    )
    code, _, err = run_main(capsys, filename, "++task", "cleanup_old_models")
    assert code == 0, err
    assert marker.exists()


def test_help_names_the_program_as_it_was_started():
    from returnn.__main__ import program_name

    assert program_name("/x/returnn/__main__.py") == "python -m returnn"
    assert program_name("/venv/bin/returnn") == "returnn"
    assert program_name("returnn/rnn.py") == "returnn/rnn.py"
    assert program_name("/usr/bin/pytest") == program_name("/lib/pytest/__main__.py") == "rnn.py"
