"""bench/perf_table.py: docs/results.md's performance tables are computed from bench.py's lines."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def summary(impl, dtype, context, prefill, decode, rss, **more):
    return {"summary": True, "impl": impl, "dtype": dtype, "context_tokens": context,
            "prefill_tokens_per_s": prefill, "decode_ms_per_token": decode, "peak_rss_mb": rss,
            "limit_fraction": 0.2, "prefill_tokens": more.get("prefill_tokens", context)}


def test_ratios_come_from_the_same_context_and_dtype(tmp_path):
    lines = [{"machine_limit": True, "bandwidth_gb_s": 30.0},
             summary("tinfinite", "bfloat16", 32768, 300.0, 50.0, 900.0),
             summary("hf", "bfloat16", 32768, 100.0, 400.0, 1800.0),
             summary("tinfinite", "float32", 32768, 200.0, 80.0, 1000.0),
             summary("llamacpp", "q4_1", 32768, 50.0, 25.0, 700.0),
             summary("tinfinite", "bfloat16", 1048576, 180.0, 55.0, 950.0, prefill_tokens=100000),
             {"machine_limit_end": True, "bandwidth_gb_s": 34.0}]
    f = tmp_path / "perf.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = subprocess.run([sys.executable, str(ROOT / "bench/perf_table.py"), str(f)],
                         capture_output=True, text=True, check=True).stdout
    assert "30.0-34.0 GB/s" in out
    assert "| 32,768 | tinfinite | bfloat16 | 300 | 50.0 | 900 | 0.20 |" in out
    assert "| 1,048,576 (prefill timed on 100,000) | tinfinite |" in out
    # decode 400/50, prefill 300/100, RSS 900/1800, ms 50/25
    assert "| 32,768 | bfloat16 | 8.00x | 3.00x | 0.50 | 2.00 |" in out
    assert "| 32,768 | float32 | — | — | — | 3.20 |" in out      # no HF float32 run: no ratio
    assert "| 1,048,576 | bfloat16 |" not in out                   # no peer ran: no ratio row


def test_compiled_rows_are_named_and_compared_with_hf_at_their_dtype(tmp_path):
    out = table(tmp_path, [summary("tinfinite", "bfloat16+compile", 256, 200.0, 10.0, 1400.0),
                           summary("tinfinite", "int8+compile", 256, 200.0, 8.0, 1000.0),
                           summary("hf", "bfloat16", 256, 100.0, 40.0, 700.0),
                           summary("llamacpp", "q4_1", 256, 50.0, 5.0, 300.0)])
    assert "| 256 | tinfinite | bfloat16, compiled | 200 | 10.0 | 1400 | 0.20 |" in out
    # decode 40/10, prefill 200/100, RSS 1400/700, ms 10/5; no HF int8: no HF ratio
    assert "| 256 | bfloat16, compiled | 4.00x | 2.00x | 2.00 | 2.00 |" in out
    assert "| 256 | int8 weights, compiled | — | — | — | 1.60 |" in out


def test_no_summary_lines_is_an_error(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    r = subprocess.run([sys.executable, str(ROOT / "bench/perf_table.py"), str(f)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "no summary lines" in r.stderr


def table(tmp_path, lines) -> str:
    f = tmp_path / "lines.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return subprocess.run([sys.executable, str(ROOT / "bench/perf_table.py"), str(f)],
                          capture_output=True, text=True, check=True).stdout


def test_threads_table_shows_each_setting_under_each_load(tmp_path):
    out = table(tmp_path, [{"summary": True, "impl": "tinfinite", "candidate": "auto",
                            "dtype": "bfloat16", "quiet_tokens_per_s": 40.0, "quiet_threads": [2],
                            "busy_tokens_per_s": 30.0, "busy_threads": [1],
                            "pair_tokens_per_s": 28.0, "pair_threads": [1],
                            "busy_over_quiet": 0.75, "pair_over_quiet": 0.7}])
    assert ("| tinfinite | auto | bfloat16 | 40.0 (2 thr) | 30.0 (1 thr) | 28.0 (1 thr) | 0.75 "
            "| 0.70 |") in out


def test_size_table_compares_the_same_model_and_context(tmp_path):
    step = dict(case="decode_step", model="w/big", fill="prefill", limit_ms_per_token=40.0)
    out = table(tmp_path, [
        {"case": "load", "model": "w/big", "quantize": None, "dtype": "bfloat16",
         "load_seconds": 6.0, "peak_rss_mb": 2500, "checkpoint_mb": 2048, "target_peak_mb": 3160},
        {**step, "impl": "tinfinite", "context_tokens": 256, "decode_ms_per_token": 100.0,
         "bandwidth_share": 0.4},
        {**step, "impl": "tinfinite", "context_tokens": 16384, "decode_ms_per_token": 120.0,
         "bandwidth_share": 0.35, "fill": "synthetic"},
        {**step, "impl": "hf", "context_tokens": 256, "decode_ms_per_token": 150.0,
         "bandwidth_share": 0.27},
        {**step, "impl": "hf", "context_tokens": 16384, "decode_ms_per_token": 600.0,
         "bandwidth_share": 0.07, "fill": "synthetic"}])
    assert "| big | bfloat16 | 6.0 | 2500 | 2048 | 3160 |" in out
    assert "| big | 16,384 | tinfinite | synthetic | 120.0 | 40.0 | 0.35 |" in out
    assert "| big | 256 | 1.50x | 1.00 |" in out and "| big | 16,384 | 5.00x | 1.20 |" in out
