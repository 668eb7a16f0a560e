"""Every `qpeft <step>` command line that README.md and docs/*.md show works as typed: the
step exists for `qpeft` and for `python -m pipelines.<step>`, `--help` answers, and the
config file and `--set` overrides it names load (`--print-config`). The short ones run.
Every `python benchmarks/...` and `bash <script>` line they show, in code or inline, names
a script that exists and takes those arguments."""

from __future__ import annotations

import importlib
import json
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import STEPS, main
from tests.test_evaluate import RUN, write_prepared_qa, write_trec

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_OPERATORS = {"&&", "||", ";", "|"}


def code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines of a markdown file's code (indented blocks and fences), with backslash
    continuations joined; numbered by their first line."""
    lines, fenced, joined, first = [], False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ") or joined):
            continue
        if not joined:
            first = number
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        lines.append((first, joined + line))
        joined = ""
    return lines


def shell_segments(tokens: list[str]) -> list[list[str]]:
    """The simple commands of a split command line: the runs between `&&`, `||`, `;`, `|`."""
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in SHELL_OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    return [segment for segment in segments if segment]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `qpeft`) for every `qpeft ...` command in the docs' code."""
    found = []
    for path in DOCUMENTS:
        for number, line in code_lines(path):
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:  # prose that happens to be indented, with a stray quote
                continue
            for segment in shell_segments(tokens):
                for i, token in enumerate(segment[:-1]):
                    if token == "qpeft":
                        found.append((f"{path.relative_to(ROOT)}:{number}", segment[i + 1 :]))
    return found


COMMANDS = documented_commands()

INLINE_CODE = re.compile(r"`([^`]+)`")


def inline_code(path: Path) -> list[tuple[int, str]]:
    """Inline code spans of the prose (not fenced or indented code), numbered by the line
    they start on. A span may wrap across lines, never across a paragraph: a stray
    backtick then mis-pairs one paragraph, not the rest of the file."""
    found, fenced = [], False
    paragraph: list[tuple[int, str]] = []

    def close() -> None:
        text = "\n".join(line for _, line in paragraph)
        for m in INLINE_CODE.finditer(text):
            found.append((paragraph[0][0] + text.count("\n", 0, m.start()), m.group(1)))
        paragraph.clear()

    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            close()
        elif fenced or not line.strip() or line.startswith("    "):
            close()
        else:
            paragraph.append((number, line))
    close()
    return [(number, text.replace("\n", " ")) for number, text in found]


SCRIPT_LINE = re.compile(r"\b(python|bash) \S+\.(py|sh)\b")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")  # `VAR=value python ...`
UNPARSED: list[str] = []  # script lines shlex could not split: reported by a test


def documented_scripts() -> list[tuple[str, str, list[str]]]:
    """(where, script path, arguments) for every `python benchmarks/X.py ...` and
    `bash PATH ...` in the docs' code blocks and inline code; `[--opt value]` (an optional
    part) counts as typed."""
    found = []
    for path in DOCUMENTS:
        for number, text in code_lines(path) + inline_code(path):
            try:
                tokens = shlex.split(text.replace("[", " ").replace("]", " "), comments=True)
            except ValueError:
                if SCRIPT_LINE.search(text):
                    UNPARSED.append(f"{path.relative_to(ROOT)}:{number}: {text}")
                continue
            for segment in shell_segments(tokens):
                while segment and ENV_ASSIGNMENT.match(segment[0]):
                    segment = segment[1:]
                if len(segment) < 2 or segment[0] not in ("python", "bash"):
                    continue
                script = segment[1]
                if script.endswith((".py", ".sh")) and "/" in script:
                    found.append((f"{path.relative_to(ROOT)}:{number}", script, segment[2:]))
    return found


SCRIPTS = documented_scripts()


def test_docs_show_every_step_and_only_real_steps():
    assert len(COMMANDS) >= 15, COMMANDS  # the parser still finds the docs' commands
    for where, argv in COMMANDS:
        assert argv[0] in STEPS, f"{where}: `qpeft {argv[0]}` is not a step ({STEPS})"
        assert not any("$" in arg for arg in argv), f"{where}: shell variables do not paste"
    assert {argv[0] for _, argv in COMMANDS} == set(STEPS)


