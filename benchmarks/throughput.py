"""Training throughput next to the raw env stepping rate, and peak memory of the whole training.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.throughput [--iterations 10] [key=value ...]

In one process: (1) the raw mpe2 ParallelEnv and the TeamEnv step with random actions for a fixed time;
(2) the default experiment (configs/mpe_spread.yaml plus overrides) trains for --iterations iterations, and the
env steps/s of training is measured over all iterations but the first (which pays one-off start-up costs),
with RLlib's own split between sampling and the learner update. Meanwhile a thread samples the memory of the
whole process tree (this driver, the Ray services it started, every worker) from /proc every 0.5 s: peak PSS
(shared pages counted once, split between sharers) and peak summed RSS.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
import argparse
import sys
import threading
import time
from pathlib import Path

import agents  # noqa: F401  (sets how OpenMP waits, which it reads when torch loads)
from benchmarks.env_speed import raw_steps_per_second, team_steps_per_second
from envs.mpe import SpreadOptions


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _tree(root: int) -> list[int]:
    children, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _mem_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB, from smaps_rollup; (0, 0) if it is gone."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class MemorySampler(threading.Thread):
    def __init__(self, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.period, self.peak_pss_kb, self.peak_rss_kb, self.peak_procs = period, 0, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            pids = _tree(os.getpid())
            mems = [_mem_kb(pid) for pid in pids]
            self.peak_pss_kb = max(self.peak_pss_kb, sum(m[0] for m in mems))
            self.peak_rss_kb = max(self.peak_rss_kb, sum(m[1] for m in mems))
            self.peak_procs = max(self.peak_procs, len(pids))
            self._stop_event.wait(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mpe_spread.yaml")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each raw env measurement")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sampler = MemorySampler()
    sampler.start()
    raw = raw_steps_per_second(SpreadOptions(), args.seconds, seed=0)
    team = team_steps_per_second(SpreadOptions(), args.seconds, seed=0)

    from agents.build import build_ppo_config, probe_env
    from agents.config import load_config
    from agents.train import init_ray

    config = load_config(args.config, args.overrides)
    probe_env(config)
    init_ray()
    algo = build_ppo_config(config).build_algo()
    steps, walls, sample_s, learn_s = [], [], [], []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        result = algo.train()
        walls.append(time.perf_counter() - t0)
        steps.append(int(result["env_runners"]["num_env_steps_sampled"]))
        timers = result.get("timers", {})
        sample_s.append(float(timers.get("env_runner_sampling_timer", float("nan"))))
        learn_s.append(float(timers.get("learner_update_timer", float("nan"))))
    algo.stop()
    sampler.stop()

    train_fps = sum(steps[1:]) / sum(walls[1:])
    wall = sum(walls[1:]) / len(walls[1:])
    print(f"config: {args.config} {' '.join(args.overrides)}")
    print(f"raw mpe2 simple_spread N=3 (random actions): {raw:8,.0f} env steps/s")
    print(f"TeamEnv (random actions):                    {team:8,.0f} env steps/s")
    print(f"training (iterations 2..{args.iterations}):                {train_fps:8,.0f} env steps/s")
    print(f"training / raw:                               {train_fps / raw:8.2f}x")
    print(
        f"per iteration ({steps[-1]} env steps): {wall:.2f} s wall; RLlib timers (EMA): "
        f"sampling {sample_s[-1]:.2f} s, learner update {learn_s[-1]:.2f} s"
    )
    print(
        f"peak memory of the whole training ({sampler.peak_procs} processes): "
        f"PSS {sampler.peak_pss_kb / 1e6:.2f} GB, summed RSS {sampler.peak_rss_kb / 1e6:.2f} GB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
