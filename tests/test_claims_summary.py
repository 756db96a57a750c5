"""`make claims`' summary (scripts/claims.py): per preset its verdict, each primary part's verdict,
the seeds an undecided part would need, the seeds used and the wall time."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def claims_script():
    spec = importlib.util.spec_from_file_location("claims_script", ROOT / "scripts" / "claims.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def part(pid, verdict, primary=True, context=False):
    return {"id": pid, "name": pid, "verdict": verdict, "primary": primary, "context": context,
            "effect": {"ci": {"estimate": 0.1, "lo": 0.05, "hi": 0.2, "level": 0.95}}}


def test_the_summary_says_which_part_went_which_way_and_what_an_undecided_one_needs(tmp_path):
    mod = claims_script()
    parts = [part("postln_benefit", "supported"), part("preln_no_benefit", "contradicted"),
             part("interaction", "inconclusive"), part("jitter", "supported", primary=False),
             part("warmup_matters", "inconclusive", primary=False, context=True)]
    claim = {"claim": "postln_needs_warmup", "title": "Post-LN needs warmup", "verdict": "contradicted",
             "n_seeds": 8, "headline": parts[1], "parts": parts}
    plans = {"postln_needs_warmup": [{"id": "interaction", "seeds_at_margin": 32, "seeds_at_estimate": 14},
                                     {"id": "warmup_matters", "seeds_at_margin": 9, "seeds_at_estimate": None}]}
    sweep = tmp_path / "postln_needs_warmup"
    sweep.mkdir()
    (sweep / "verdicts.json").write_text(json.dumps({"setting": "6-layer byte LM", "claims": [claim], "plans": plans}))
    (sweep / "preset_time.json").write_text(json.dumps({"wall_s": 754.0}))
    text = mod.collect(tmp_path, ["postln_needs_warmup", "warmup_fraction"], "cpu", {}).read_text()
    [row] = [r for r in text.splitlines() if r.startswith("| Post-LN needs warmup")]
    assert "**contradicted**" in row and "| 8 | 12.6 min |" in row
    assert ("postln_benefit: supported; preln_no_benefit: contradicted; interaction: inconclusive (seeds to decide "
            "at this spread: about 32 at the margin, about 14 at this estimate); warmup_matters (context): inconclusive "
            "(seeds to decide at this spread: about 9 at the margin, over 100000 at this estimate)") in row
    assert "jitter" not in row  # supplementary parts are reported in the report, not voted
    assert "| warmup_fraction | | not run |" in text and "Total wall time of these sweeps: 12.6 min." in text
