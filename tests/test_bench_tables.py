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


def test_no_summary_lines_is_an_error(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    r = subprocess.run([sys.executable, str(ROOT / "bench/perf_table.py"), str(f)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "no summary lines" in r.stderr
