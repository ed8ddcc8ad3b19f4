import subprocess
import sys

from diffreid.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for module, _ in COMMANDS:
        assert module.replace("_", "-") in out, module


def test_console_script_help_is_fast_and_clean():
    proc = subprocess.run([sys.executable, "-m", "diffreid", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: diffreid" in proc.stdout
    # --help must not pay for torch/ray imports
    probe = "import sys; from diffreid.cli import build_parser; build_parser(); print(sorted(m for m in ('torch','ray','diffusers') if m in sys.modules))"
    mods = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert mods.stdout.strip() == "[]", mods.stdout + mods.stderr


def test_user_errors_are_one_line(tmp_path, capsys):
    rc = main(["data", "verify", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
