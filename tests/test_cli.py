"""The command line as a newcomer meets it: every user error is one line on stderr naming what is at
fault, with exit status 2 and no traceback; folders are read recursively; progress bars only on a
terminal (never with --quiet); --verbose prints one line per phase; the weights cache is keyed by the
GGUF's content and shown / cleared by `focusllm cache`.

Runs the CLI in-process where it can (fast) and as `python -m focus_core` where the real entry point
matters (exit status, no traceback, terminals). Model runs use a tiny random model saved to a folder."""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import types
from pathlib import Path

import pytest

from focus_core import cli, load_model, loading
from focus_core.documents import read_files
from focus_core.loading import ModelLoadError

ROOT = Path(__file__).parent.parent
TINY = [
    "--dtype",
    "float32",
    "--native-window",
    "128",
    "--chunk-size",
    "32",
    "--local-window",
    "24",
    "--dynamic-prompt-len",
    "8",
    "--max-new-tokens",
    "6",
]
WORDS = "The keeper of the lighthouse kept a log of every ship that passed the cape. " * 12


@pytest.fixture
def docs(tmp_path):
    """A folder tree: text at two depths, a hidden folder, a binary file and a Latin-1 file."""
    root = tmp_path / "docs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("Alpha. " + WORDS)
    (root / "sub" / "b.md").write_text("Bravo. " + WORDS)
    (root / "sub" / "deeper" / "c.py").write_text("# Charlie\n")
    (root / ".git" / "config").write_text("Hidden. must not be read")
    (root / ".hidden.txt").write_text("Hidden too.")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    (root / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    return root


def run_main(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_module(*argv, env=None, cwd=ROOT, timeout=300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "focus_core", *map(str, argv)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    """Exit 2, the last stderr line is 'focusllm: error: ...' naming every fragment, and no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("focusllm: error: "), err
    for fragment in fragments:
        assert fragment in last, (fragment, last)


# ------------------------------------------------------------------------------------ reading input


def test_folders_are_read_recursively_skipping_hidden_and_non_text(docs):
    notes = []
    found = read_files([docs], note=notes.append)
    assert [p.relative_to(docs).as_posix() for p, _ in found] == ["a.txt", "sub/b.md", "sub/deeper/c.py"]
    assert found[0][1].startswith("Alpha.")
    assert sorted(notes) == [
        f"skipped {docs / 'image.png'}: binary file, not text",
        f"skipped {docs / 'latin1.txt'}: not UTF-8 text (byte 0xe9 at offset 3)",
    ]


def test_files_keep_their_order_and_are_read_once(docs):
    found = read_files([docs / "sub" / "b.md", docs / "a.txt", docs / "a.txt", docs], note=lambda _: None)
    assert [p.name for p, _ in found] == ["b.md", "a.txt", "c.py"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("image.png", "image.png: binary file, not text"),
        ("latin1.txt", "latin1.txt: not UTF-8 text (byte 0xe9 at offset 3)"),
        ("missing.txt", "missing.txt: no such file or folder"),
    ],
)
def test_a_file_named_explicitly_that_is_not_text_is_an_error(capsys, docs, name, message):
    code, out, err = run_main(capsys, "ask", docs / name, "-q", "What?")
    assert_user_error(code, err, message)
    assert out == ""


def test_an_unreadable_file_is_an_error_naming_it(capsys, docs, monkeypatch):
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "a.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    code, _, err = run_main(capsys, "ask", docs / "a.txt", "-q", "What?")
    assert_user_error(code, err, "a.txt: cannot be read (Permission denied)")
    code, _, err = run_main(capsys, "ask", docs, "-q", "What?", "--model", "/no/such/model")
    assert f"focusllm: skipped {docs / 'a.txt'}: cannot be read (Permission denied)" in err  # in a folder: a note


def test_empty_input_empty_question_and_empty_folders(capsys, tmp_path, docs):
    (tmp_path / "empty.txt").write_text("  \n")
    code, _, err = run_main(capsys, "ask", tmp_path / "empty.txt", "-q", "What?")
    assert_user_error(code, err, "no text to read", "empty.txt is empty")
    code, _, err = run_main(capsys, "ask", docs, "-q", "   ")
    assert_user_error(code, err, "the question is empty (--question)")
    (tmp_path / "nothing").mkdir()
    code, _, err = run_main(capsys, "ask", tmp_path / "nothing", "-q", "What?")
    assert_user_error(code, err, f"folder {tmp_path / 'nothing'} holds no readable text file")
    binaries = tmp_path / "binaries"
    binaries.mkdir()
    shutil.copy(docs / "image.png", binaries)
    code, _, err = run_main(capsys, "ask", binaries, "-q", "What?")
    assert_user_error(code, err, f"folder {binaries} holds no readable text file")
    assert f"focusllm: skipped {binaries / 'image.png'}: binary file, not text" in err


# ------------------------------------------------------------------------------- models and devices


def test_a_model_path_that_does_not_exist(capsys, docs):
    code, out, err = run_main(capsys, "ask", docs / "a.txt", "-q", "What?", "--model", "/no/such/dir")
    assert_user_error(code, err, "model path /no/such/dir does not exist")
    assert out == ""


def test_a_folder_that_is_not_a_model(capsys, docs):
    code, _, err = run_main(capsys, "ask", docs / "a.txt", "-q", "What?", "--model", docs)
    assert_user_error(code, err, f"model folder {docs} holds no config.json")


def test_a_hub_id_offline_fails_at_once(docs):
    out = run_module(
        "ask",
        docs / "a.txt",
        "-q",
        "What?",
        "--model",
        "no-such-org/no-such-model",
        env={"HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert_user_error(
        out.returncode,
        out.stderr,
        "'no-such-org/no-such-model'",
        "not in the Hugging Face cache",
        "HF_HUB_OFFLINE is set",
    )


def test_a_hub_id_with_the_hub_unreachable(capsys, docs, monkeypatch):
    import huggingface_hub

    def unreachable(self, repo_id, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    code, _, err = run_main(capsys, "ask", docs / "a.txt", "-q", "What?", "--model", "no-such-org/no-such-model")
    assert_user_error(
        code, err, "'no-such-org/no-such-model'", "the Hugging Face hub cannot be reached", "Name or service not known"
    )


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_does_not_have(docs):
    out = run_module("ask", docs / "a.txt", "-q", "What?", "--device", "cuda")
    assert_user_error(out.returncode, out.stderr, "device 'cuda' is not available")
    assert out.stdout == ""


@pytest.mark.parametrize(
    "device, message",
    [("gpu", "unknown device 'gpu'"), ("cuda:7", "device 'cuda:7'"), ("mps", "device 'mps' is not available")],
)
def test_unknown_or_absent_devices(capsys, docs, device, message):
    if device == "mps" and loading.torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if device == "cuda:7" and loading.torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    code, _, err = run_main(capsys, "ask", docs / "a.txt", "-q", "What?", "--device", device)
    assert_user_error(code, err, message)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--dynamic-prompt-len", "600"], "--dynamic-prompt-len (600) must not exceed --local-window (512)"),
        (["--stop", ""], "--stop sequences must be non-empty"),
    ],
)
def test_inconsistent_settings_name_the_options(capsys, docs, option, message):
    code, _, err = run_main(capsys, "ask", docs / "a.txt", "-q", "What?", *option)
    assert_user_error(code, err, message)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--chunk-size", "0"], "argument --chunk-size: must be >= 1, got 0"),
        (["--max-new-tokens", "many"], "argument --max-new-tokens: not a whole number: 'many'"),
        (["--temperature", "-1"], "argument --temperature: must be >= 0"),
        (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    ],
)
def test_bad_option_values(capsys, docs, option, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ask", str(docs / "a.txt"), "-q", "What?", *option])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err.strip().splitlines()[-1], err


def test_every_option_has_help():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"ask", "passkey", "train", "cache"}
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"focusllm {name} {action.option_strings or action.dest} has no help"
    ask_help = " ".join(commands["ask"].format_help().split())
    assert "--gguf-file" in ask_help and "blank line" in ask_help


# ------------------------------------------------------------------------------- progress and verbose


def test_verbose_prints_one_line_per_phase_and_no_bars_when_piped(tiny_dir, docs):
    out = run_module("ask", docs, "-q", "Who kept the log?", "--model", tiny_dir, *TINY, "--verbose")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    phases = [line for line in lines if not line.startswith("focusllm: skipped")]
    assert len(phases) == 6, out.stderr
    assert re.fullmatch(r"focusllm: read 3 files: [\d,]+ characters \(\d+\.\d s\)", phases[0])
    assert re.fullmatch(
        rf"focusllm: loaded {re.escape(str(tiny_dir))} \(float32, cpu; native window 128 tokens\) "
        r"in \d+\.\d s",
        phases[1],
    )
    assert phases.pop(2) == "focusllm: dtype float32 (asked for); attention sdpa (auto: on cpu)"
    assert re.fullmatch(
        r"focusllm: prompt: [\d,]+ tokens, \d+\.\dx the native window, read in chunks of 32 with entropy aggregation",
        phases[2],
    )
    match = re.fullmatch(
        r"focusllm: encoded (\d+) chunks \([\d,]+ tokens, \d+\.\d s\), reused 0 from the cache; "
        r"first token after \d+\.\d s",
        phases[3],
    )
    assert match and int(match.group(1)) > 5, phases[3]
    assert re.fullmatch(r"focusllm: decoded \d tokens? in \d+\.\d s \(\d+\.\d tokens/s after the first\)", phases[4])
    assert "it/s" not in out.stderr and "%|" not in out.stderr  # no progress bars off a terminal
    assert "Warning" not in out.stderr


def test_quiet_run_prints_only_the_answer(tiny_dir, docs):
    out = run_module("ask", docs / "a.txt", "-q", "Who kept the log?", "--model", tiny_dir, *TINY, "--quiet")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.endswith("\n")


def _run_on_terminal(*argv: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal and stdout piped: (status, stdout, terminal output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows x 120 columns
    proc = subprocess.Popen([sys.executable, "-m", "focus_core", *argv], stdout=subprocess.PIPE, stderr=slave, cwd=ROOT)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            seen += data
        elif proc.poll() is not None:
            break
    os.close(master)
    stdout = proc.stdout.read().decode()
    return proc.wait(timeout=60), stdout, seen.decode(errors="replace")


def test_on_a_terminal_loading_encoding_and_decoding_show_progress(tiny_dir, docs):
    code, stdout, terminal = _run_on_terminal(
        "ask", str(docs), "-q", "Who kept the log?", "--model", str(tiny_dir), *TINY, "--stop", "never stop here"
    )
    assert code == 0, terminal
    assert "Loading weights" in terminal, terminal
    assert re.search(r"\d+/\d+ \[[^]]*chunk/s\]", terminal), terminal  # the engine's chunk-encoding bar
    assert re.search(r"decoding: .*tok/s", terminal), terminal
    assert stdout.endswith("\n") and "decoding" not in stdout


def test_quiet_on_a_terminal_draws_no_bar(tiny_dir, docs):
    code, stdout, terminal = _run_on_terminal(
        "ask", str(docs / "a.txt"), "-q", "Who kept the log?", "--model", str(tiny_dir), *TINY, "--quiet"
    )
    assert code == 0, terminal
    assert terminal.strip() == "", terminal


# ------------------------------------------------------------------------------------- weights cache


def test_content_key_ignores_path_and_mtime_but_not_content(tmp_path, monkeypatch):
    a = tmp_path / "one" / "model.gguf"
    a.parent.mkdir()
    a.write_bytes(os.urandom(3 << 20))
    b = tmp_path / "two" / "model.gguf"
    b.parent.mkdir()
    shutil.copy(a, b)
    os.utime(b, (1, 1))
    assert loading.content_key(a) == loading.content_key(b)
    assert re.fullmatch(rf"model-{3 << 20}-[0-9a-f]{{16}}", loading.content_key(a))
    data = bytearray(b.read_bytes())
    data[len(data) // 2] ^= 1
    b.write_bytes(bytes(data))
    assert loading.content_key(a) != loading.content_key(b)  # whole-file hash below the sampling size
    monkeypatch.setattr(loading, "_HASH_WHOLE_BYTES", 0)  # sampled: head, tail and 14 blocks between
    sampled = loading.content_key(a)
    data = bytearray(a.read_bytes())
    data[-1] ^= 1
    a.write_bytes(bytes(data))
    assert loading.content_key(a) != sampled


@pytest.mark.slow
def test_the_embedded_checkpoint_is_cached_under_the_gguf_content_key():
    path = loading.embedded_checkpoint()
    assert path.parent == loading.cache_root()
    assert path.name == loading.content_key(loading.embedded_gguf())
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_a_missing_gemma_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "gemma3" in name else real(name, *a))
    with pytest.raises(ModelLoadError, match=re.escape(loading.GEMMA3_INSTALL)):
        load_model(loading.GEMMA3_270M)


def test_gemma_pieces_that_fail_their_checksum_leave_nothing_in_the_cache(tmp_path, monkeypatch):
    """The package's assemble() raises ValueError on a SHA-256 mismatch (after writing the joined file):
    one error naming the reinstall, and the cache holds nothing afterwards."""
    monkeypatch.setenv("FOCUSLLM_CACHE", str(tmp_path / "cache"))
    piece = tmp_path / "piece"
    piece.write_bytes(b"\0" * 1000)

    def assemble(output_path):
        output_path.write_bytes(piece.read_bytes())
        raise ValueError("Assembled file sha256 did not match expected value")

    fake = types.SimpleNamespace(
        MODEL_NAME="gemma.gguf",
        EXPECTED_SHA256="ab" * 32,
        verify_chunks=lambda: None,
        chunk_paths=lambda: [piece],
        assemble=assemble,
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if "gemma3" in name else real(name, *a))
    monkeypatch.setattr(importlib, "import_module", lambda name: fake)
    with pytest.raises(ModelLoadError, match="sha256 did not match.*--force-reinstall"):
        loading.gemma3_checkpoint()
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_command_shows_and_clears(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FOCUSLLM_CACHE", str(tmp_path))
    code, out, _ = run_main(capsys, "cache")
    assert code == 0 and out.splitlines() == [
        f"cache of dequantized weights: {tmp_path} (set FOCUSLLM_CACHE to move it)",
        "empty (the first load of the default model fills it, ~20 s)",
    ]
    current = tmp_path / loading.content_key(loading.embedded_gguf())
    old = tmp_path / "SmolLM2-135M-Instruct.Q4_1-98362432-1700000000"  # the older mtime key
    for folder, size in ((current, 3 << 20), (old, 1 << 20)):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * size)
    (tmp_path / "not-ours").mkdir()
    (tmp_path / "notes.txt").write_text("keep me")
    code, out, _ = run_main(capsys, "cache")
    assert code == 0 and out.splitlines() == [
        f"cache of dequantized weights: {tmp_path} (set FOCUSLLM_CACHE to move it)",
        f"  {old.name}  1.0 MiB",
        f"  {current.name}  3.0 MiB  (the installed default model)",
        "2 entries, 4.0 MiB; `focusllm cache --clear` empties the cache (the next load dequantizes again, ~20 s)",
    ]
    code, out, _ = run_main(capsys, "cache", "--clear")
    assert code == 0 and out.strip() == f"cleared {tmp_path}: 2 entries, 4.0 MiB freed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-ours", "notes.txt"]


def test_train_without_its_extra_says_how_to_install_it(capsys, monkeypatch, tmp_path):
    """accelerate (the train extra) is imported only by training; without it, one line names the fix."""
    monkeypatch.setitem(sys.modules, "accelerate", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "focus_core.training.loop", raising=False)
    (tmp_path / "notes.txt").write_text(WORDS)
    code, out, err = run_main(capsys, "train", "--data", tmp_path / "notes.txt", "--output", tmp_path / "adapter")
    assert code == 2 and out == ""
    assert err.strip() == (
        "focusllm: error: training needs accelerate, which is not installed: pip install 'focusllm-integrations[train]'"
    )
    assert not (tmp_path / "adapter").exists()


def test_every_setting_is_an_option_with_its_declared_help_and_check():
    """The engine options are generated from FocusConfig's declarations: each setting (but stop, per
    command, and progress, which is --quiet) is an option with its help and its minimum."""
    import dataclasses

    from focus_core import FocusConfig

    commands = cli.build_parser()._subparsers._group_actions[0].choices
    for command in ("ask", "passkey"):
        actions = {a.dest: a for a in commands[command]._actions}
        for field in dataclasses.fields(FocusConfig):
            if field.name in ("stop", "progress"):
                continue
            action = actions[field.name]
            assert action.option_strings == ["--" + field.name.replace("_", "-")]
            assert action.help.startswith(field.metadata["help"].replace("%", "%%"))
    args = commands["ask"].parse_args(["a.txt", "-q", "?"])
    assert (args.max_new_tokens, args.chunk_size) == (128, FocusConfig().chunk_size)  # ask's own default
    with pytest.raises(SystemExit):
        commands["ask"].parse_args(["a.txt", "-q", "?", "--top-k", "-1"])
