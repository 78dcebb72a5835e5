"""The README and docs/ as a newcomer meets them: a README short enough to read, the two set-up
commands named, no pointer into a git-ignored path (a folder only one machine has), every relative
link leading to a file that exists, and the README's walk-through pasted and run.

The walk-through is the ```sh block after the HTML comment WALKTHROUGH_MARK. It runs in a fresh
temporary folder with the environment's `rebirth` first on PATH, one command at a time (`a && b`
as two), each of which must exit 0. It is shortened, never otherwise changed, by the replacements
in SHORTER (each must match something, so the table cannot go stale unnoticed) and the options in
APPEND (added to a command of that name).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250
WALKTHROUGH_MARK = "<!-- walkthrough -->"

# The walk-through, shortened: (text in the README, what the test runs instead).
SHORTER = [
    ("--iters 2000", "--iters 10"),                                      # recover's and finetune's training
    ('"fashion-mnist:train[:58000]"', '"fashion-mnist:train[:1200]"'),   # training images: relearn's 1,000 + 200
    ('"fashion-mnist:train[58000:]"', '"fashion-mnist:train[59900:]"'),  # held-out images
    ("--data fashion-mnist:test", '--data "fashion-mnist:test[:200]"'),  # test images
]
# Options added to a `rebirth CMD` line of the walk-through.
APPEND = {
    # relearn: 5 SGD steps a unit. Not fewer images than its default 1,000 a unit: with 100 its least
    # squares need many more ridge steps, and the command takes minutes longer, not shorter.
    "recover": ["--relearn-iters", "5"],
    "bench": ["--runs", "3", "--warmup", "1"],
    # accelerate: the shortest budget it takes, 10 distillation steps, a small plan
    "accelerate": ["--time", "4m", "--iters", "10", "--count", "20", "--heldout", "20", "--runs", "5"],
}


def documents() -> list[Path]:
    """The README and every text file under docs/ (images left out)."""
    files = [README]
    for path in sorted(DOCS.rglob("*")):
        if path.is_file():
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            files.append(path)
    return files


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def test_the_readme_names_the_two_set_up_commands():
    text = README.read_text(encoding="utf-8")
    assert "make install" in text and "make test" in text


# A path-like token: characters of file names with at least one slash.
PATH_TOKEN = re.compile(r"[\w.~$<>{}*+@-]*/[\w./<>{}*+@-]*")
# Named outright, whatever the tokenizer makes of the text around them.
NEVER = [re.compile(r"(?<![\w.-])out/"), re.compile(r"\.venv\b"), re.compile(r"(?<![\w.-])build/")]


def path_tokens(text: str) -> set[str]:
    """Path-like tokens git can be asked about: inside the repository, no variable, no URL."""
    out = set()
    for token in PATH_TOKEN.findall(text):
        token = token.rstrip(".,")
        if not re.search(r"\w", token) or token.startswith(("/", "~", "$", "..")) or "//" in token:
            continue
        out.add(token)
    return out


def test_no_document_names_a_git_ignored_path():
    bad = []
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        bad += [f"{doc.relative_to(ROOT)}: names {p.pattern!r}" for p in NEVER if p.search(text)]
        tokens = sorted(path_tokens(text))
        res = subprocess.run(["git", "check-ignore", "--stdin"], cwd=ROOT, input="\n".join(tokens),
                             capture_output=True, text=True)
        assert res.returncode in (0, 1), res.stderr          # 1: none of them is ignored
        bad += [f"{doc.relative_to(ROOT)}: names {t!r}, which git ignores" for t in res.stdout.split()]
    assert not bad, "\n".join(bad)


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", path.read_text(encoding="utf-8"), re.M)}


def test_every_relative_link_leads_to_a_file():
    bad = []
    for doc in documents():
        if doc.suffix != ".md":
            continue
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue                                     # a URL, or a heading of the same page
            name, _, anchor = target.partition("#")
            path = (doc.parent / name).resolve()
            if not path.exists():
                bad.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                bad.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def walkthrough() -> list[str]:
    """The walk-through's commands, continuation lines joined, comments left out."""
    text = README.read_text(encoding="utf-8")
    assert WALKTHROUGH_MARK in text, f"README.md has no {WALKTHROUGH_MARK}"
    block = re.search(r"```sh\n(.*?)```", text[text.index(WALKTHROUGH_MARK):], re.S)
    assert block, f"no ```sh block after {WALKTHROUGH_MARK}"
    joined = block.group(1).replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def shortened(commands: list[str]) -> list[str]:
    used = set()
    out = []
    for cmd in commands:
        for old, new in SHORTER:
            if old in cmd:
                cmd = cmd.replace(old, new)
                used.add(old)
        words = shlex.split(cmd)
        if words[:1] == ["rebirth"] and len(words) > 1 and words[1] in APPEND:
            cmd += " " + " ".join(shlex.quote(a) for a in APPEND[words[1]])
        out.append(cmd)
    stale = [old for old, _ in SHORTER if old not in used]
    assert not stale, f"SHORTER replaces text the walk-through no longer has: {stale}"
    return out


def test_the_walkthrough_is_found_and_shortened():
    commands = walkthrough()
    assert any(c.startswith("rebirth slim") for c in commands)
    for cmd in shortened(commands):
        assert "2000" not in cmd and "58000" not in cmd, cmd


@pytest.mark.caffe
@pytest.mark.slow
def test_the_walkthrough_runs(tmp_path, caffe):
    env = dict(os.environ, GLOG_minloglevel="2",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    cwd = tmp_path
    for line in shortened(walkthrough()):
        for cmd in line.split(" && "):
            words = shlex.split(cmd)
            if words[0] == "cd":
                cwd = cwd / words[1]
                continue
            start = time.monotonic()
            res = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
            assert res.returncode == 0, f"$ {cmd}\nexit {res.returncode} after {time.monotonic() - start:.0f} s\n" \
                                        f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


FIGURE = re.compile(r"\d+\.\d+ ?(?:%|x)")


def test_the_readme_results_are_the_generated_ones():
    """The README's Results section copies figures from docs/results/ (written by `make results`)
    and the shipped models' READMEs: each must still be there, so a regenerated table cannot leave
    the README behind unnoticed. The paper's own figures ("the paper: ...") are left out."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Results"):text.index("## Documentation")]
    ours = re.sub(r"the paper:[^)]*\)", "", section)
    figures = {f.replace(" ", "") for f in FIGURE.findall(ours)}
    assert len(figures) >= 8, figures
    sources = [*(DOCS / "results").glob("*.md"), *(ROOT / "models").glob("*/README.md")]
    generated = {f.replace(" ", "") for p in sources for f in FIGURE.findall(p.read_text(encoding="utf-8"))}
    missing = sorted(figures - generated)
    assert not missing, f"README figures found in no docs/results/*.md nor models/*/README.md: {missing}"
