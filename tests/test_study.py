"""benchmarks/when_end2end_helps.py's biased-world part (issue 20, item 7): fair arms, and a quick run end to end."""
import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from photochat_lib.training.train import clip_sides, resolve

ROOT = Path(__file__).resolve().parents[1]


def load_study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "benchmarks" / "when_end2end_helps.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def test_the_bias_arms_differ_only_in_mode_and_bridge(tmp_path):
    study = load_study()
    args = study.parse_args(["--quick", "--data", str(tmp_path / "toy")])
    cfgs = {f"{m}/{b}": asdict(study.arm_config(args, Path("runs/x"), 0, 20, **study.bias_arm_settings(args, 0.75, m, b)))
            for m, b in study.BIAS_ARMS}
    pipe, sent, pos = cfgs["pipeline/sentence"], cfgs["end2end/sentence"], cfgs["end2end/positional"]
    assert {k for k in pipe if pipe[k] != sent[k]} == {"mode"}
    assert {k for k in sent if sent[k] != pos[k]} == {"bridge"}
    assert pipe["freeze_sd"] and pipe["data"].endswith("toy-bias-q0.75-quick")
    stamp = json.loads((Path(pipe["data"]) / "toy_dataset.json").read_text())
    assert stamp["caption_bias"]["q"] == 0.75
    from photochat_lib.training.train import TrainConfig
    resolved = [resolve(TrainConfig(**c)).to_dict() for c in cfgs.values()]
    assert resolved[0] == resolved[1] == resolved[2]                           # the recipe is the same for all
    assert all(clip_sides(TrainConfig(**c)) == ("dialogue", "image") for c in cfgs.values())


def test_the_quick_bias_study_runs_and_reports_every_arm(tmp_path):
    """The --quick mode CI runs: Q 0 and 0.75 x three arms x one seed, 20 steps, a 48-dialogue world."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "when_end2end_helps.py"), "--quick", "--parts", "bias",
           "--runs", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports"), "--data", str(tmp_path / "toy"),
           "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((tmp_path / "reports" / "when_end2end_helps_bias.json").read_text())["results"]
    assert set(rep) == {"0", "0.75"}
    assert all(set(arms) == {"pipeline", "end2end/sentence", "end2end/positional"} for arms in rep.values())
    cfg = json.loads((tmp_path / "runs" / "bias-q0.75-end2end-positional-freezesd-clipside-seed0" / "config.json").read_text())["train"]
    assert cfg["bridge"] == "positional" and cfg["freeze_sd"] and cfg["max_steps"] == 20
    md = (tmp_path / "reports" / "when_end2end_helps_bias.md").read_text()
    assert "| 0.75 | end2end/positional |" in md and (tmp_path / "reports" / "when_end2end_helps_bias.png").exists()
