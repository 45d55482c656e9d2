"""The adversarial campaign tool (minidark/tools/campaign.py): its outcome
classification, its cfg mutations, and a short run end to end. Whether
minidark passes the campaign is the campaign's business, not these tests':
they check that the tool sees what happened."""

import random
import re
import signal

import pytest

from minidark.tools import campaign
from minidark.tools.campaign import Case, classify, judge, mutate_cfg


@pytest.mark.parametrize(
    "code, stderr, outcome",
    [
        (0, "", "ok"),
        (0, "minidark: warning: unused key\n", "ok"),
        (2, "minidark: error: x.cfg: [net] line 3: batch: must be >= 1\n", "clean-error"),
        (
            2,
            "minidark classifier train: the following arguments are required: DATA\n",
            "clean-error",
        ),
        (1, "Traceback (most recent call last):\n  File ...\nValueError: boom\n", "traceback"),
        (
            1,
            "Traceback (most recent call last):\nnumpy._core._exceptions._ArrayMemoryError: x\n",
            "memory",
        ),
        (None, "", "hang"),
        (-signal.SIGKILL, "", "memory"),
        (-signal.SIGSEGV, "", "crash"),
        (1, "something went wrong\n", "unclear-error"),
    ],
)
def test_classify(code, stderr, outcome):
    assert classify(code, stderr) == outcome


def judged(tmp_path, code, stderr, **fields):
    case = Case("cfg", 0, tmp_path, returncode=code, stderr=stderr, **fields)
    return judge(case)


def test_judge_nonsense_valid_input_and_control_characters(tmp_path):
    assert judged(tmp_path, 0, "", nonsense=True) == "accepted-nonsense"
    warning = "minidark: warning: 3 NaN values in layer 1\n"
    assert judged(tmp_path, 0, warning, nonsense=True) == "warned"
    assert judged(tmp_path, 0, warning, nonsense=True, warning_excuses=False) == "accepted-nonsense"
    assert judged(tmp_path, 2, "minidark: error: bad\n", nonsense=True) == "clean-error"
    assert judged(tmp_path, 2, "minidark: error: bad\n", expect_ok=True) == "rejected-valid"
    assert judged(tmp_path, 2, "minidark: error: a\x1b[2Jb.cfg: missing\n") == "raw-control-chars"
    assert judged(tmp_path, 2, "minidark: error: a\\x1b[2Jb.cfg: missing\n") == "clean-error"


def test_cfg_mutations_are_seeded_and_flag_nonsense(tmp_path):
    fx = campaign.Fixture.__new__(campaign.Fixture)  # only the key tables are needed
    fx.all_keys = {"batch", "learning_rate", "output", "activation"}
    text = campaign.MLP_CFG
    first = [mutate_cfg(text, random.Random(f"7-{i}"), fx, False) for i in range(200)]
    again = [mutate_cfg(text, random.Random(f"7-{i}"), fx, False) for i in range(200)]
    assert first == again
    assert all(body != text.encode() for body, *_ in first)
    whats = {what: (nonsense, ok) for _body, what, nonsense, ok in first}
    misspelt = [w for w in whats if "misspelt" in w]
    assert misspelt and all(whats[w][0] for w in misspelt)
    nan = [w for w in whats if "'nan'" in w]
    assert nan and all(whats[w][0] for w in nan)
    inserted = {w: whats[w][0] for w in whats if "] += " in w}
    assert inserted and all(level == 2 for w, level in inserted.items() if "learning_rate=0" in w)
    assert all(level == 1 for w, level in inserted.items() if w == "[net] += adam=1")
    bom_only = [w for w in whats if w == "UTF-8 BOM"]
    assert bom_only and all(whats[w] == (False, True) for w in bom_only)
    bom = next(body for body, what, *_ in first if what == "UTF-8 BOM")
    assert bom == b"\xef\xbb\xbf" + text.encode()


def test_short_campaign_runs_classifies_and_saves_failures(tmp_path, capsys):
    out = tmp_path / "out"
    status = campaign.main(
        [
            "--cases",
            "5",
            "--seed",
            "3",
            "--out",
            str(out),
            "--kinds",
            "cfg,weights,data,paths,sidecar",
        ]
    )
    printed = capsys.readouterr().out
    table = printed[printed.index("outcome") :]
    assert re.search(r"^total\s.*\s5$", table, re.M), table
    saved = [p for p in out.glob("*/*") if p.is_dir() and p.parent.name != "fixture"]
    failing = sorted(saved)
    assert status == (1 if failing else 0)
    for folder in failing:
        assert folder.parent.name not in campaign.PASSING
        assert (folder / "cmd.sh").exists() and (folder / "stderr.txt").exists()


def test_bad_arguments():
    with pytest.raises(SystemExit):
        campaign.main(["--kinds", "nonsense"])
    with pytest.raises(SystemExit):
        campaign.main(["--cases", "0"])
