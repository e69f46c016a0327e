"""`make demo` (``python -m dsagent.demo``) against the session's server: it says what the model is,
shows what the model said, marks each answer it checked, and ends with the GPU command."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from dsagent.demo import GPU_COMMAND


@pytest.mark.timeout(300)
def test_the_demo_tells_what_the_model_is_and_marks_every_answer(server, settings):
    """Before: a wrong translation ("Je m'aime le projet.") was printed as if it were right."""
    out = subprocess.run([sys.executable, "-m", "dsagent.demo"], capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "SmolLM2-135M-Instruct, 135M parameters, on the CPU: a rehearsal model" in text
    answers = re.findall(r"^\[(Q&A|translate|naming)\] (.+)\n  -> (.*)   \(\d+\.\d s\)\n  \[(ok|wrong)\] (.+)$", text, re.M)
    assert [a[0] for a in answers] == ["Q&A", "Q&A", "translate", "translate", "naming"], text
    paris = answers[0]
    assert "Paris" in paris[2] and paris[3:] == ("ok", "names Paris"), paris  # greedy: the model knows this one
    for kind, _prompt, said, mark, note in answers[2:4]:  # whatever it said is shown and judged, not vouched for
        assert said.strip() and (note == "an accepted translation") == (mark == "ok"), (said, mark, note)
    assert text.rstrip().endswith(GPU_COMMAND)
    assert f"stop {server.name}" in text  # the session's deployment was used, not a second one
