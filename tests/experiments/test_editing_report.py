"""The editing tables report mean ± std over seeds, per edit type and per turn."""

from experiments.editing.report import tables


def test_tables_average_over_seeds_per_type_and_turn():
    scores = {"success": [0.2, 0.4], "preservation": [1.0, 1.0], "exact": [0.0, 0.0],
              "pixel_deviation": [0.1, float("nan")], "recolour/success": [0.5, 1.0],
              "recolour/preservation": [0.5, 0.5]}
    results = {
        "edit_types": ["recolour", "move"],
        "single_turn": {"held_out": {"in_context": scores}, "training": {"in_context": scores}},
        "multi_turn": {"in_context": {"attributes": [[0.9, 0.7], [0.7, 0.5]], "exact": [[1.0, 0.0], [0.0, 0.0]]}},
    }
    text = tables(results)
    assert "| in_context | 0.300 ± 0.100 | 1.000 ± 0.000 | 0.000 ± 0.000 | 0.100 |" in text   # NaN seed skipped
    assert "| in_context | 0.75 / 0.50 | — |" in text                                          # move: no examples
    assert "| in_context | 0.800 ± 0.100 | 0.600 ± 0.100 |" in text                             # drift by turn
    assert text.index("held-out phrasings") < text.index("training phrasings")
