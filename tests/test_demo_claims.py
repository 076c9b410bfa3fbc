"""The demo's claims hold exactly when its numbers support them, and say which numbers."""

from __future__ import annotations

import copy
from typing import Any

from curate.toyworld.claims import demo_claims


def _row(name: str, precision: float, top1: list[float]) -> dict[str, Any]:
    return {"name": name, "precision": precision, "top1": top1,
            "top1_mean": sum(top1) / len(top1)}


def _results() -> dict[str, Any]:
    """Numbers where every claim holds (the shape of the full demo's results)."""
    return {
        "filters": {"dfn": {"metrics": {"zero_shot_top1": 0.71}},
                    "web_clip": {"metrics": {"zero_shot_top1": 0.16}}},
        "subsets": [
            _row("no_filter", 0.51, [0.066, 0.065, 0.073]),
            _row("random", 0.51, [0.075, 0.069, 0.075]),
            _row("basic", 0.64, [0.075, 0.066, 0.085]),
            _row("web_clip_30", 0.61, [0.110, 0.122, 0.106]),
            _row("dfn_30", 0.80, [0.155, 0.152, 0.215]),
            _row("dfn_15", 0.82, [0.117, 0.107, 0.139]),
        ],
        "comparison": {"means": {
            "no_filter": {"24000": 0.05, "32000": 0.065, "64000": 0.068},
            "web_clip_30": {"24000": 0.06, "32000": 0.074, "64000": 0.113},
            "dfn_30": {"24000": 0.07, "32000": 0.097, "64000": 0.174},
        }},
    }


def _holds(results: dict[str, Any]) -> dict[str, bool]:
    return {c["claim"]: c["holds"] for c in demo_claims(results)}


def test_every_claim_holds_on_numbers_that_support_it() -> None:
    claims = demo_claims(_results())
    assert [c["claim"] for c in claims] == [
        "the DFN reaches zero-shot top-1 >= 0.5",
        "dfn_30 is cleaner than random and no_filter",
        "dfn_30's mean top-1 is at least 2x no_filter's",
        "every dfn_30 seed beats every baseline seed",
        "dfn_30's curve is above the others at every budget",
    ]
    assert all(c["holds"] for c in claims)
    details = {c["claim"]: c["detail"] for c in claims}
    assert details["dfn_30's mean top-1 is at least 2x no_filter's"] == "0.1740 / 0.0680 = 2.56x"
    assert "0.1520" in details["every dfn_30 seed beats every baseline seed"]
    assert "0.1220 (web_clip_30)" in details["every dfn_30 seed beats every baseline seed"]


def test_each_claim_fails_when_its_numbers_do_not_support_it() -> None:
    weak_filter = _results()
    weak_filter["filters"]["dfn"]["metrics"]["zero_shot_top1"] = 0.49
    assert _holds(weak_filter)["the DFN reaches zero-shot top-1 >= 0.5"] is False

    dirty = _results()
    dirty["subsets"][1]["precision"] = 0.81  # random cleaner than dfn_30
    assert _holds(dirty)["dfn_30 is cleaner than random and no_filter"] is False

    close = _results()
    close["subsets"][0] = _row("no_filter", 0.51, [0.09, 0.09, 0.09])  # 0.174 / 0.09 < 2
    assert _holds(close)["dfn_30's mean top-1 is at least 2x no_filter's"] is False

    overlap = _results()
    overlap["subsets"][2] = _row("basic", 0.64, [0.075, 0.066, 0.153])  # one seed above 0.152
    result = _holds(overlap)
    assert result["every dfn_30 seed beats every baseline seed"] is False
    assert result["dfn_30's mean top-1 is at least 2x no_filter's"] is True

    crossed = copy.deepcopy(_results())
    crossed["comparison"]["means"]["web_clip_30"]["24000"] = 0.07  # a tie is not above
    claim = next(c for c in demo_claims(crossed) if "curve" in c["claim"])
    assert claim["holds"] is False
    assert claim["detail"].endswith("not above at 24,000 (0.0700 vs web_clip_30 0.0700)")


def test_claims_without_their_numbers_are_left_out() -> None:
    results = _results()
    del results["comparison"]
    results["filters"] = {}
    names = [c["claim"] for c in demo_claims(results)]
    assert not any("curve" in n or "DFN reaches" in n for n in names)
    assert demo_claims({"subsets": [], "filters": {}}) == []
    alone = {"comparison": {"means": {"dfn_30": {"24000": 0.07}}}}  # nothing to be above
    assert [c["holds"] for c in demo_claims(alone)] == [True]
