"""The progress line every training worker prints (rank 0, every run.log_every_n_steps)."""

from __future__ import annotations

import time

from vf3d.training.loop import Window, progress_line


def test_progress_line_gives_step_share_speed_and_eta():
    window = Window()
    window.started = time.perf_counter() - 10.0  # ten steps in ten seconds
    for _ in range(10):
        window.add({"loss": 1.0})
    line = progress_line("finetune-video", 40, 100, window)
    assert line.startswith("[finetune-video] step 40/100 (40%, ")
    rate = float(line.split(", ")[1].split(" ")[0])
    assert 0.9 < rate <= 1.0
    eta = float(line.split("ETA ")[1].split(" ")[0])
    assert 60 <= eta < 70 and line.endswith(" s)")  # 60 steps left at ~1 step/s


def test_progress_line_without_steps_has_no_eta_and_minutes_for_long_runs():
    assert progress_line("train-recon", 0, 120, Window()).endswith("(0%, 0.00 steps/s, ETA ?)")
    slow = Window()
    slow.started = time.perf_counter() - 100.0
    slow.add({"loss": 1.0})
    assert progress_line("train-recon", 1, 121, slow).endswith(" min)")  # 120 steps at 0.01 steps/s