def test_every_pipelines_module_with_a_main_is_a_step():
    modules = {
        path.stem
        for path in (ROOT / "pipelines").glob("*.py")
        if "\ndef main(" in path.read_text() and path.stem != "cli"
    }
    assert modules == set(STEPS)


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_line_loads_its_config(where, argv, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as done:
        main([*argv, "--print-config"])
    assert done.value.code == 0, f"{where}: {capsys.readouterr().err}"
    printed = capsys.readouterr().out
    assert printed.startswith(("model:", "prepare:", "evaluate:", "tune:", "demo:", "ray:"))


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.filterwarnings("ignore:'pipelines.*' found in sys.modules:RuntimeWarning")
def test_help_of_every_step_through_both_entry_points(step, monkeypatch, capsys):
    """`qpeft <step> --help` and `python -m pipelines.<step> --help`, each run in this
    process (14 interpreters importing torch and Ray took two minutes of CI): both exit 0
    and show the shared options. The installed scripts themselves are started below."""
    for form, call in (
        ("qpeft", lambda: main([step, "--help"])),
        ("module", lambda: runpy.run_module(f"pipelines.{step}", run_name="__main__")),
    ):
        monkeypatch.setattr(sys, "argv", [f"pipelines/{step}.py", "--help"])
        with pytest.raises(SystemExit) as done:
            call()
        assert done.value.code == 0, f"{form} {step}"
        out = capsys.readouterr().out
        assert "--config" in out and "--print-config" in out, f"{form} {step}: {out}"


def test_both_entry_points_start_as_installed():
    """The `qpeft` console script and `python -m pipelines.<step>`, as separate processes."""
    qpeft = Path(sys.executable).parent / "qpeft"
    for argv in (
        [str(qpeft), "evaluate", "--help"],
        [sys.executable, "-m", "pipelines.evaluate", "--help"],
    ):
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"
        assert "--config" in done.stdout and "--print-config" in done.stdout, done.stdout


def test_unknown_step_is_refused_with_the_known_ones(capsys):
    assert main(["serv"]) == 2
    assert "unknown step 'serv'" in capsys.readouterr().err


def test_documented_evaluate_runs_for_real_on_tiny_runs(tmp_path, monkeypatch, capsys):
    """README's `qpeft evaluate --config configs/evaluate-cranfield.yaml`, as typed, with
    its inputs and output pointed at a tiny prepared folder and three TREC runs."""
    typed = ["evaluate", "--config", "configs/evaluate-cranfield.yaml"]
    where, argv = next((w, a) for w, a in COMMANDS if a == typed)
    monkeypatch.chdir(ROOT)
    write_prepared_qa(tmp_path / "prepared")
    runs = {}
    for name in ("bm25", "zero_shot", "qpeft_a"):
        write_trec(tmp_path / f"{name}.trec", RUN)
        runs[name] = str(tmp_path / f"{name}.trec")
    overrides = [
        f"evaluate.prepared_dir={tmp_path / 'prepared'}",
        f"evaluate.runs={json.dumps(runs)}",
        f"evaluate.output_dir={tmp_path / 'report'}",
    ]
    assert main([*argv, *(x for o in overrides for x in ("--set", o))]) == 0, where
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["baseline"] == "zero_shot" and set(report["runs"]) == set(runs)
    assert "| qpeft_a |" in capsys.readouterr().out


def test_docs_show_benchmark_and_result_scripts():
    assert len(SCRIPTS) >= 20, SCRIPTS  # the parser still finds the docs' script lines
    assert not UNPARSED, UNPARSED
    shown = {script for _, script, _ in SCRIPTS}
    assert {"benchmarks/scoring.py", "scripts/install.sh"} <= shown, shown


@pytest.mark.parametrize(
    ("where", "script", "args"),
    [s for s in SCRIPTS if s[1].endswith(".py")],
    ids=[where for where, script, _ in SCRIPTS if script.endswith(".py")],
)
def test_documented_python_script_takes_its_arguments(where, script, args, monkeypatch):
    """The benchmark's own parser accepts the line as the docs type it."""
    path = ROOT / script
    assert path.is_file(), f"{where}: {script} does not exist"
    monkeypatch.syspath_prepend(str(path.parent))  # as `python PATH` would see it
    module = importlib.import_module(path.stem)
    try:
        module.parse_args(args)
    except SystemExit as refused:
        pytest.fail(f"{where}: `python {script} {shlex.join(args)}` is refused ({refused})")


@pytest.mark.parametrize(
    ("where", "script", "args"),
    [s for s in SCRIPTS if s[1].endswith(".sh")],
    ids=[where for where, script, _ in SCRIPTS if script.endswith(".sh")],
)
def test_documented_shell_script_takes_its_arguments(where, script, args):
    """The script parses (`bash -n`); each argument is a placeholder (CONFIG_DIR) for a
    positional parameter it uses, or something it names: an option it reads, one of its
    parts (`run.sh test_r_plain`), a value it knows (`run.sh smollm2-135m`)."""
    path = ROOT / script
    assert path.is_file(), f"{where}: {script} does not exist"
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, f"{where}: {check.stderr}"
    text = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    placeholders = [arg for arg in args if arg.isupper()]
    for arg in args:
        if not arg.isupper():
            assert re.search(rf"(?<![\w-]){re.escape(arg)}(?![\w-])", text), (
                f"{where}: {script} does not know {arg}"
            )
    for position in range(1, len(placeholders) + 1):
        assert re.search(rf"\$\{{?{position}(?![0-9])", text), (
            f"{where}: {script} does not read argument {position}"
        )


def python_blocks() -> list[tuple[str, str]]:
    """(where, code) for every ```python block of the docs."""
    found = []
    for path in DOCUMENTS:
        block: list[str] | None = None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if block is None and line.strip() == "```python":
                block, start = [], number + 1
            elif block is not None and line.strip() == "```":
                found.append((f"{path.relative_to(ROOT)}:{start}", "\n".join(block)))
                block = None
            elif block is not None:
                block.append(line)
    return found


PYTHON_BLOCKS = python_blocks()


@pytest.mark.slow
@pytest.mark.parametrize(("where", "code"), PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_documented_python_block_runs(where, code, monkeypatch):
    """Each block runs as pasted, from the checkout (the README's five lines load the
    packaged SmolLM2 and score a pair)."""
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(code, where, "exec"), namespace)
    scores = namespace.get("scores")
    if scores is not None:
        assert len(scores) >= 1 and all(-50.0 < s < 0.0 for s in scores), (where, scores)


def test_docs_python_blocks_are_found():
    assert any(where.startswith("README.md") for where, _ in PYTHON_BLOCKS), PYTHON_BLOCKS
