"""benchmarks/smax_maps.py: the variants change what they say, JaxMARL CSVs are checked, the summary reads the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.config import load_config
from benchmarks import smax_maps


@pytest.mark.parametrize("smax_map", smax_maps.MAPS)
def test_every_map_has_a_ready_config_and_the_variants_differ_only_in_the_decoder(smax_map: str) -> None:
    enc = load_config(f"configs/smax_{smax_map}.yaml", list(smax_maps.VARIANTS["enc"]))
    dec = load_config(f"configs/smax_{smax_map}.yaml", list(smax_maps.VARIANTS["dec"]))
    assert enc.stop.env_steps == smax_maps.MARKS[-1]  # the lr anneals over the whole benchmark run
    assert enc.model.decoder == "none" and dec.model.decoder == "autoregressive"
    assert enc.model.__class__(**{**vars(dec.model), "decoder": "none"}) == enc.model
    assert (enc.env, enc.training) == (dec.env, dec.training)


def test_anchor_refuses_a_csv_that_is_not_jaxmarl_smax_output(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(smax_maps, "OUT", tmp_path / "out")
    bad = tmp_path / "bad.csv"
    bad.write_text("step,win\n1,0.5\n")
    with pytest.raises(SystemExit, match=r"has columns \['step', 'win'\]; expected env_steps,win_rate,return"):
        smax_maps.anchor("5m_vs_6m", "mappo", bad)
    assert not (tmp_path / "out").exists()


def test_summary_reads_runs_greedy_files_and_anchors(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(smax_maps, "OUT", tmp_path)
    steps = range(100_000, 5_000_001, 100_000)
    ours = tmp_path / "5m_vs_6m_dec_seed0.csv"
    ours.write_text("env_steps,return_per_agent,wall_s,win_rate\n" + "".join(f"{s},1.0,1.0,{s / 5e6}\n" for s in steps))
    (tmp_path / "5m_vs_6m_dec_seed0_greedy_at1M.json").write_text(json.dumps({"win_rate": 0.25}))
    source = tmp_path / "5m_vs_6m_mappo.csv"
    source.write_text("env_steps,win_rate,return\n" + "".join(f"{s},0.5,0.0\n" for s in steps))
    smax_maps.anchor("5m_vs_6m", "mappo", source)
    smax_maps.summarize()
    table = capsys.readouterr().out
    # the mean of the rows within 100k env steps before each mark: (0.18 + 0.2) / 2 at 1M, and so on
    assert "| dec | 5m_vs_6m_dec_seed0 | 0.19 | 0.59 | 0.99 | 0.25 | - | - |" in table
    assert "| mappo | 5m_vs_6m_mappo | 0.50 | 0.50 | 0.50 | - | - | - |" in table
    assert (tmp_path / "5m_vs_6m_win_rate.png").stat().st_size > 0
