"""What a run says while it trains: where a resumed run continues, and progress lines between
the metric rows when the output is not a terminal (read from the device only when due)."""

from __future__ import annotations

from ckd.config import config_from_dict
from tests.conftest import tiny_config


def test_progress_lines_without_a_terminal_and_the_resume_line(fake_fmnist, tmp_path, monkeypatch):
    from ckd.engine import Trainer
    from ckd.engine.window import Window

    reads = []
    running_loss = Window.running_loss
    monkeypatch.setattr(Window, "running_loss", lambda self: reads.append(1) or running_loss(self))
    cfg = tiny_config(fake_fmnist, tmp_path / "run", data={"train_subset": 96})
    cfg["run"]["progress"] = True  # no bar without a terminal: progress lines instead
    lines: list[str] = []
    Trainer(config_from_dict(cfg), echo=lines.append).fit(stop_after=1)
    assert reads == [] and not any(line.startswith("  epoch") for line in lines)  # 60 s: none

    cfg["run"]["progress_seconds"] = 1e-9  # a line at every step (3 steps of 32 an epoch)
    lines = []
    Trainer(config_from_dict(cfg), resume=True, echo=lines.append).fit()
    assert f"resuming from {tmp_path / 'run' / 'last.pt'}: epoch 1/2 done" in "\n".join(lines)
    assert "continuing with epoch 2" in "\n".join(lines)
    progress = [line for line in lines if line.startswith("  epoch")]
    assert [p.split(":")[0] for p in progress] == ["  epoch 2/2, step 1/3", "  epoch 2/2, step 2/3"]
    assert "loss " in progress[0] and progress[0].endswith("img/s") and len(reads) == 2
