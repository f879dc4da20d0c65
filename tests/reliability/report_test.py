"""RELIABILITY.md is what benchmarks/reliability.py renders from the JSONs."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _reliability():
    spec = importlib.util.spec_from_file_location(
        "kbm_bench_reliability", ROOT / "benchmarks" / "reliability.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reliability_md_is_up_to_date():
    reliability = _reliability()
    expected = reliability.render(reliability.load())
    current = (ROOT / "RELIABILITY.md").read_text()
    assert current == expected, (
        "RELIABILITY.md is out of date with benchmarks/results/"
        "reliability_*.json: run `make reliability`"
    )


def test_render_orders_topics_and_marks_missing(tmp_path):
    reliability = _reliability()
    for topic in ("soak", "zzz", "asan", "soak_atomic", "aaa"):
        (tmp_path / f"reliability_{topic}.json").write_text(
            json.dumps(
                {
                    "topic": topic,
                    "title": f"Title {topic}",
                    "command": f"make {topic}",
                    "date": "2026-12-04 22:00 UTC",
                    "machine": "test machine",
                    "columns": ["a", "b|c"],
                    "rows": [[1, 0.5], ["x", None]],
                    "notes": [f"note {topic}"],
                }
            )
        )
    text = reliability.render(reliability.load(tmp_path))
    assert "generated" in text.lower() and "make reliability" in text
    order = [
        text.index(t)
        for t in (
            "Title asan",
            reliability.TITLES["fuzz"],
            reliability.TITLES["large"],
            reliability.TITLES["leak"],
            "Title soak",
            "Title soak_atomic",
            reliability.TITLES["safe"],
            "Title aaa",
            "Title zzz",
        )
    ]
    assert order == sorted(order)
    assert text.count("Not run yet.") == 4
    assert "How to run: `make soak`" in text
    assert "| a | b\\|c |" in text
    assert "| 1 | 0.5 |" in text
    assert "- note zzz" in text
    assert "Run 2026-12-04 22:00 UTC on test machine." in text


def test_load_rejects_incomplete(tmp_path):
    reliability = _reliability()
    (tmp_path / "reliability_x.json").write_text('{"topic": "x"}')
    try:
        reliability.load(tmp_path)
    except ValueError as e:
        assert "reliability_x.json" in str(e)
    else:
        raise AssertionError("an incomplete result was accepted")
