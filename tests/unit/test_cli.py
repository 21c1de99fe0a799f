"""The `rlhfkit` command line, run as a real subprocess (and `main()` in-process for exit codes)."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from rlhfkit import __version__
from rlhfkit.cli import command, commands, main, register
from rlhfkit.config import check_config_class, load_config, option
from rlhfkit.errors import DataError
from rlhfkit.metrics import MetricsLogger, MetricsViewConfig

RLHFKIT = [sys.executable, "-m", "rlhfkit"]


def rlhfkit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*RLHFKIT, *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: {message}"]
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    with MetricsLogger(tmp_path / "run") as logger:
        for step in range(5):
            logger.log(step, {"loss": 1.0 / (step + 1), "kl": 0.01 * step})
    return tmp_path / "run"


# --- help, version, usage errors ------------------------------------------------------------


def test_help_lists_commands_and_imports_no_torch():
    result = rlhfkit("--help")
    assert result.returncode == 0
    assert "metrics" in result.stdout and "usage: rlhfkit <command>" in result.stdout
    # `rlhfkit --help` must stay instant: nothing heavy is imported to list the commands.
    code = (
        "import sys; from rlhfkit.cli import main; main(['--help']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert probe.stdout.splitlines()[-1] == "[]"


def test_every_command_help_and_print_config_import_no_torch():
    # The option lists come from the config classes, which live in modules without torch:
    # `rlhfkit ppo --help` took 8 s on 2 cores when they imported it.
    code = (
        "import sys; from rlhfkit.cli import commands, main\n"
        "for c in commands(): main([c.name, '--help'])\n"
        "main(['demo', '--print-config'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert "lora.save" in probe.stdout and "ent_coef" in probe.stdout  # the options were listed
    assert probe.stdout.splitlines()[-1] == "[]"


def test_console_script_and_version():
    script = Path(sys.executable).with_name("rlhfkit")
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"rlhfkit {__version__}"


def test_command_help_lists_every_option_with_its_default():
    result = rlhfkit("metrics", "--help")
    assert result.returncode == 0
    for name in ("run_dir", "columns", "last", "follow", "poll_s"):
        assert f"\n  {name} " in result.stdout
    assert "(int | null >= 1, default 20)" in result.stdout and "(str, required)" in result.stdout


def test_unknown_command_is_one_line_exit_2():
    from rlhfkit.cli import commands
    listed = ", ".join(c.name for c in commands() if not c.name.startswith("test-"))
    expected = f"unknown command 'metric'; did you mean 'metrics'? (commands: {listed})"
    assert_one_line_error(rlhfkit("metric"), expected)


def test_bad_option_is_one_line_exit_2(run_dir):
    typo = rlhfkit("metrics", f"run_dir={run_dir}", "lastt=3")
    assert_one_line_error(typo, "unknown option 'lastt'; did you mean 'last'?")
    assert_one_line_error(rlhfkit("metrics", f"run_dir={run_dir}", "last=0"), "last: must be >= 1, got 0")
    result = rlhfkit("metrics", "--bogus")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "--bogus" in result.stderr


def test_debug_shows_the_traceback(run_dir):
    result = rlhfkit("metrics", f"run_dir={run_dir}", "last=0", "--debug")
    assert result.returncode == 2
    assert result.stderr.startswith("Traceback") and "ConfigError" in result.stderr
    assert result.stderr.splitlines()[-1] == "error: last: must be >= 1, got 0"


# --- the built-in `metrics` command end to end ----------------------------------------------


def test_metrics_prints_the_last_rows(run_dir):
    result = rlhfkit("metrics", f"run_dir={run_dir}", "columns=[step, loss]", "last=2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "step  loss",
        "----  ----",
        "   3  0.25",
        "   4   0.2",
        "(last 2 of 5 rows; last=null shows all)",
    ]
    assert_one_line_error(
        rlhfkit("metrics", f"run_dir={run_dir / 'missing'}"),
        f"{run_dir / 'missing' / 'metrics.jsonl'}: no metrics file here (has a run logged to this folder?)",
    )


def test_config_file_and_print_config(tmp_path, run_dir):
    path = tmp_path / "view.yaml"
    path.write_text(f"run_dir: {run_dir}\nlast: 3\n")
    result = rlhfkit("metrics", "--config", str(path), "--print-config", "follow=true")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["last"] == 3 and printed["follow"] is True
    path.write_text(result.stdout)
    assert load_config(MetricsViewConfig, path) == MetricsViewConfig(run_dir=str(run_dir), last=3, follow=True)


def test_follow_prints_new_rows_and_ctrl_c_exits_130(run_dir):
    # A shell without job control starts background jobs with SIGINT ignored, and Python
    # keeps an inherited SIG_IGN: give the child the default, as a terminal would.
    proc = subprocess.Popen(
        [*RLHFKIT, "metrics", f"run_dir={run_dir}", "follow=true", "poll_s=0.05", "columns=[step,loss]"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def wait_for(text: str) -> None:
        while text not in lines.get(timeout=30):
            pass

    try:
        wait_for("following")
        with MetricsLogger(run_dir) as logger:
            logger.log(5, {"loss": 0.125, "kl": 0.5})
        wait_for("step=5  loss=0.125")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert proc.stderr.read() == "interrupted (Ctrl-C)\n"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


# --- registration and exit codes, in-process ------------------------------------------------


@dataclass
class EchoConfig:
    code: int = option(0, "exit code to return")
    fail: str = option("", "raise this kind of failure: data, interrupt, or nothing")


def echo(cfg: EchoConfig) -> int:
    if cfg.fail == "data":
        raise DataError("prompts.jsonl", 3, "prompt", "expected a string,\ngot 3")
    if cfg.fail == "interrupt":
        raise KeyboardInterrupt
    return cfg.code


register("test-echo", EchoConfig, echo, "a command for the CLI tests")


def test_registered_command_exit_codes(capsys):
    assert main(["test-echo", "code=3"]) == 3
    assert main(["test-echo", "fail=data"]) == 2
    assert capsys.readouterr().err == "error: prompts.jsonl:3: field 'prompt': expected a string, got 3\n"
    assert main(["test-echo", "fail=interrupt"]) == 130
    assert main([]) == 2 and main(["--help"]) == 0


def test_command_decorator_and_duplicate_names():
    @command("test-decorated", EchoConfig, "registered with the decorator")
    def run(cfg: EchoConfig) -> int:
        return cfg.code + 1

    assert main(["test-decorated", "code=4"]) == 5
    with pytest.raises(ValueError, match="already registered"):
        register("test-echo", EchoConfig, echo, "again")


def test_every_registered_config_class_documents_every_option():
    for cmd in commands():
        check_config_class(cmd.config_class())
