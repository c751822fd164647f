"""The video tables report mean ± std over seeds, the real clips as the ceiling, and the long / image-to-video rows."""

from experiments.video.report import table


def test_tables_average_over_seeds_and_show_the_real_clips_first():
    row = {"motion_direction": [0.5, 0.7], "motion_speed": [1.0, 1.0], "motion_both": [0.5, float("nan")],
           "frechet": [10.0, 20.0]}
    results = {"real": {"motion_direction": 1.0, "subject_consistency": 0.9},
               "methods": {"joint": row, "next_chunk_16": row}}
    text = table(results, ("joint", "next_chunk", "per_frame"), True)
    lines = text.splitlines()
    assert lines[2].startswith("| real test clips | 1.000 |") and "| 0.900 |" in lines[2]
    assert lines[3] == ("| joint (whole clip) | 0.600 ± 0.100 | 1.000 ± 0.000 | 0.500 | — | — | — | — | — | "
                        "15.000 ± 5.000 |")                     # the NaN seed is skipped; missing metrics are —
    assert len(lines) == 4                                      # methods without results are left out
    long = table(results, ("next_chunk_16",), False)
    assert "real" not in long and "frame-by-frame, 16 frames" in long
