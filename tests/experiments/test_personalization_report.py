"""The personalization tables average each variant over seeds, then over subjects."""

from experiments.personalization.report import COLUMNS, tables


def scores(value: float) -> dict:
    return {key: value for key, _ in COLUMNS}


def test_tables_average_over_seeds_and_subjects():
    results = {"runs": {"a/lora/s0": scores(0.2), "a/lora/s1": scores(0.4), "b/lora/s0": scores(0.9),
                        "a/base/s0": scores(0.1)}}
    text = tables(results)
    assert "| a | lora | 0.30 (0.20, 0.40) |" in text
    assert "| b | lora | 0.90 |" in text
    all_rows = text.split("Mean over subjects and seeds:")[1]
    assert "| all | lora | 0.50 |" in all_rows          # (0.2 + 0.4 + 0.9) / 3
    assert all_rows.index("| all | base |") < all_rows.index("| all | lora |")
