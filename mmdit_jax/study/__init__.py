"""The pooled-CLIP study (docs/pooled_clip_study.md): a contrastively pretrained toy CLIP, its cached stages
(toy CLIP, attribute classifier, the two MMDiTs), scenes, figures and reports for the removal and steering
experiments."""
