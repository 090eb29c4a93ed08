"""benchmarks/ingest.py on tiny data sets: which rows and keys it reports, and the record
counts it must get (generated data, so exact); nothing timed or measured is asserted."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("ingest_bench", ROOT / "benchmarks/ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.e2e
def test_ingest_benchmark_reports_each_format_and_size(tmp_path):
    out = tmp_path / "ingest.json"
    result = _bench().main(["--sizes=24,48", "--files=2", "--batch=16",
                            "--formats=webdataset,parquet", f"--json={out}"])
    rows = result["rows"]
    assert [(r["format"], r["size"], r["records"]) for r in rows] == [
        ("webdataset", 24, 24), ("webdataset", 48, 48), ("parquet", 24, 24),
        ("parquet", 48, 48)]
    keys = {"records_per_s", "encode_images_per_s", "ratio", "peak_rss_mb", "rss_before_mb",
            "rss_growth_mb", "load_before", "load_after", "seconds", "read_only_records_per_s",
            "decode_images_per_s_one_thread"}
    assert all(keys <= set(r) for r in rows)
    assert {"webdataset_peak_rss_ratio", "parquet_peak_rss_ratio", "date", "cpus"} <= set(result)
    assert out.read_text().startswith("{")
