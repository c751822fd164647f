"""The pooled-CLIP study's two experiments run end to end on the tiny config and write what they promise."""

import json
import os

import numpy as np
import pytest

from configs.pooled_study import get_config


@pytest.mark.slow
def test_clip_removal_and_steering_run_and_report(tmp_path):
    from experiments.clip_removal.experiment import run as clip_removal
    from experiments.pooled_steering.experiment import run as pooled_steering

    cfg, work = get_config("tiny"), str(tmp_path / "work")
    # What this test checks (the stages run, are cached and shared, the reports are written) does not depend on
    # training length or sample counts, and the cost is compilation: two steps and one checkpoint per MMDiT, no
    # training-time sample grid (a separately compiled sampler, tested in tests/train), and part (b) sampling as
    # many scenes as part (a), so the y = e_t + h_y model's compiled sampler and the classifier's compiled
    # forward pass at that batch are reused (Fréchet distance needs only N >= 2).
    cfg.mmdit.train.update(num_steps=2, checkpoint_every=2, sample_every=0)
    cfg.quality.update(num_samples=cfg.removal.num_scenes, num_real=cfg.removal.num_scenes)
    removal = clip_removal(cfg, work, str(tmp_path / "removal"))
    steering = pooled_steering(cfg, work, str(tmp_path / "steering"))

    for name, figures in (("removal", ("three_panel.png", "deviation_vs_tokens.png", "adherence_vs_tokens.png")),
                          ("steering", ("flip_vs_w.png", "deviation_vs_w.png", "steer_colour_t1.png",
                                        "free_target_vs_w.png", "free_size_large.png"))):
        out = tmp_path / name
        assert (out / "RESULTS.md").read_text().count("|---") >= 2
        for f in figures:
            assert (out / f).stat().st_size > 1000, f
        assert json.loads((out / "results.json").read_text())
    rows = removal["inference"]["per_template"]
    assert [r["template"] for r in rows] == list(range(9))
    assert rows[-1]["tokens"] > rows[0]["tokens"]
    assert all(np.isfinite(r["deviation"][0]) and r["deviation"][0] > 0 for r in rows)   # removing h_y changes images
    assert set(removal["training"]["rows"]) == {"with h_y, short", "with h_y, long", "without h_y, short",
                                                "without h_y, long"}
    for pair in steering["pairs"]:
        r = pair["template_1"]
        assert r["max_abs_diff_w0_vs_original"] == 0          # w = 0 reproduces the original sample exactly
        assert r["weights"]["0"]["deviation"][0] == 0.0
    (free,) = steering["unspecified"]                          # size left free by "a {c} {s}"
    assert free["max_abs_diff_w0_vs_original"] == 0
    assert free["weights"]["0"]["kept"][0] == 1.0 and free["weights"]["0"]["deviation"][0] == 0.0
    assert free["named"] == ["shape", "colour"]
    assert "size" not in free["example"][0] and "large" in free["example"][1] and "small" in free["example"][2]
    assert "Steering what the prompt leaves free" in (tmp_path / "steering" / "RESULTS.md").read_text()
    # The family comparison's per-family evaluation on the same two models: the y = e_t model is the control.
    from configs.pooled_families import get_config as families_config
    from experiments.pooled_families.experiment import evaluate_family, write
    from mmdit_jax.eval.classifier import ShapesClassifier
    from mmdit_jax.eval.deviation import make_deviation
    from mmdit_jax.pipelines.sampling import SamplingPipeline
    from mmdit_jax.study import stages

    fcfg = families_config("tiny")
    fcfg.steering.pairs = fcfg.steering.pairs[:1]
    clf = ShapesClassifier.load(os.path.join(work, "classifier.msgpack"))
    paths = stages.evaluators(cfg, work).toy_clip["paths"]
    families = {}
    for name, pooled in (("sd3", True), ("sd3_no_pooled", False)):
        gen = SamplingPipeline.from_workdir(*stages.mmdit(cfg, work, paths, pooled))
        families[name] = evaluate_family(fcfg, gen, clf, make_deviation("features", clf), str(tmp_path / name))
    write(fcfg, families, str(tmp_path / "families"), "tiny models", 1.0)
    assert families["sd3"]["pooled_path"] and not families["sd3_no_pooled"]["pooled_path"]
    assert families["sd3"]["unspecified"][0]["max_abs_diff_w0_vs_original"] == 0
    refused = families["sd3_no_pooled"]["refusals"]
    assert "pooled_steering needs the pooled path" in refused["steering"]
    assert "remove_pooled=True on a model without a pooled path" in refused["remove_pooled"]
    table = (tmp_path / "families" / "RESULTS.md").read_text()
    assert "| | sd3 | sd3_no_pooled |" in table and "| refused (no pooled path) |" in table
    assert 0.0 <= families["sd3_no_pooled"]["quality"]["short"]["all"][0] <= 1.0
    from experiments.clip_removal.base_quality import base_quality

    quality = base_quality(cfg, work, [1, 7], 2, [0])          # the pooled model's adherence by template
    assert set(quality[1]) == {"shape", "colour", "all"} and set(quality[7]) == {"shape", "colour", "size",
                                                                                "position", "all"}
    # Stages are cached and shared: the second experiment reused the first one's models.
    assert sorted(os.listdir(work)) == ["classifier.msgpack", "mmdit_no_pooled", "mmdit_pooled", "toy_clip"]


@pytest.mark.parametrize("entry, message", [
    (("size", "large", "small", 2, 4), "names the size"),             # template 2 says "a {z} {c} {s}"
    (("size", "large", "small", 1, 3), "does not name the size"),
    (("size", "huge", "small", 1, 2), "valid"),
    (("hue", "red", "blue", 1, 2), "attribute 'hue'"),
    (("size", "large", "small", 1), "entries are"),
    (("colour", "blue", "red", 10, 4), "names the colour"),          # template 10 leaves the shape free, not colour
    (("shape", "square", "circle", 10, 10), "does not name the shape"),
])
def test_unspecified_steering_settings_are_checked(entry, message):
    from experiments.pooled_steering.unspecified import check_setting

    assert check_setting(("position", "right", "left", 2, 4)) == ("position", "right", "left", 2, 4)
    assert check_setting(("colour", "blue", "red", 9, 4)) == ("colour", "blue", "red", 9, 4)   # partial captions
    with pytest.raises(ValueError, match=message):
        check_setting(entry)


def test_family_comparison_configs_are_checked_before_any_stage_runs():
    from configs.pooled_families import get_config as families_config
    from experiments.pooled_families.experiment import check_config

    for arg in ("", "tiny", "study"):
        check_config(families_config(arg))
    cfg = families_config("study")
    cfg.table_weight = 3.0
    with pytest.raises(ValueError, match=r"table_weight=3.0 is not one of steering.weights=\(0.0, 0.5"):
        check_config(cfg)
    cfg = families_config("study")
    cfg.steering.unspecified += (("colour", "blue", "red", 1, 4),)        # template 1 names the colour
    with pytest.raises(ValueError, match="names the colour"):
        check_config(cfg)
